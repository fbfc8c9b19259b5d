"""Resume: a run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted
run; ckpt_path=last and unsafe or mismatched checkpoints fail with clear errors."""

import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import (
    REFERENCE_EPOCHS,
    assert_same_weights,
    assert_weights_differ,
    compose_train,
    subprocess_env,
    tiny_overrides,
)

from foodnet.data.sampling import EpochSampler
from foodnet.errors import CheckpointError
from foodnet.train import train
from foodnet.training.resume import RNGState, epochs_trained

EPOCHS = REFERENCE_EPOCHS


def run_overrides(data, **extra):
    # Augmentation on (the default). Two loader workers, where the reference run has none: order
    # and augmentation must not depend on them, on a resume or otherwise.
    return tiny_overrides(data, **{"trainer.max_epochs": EPOCHS, "data.num_workers": 2, **extra})


@pytest.mark.slow
def test_sigkill_after_an_epoch_then_resume_gives_the_uninterrupted_weights(
        tiny_data, tmp_path, reference_run, capsys):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "foodnet.train", *run_overrides(tiny_data),
               f"hydra.run.dir={run_dir}"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # last.ckpt of epoch 1 exists: kill mid-run
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert not (run_dir / "metrics.json").exists()
    assert epochs_trained(torch.load(last, weights_only=True)) < EPOCHS

    interrupted = shutil.copy(last, tmp_path / "interrupted.ckpt")
    # Resumed the way the CLI does it: same run folder, ckpt_path=last (in-process: faster).
    metrics = train(compose_train(run_overrides(tiny_data, ckpt_path="last"), run_dir=run_dir))
    assert f"resuming from {last}" in capsys.readouterr().out
    assert metrics["epochs"] == EPOCHS
    assert metrics["val/acc_best"] == reference_run[0]["val/acc_best"]
    assert_same_weights(last, reference_run[1])
    assert_weights_differ(interrupted, last)  # the control: the resumed epochs moved them


def test_ckpt_path_last_without_a_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    cfg = compose_train(run_overrides(tiny_data, ckpt_path="last"), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/checkpoints/last.ckpt: "
                                              "ckpt_path=last found no checkpoint.*hydra.run.dir="):
        train(cfg)


def test_resume_refuses_a_pickled_payload_which_never_runs(tiny_data, tmp_path, reference_run):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    checkpoint = torch.load(reference_run[1], weights_only=True)
    checkpoint["hyper_parameters"]["evil"] = Payload()
    (tmp_path / "checkpoints").mkdir()
    evil = tmp_path / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, evil)
    cfg = compose_train(run_overrides(tiny_data, ckpt_path="last"), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match=rf"{evil}: refused: the file holds pickled"):
        train(cfg)
    assert not marker.exists()


def test_resume_from_a_truncated_checkpoint_names_the_file(tiny_data, tmp_path, reference_run):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(reference_run[1].read_bytes()[:5000])
    cfg = compose_train(run_overrides(tiny_data, ckpt_path=truncated), run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=rf"{truncated}: not a readable checkpoint"):
        train(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ({"trainer.max_epochs": 2}, rf"trainer.max_epochs=2 is below the {EPOCHS} epochs"),
    # 30: more than the labels (up to 19) need, so the data allows it; the checkpoint does not.
    ({"model.num_classes": 30, "data.classes": "null"},
     "holds a resnet18 with 20 classes but the config asks for .*num_classes=30"),
])
def test_resume_settings_that_contradict_the_checkpoint_fail_before_training(
        tiny_data, tmp_path, reference_run, override, message):
    cfg = compose_train(run_overrides(tiny_data, ckpt_path=reference_run[1], **override),
                        run_dir=tmp_path)
    with pytest.raises((ValueError, CheckpointError), match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    data = list(range(11))
    sampler = EpochSampler(data, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(EpochSampler(data, seed=3)) == first
    assert sorted(index for index, _ in first) == data
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(data, seed=4)) != first
    # Two ranks: disjoint halves padded to equal length, the same pairs as one process sees.
    ranks = [list(EpochSampler(data, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert set(ranks[0] + ranks[1]) == set(first)
    # Resuming mid-epoch skips what this rank already trained on.
    resumed = EpochSampler(data, seed=3, position=lambda: (0, 4))
    assert list(resumed) == first[4:]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    callback = RNGState()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch.save(callback.state_dict(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    callback.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


def test_a_resumed_run_keeps_the_precision_and_layout_it_started_with(tiny_data, tmp_path,
                                                                      caplog):
    import logging

    run_dir = tmp_path / "run"
    started = {"trainer.precision": "bf16-mixed", "channels_last": "false"}
    train(compose_train(run_overrides(tiny_data, **started, **{"trainer.max_epochs": 1}),
                        run_dir=run_dir))
    # Resumed with auto (train.yaml's default; tiny runs pin them): the checkpoint's settings,
    # not what auto measures.
    auto = {"trainer.precision": "auto", "channels_last": "auto", "trainer.max_epochs": 2}
    with caplog.at_level(logging.INFO):
        metrics = train(compose_train(run_overrides(tiny_data, ckpt_path="last", **auto),
                                      run_dir=run_dir))
    assert metrics["epochs"] == 2
    assert "precision auto: bf16-mixed, kept from the checkpoint being resumed" in caplog.text
    assert "channels_last auto: false, kept from the checkpoint being resumed" in caplog.text
    speed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["speed"]
    assert speed == {"precision": "bf16-mixed", "channels_last": False}

"""SIGTERM and SIGUSR1: the run finishes its batch, writes last.ckpt, exits 128 + signal, and the
resumed run ends exactly like an uninterrupted one."""

import os
import shutil
import signal
import subprocess
import sys

import lightning as L
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
from omegaconf import open_dict

from foodnet.train import train
from foodnet.training.callbacks.safety import Preempted
from foodnet.training.resume import epochs_trained


def run_overrides(data, **extra):
    return tiny_overrides(data, **{"trainer.max_epochs": REFERENCE_EPOCHS, **extra})


def resume_in_process(data, run_dir):
    return train(compose_train(run_overrides(data, ckpt_path="last"), run_dir=run_dir))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_exits_143_and_the_resume_matches(
        tiny_data, tmp_path, reference_run):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "foodnet.train", *run_overrides(tiny_data),
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    for line in process.stdout:  # a real signal from outside, while epoch 2 trains
        if line.startswith(f"epoch 1/{REFERENCE_EPOCHS}"):
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"SIGTERM: saved {last}" in stderr and "ckpt_path=last" in stderr
    assert "Traceback" not in stderr
    assert not (run_dir / "metrics.json").exists()
    checkpoint = torch.load(last, weights_only=True)
    # Sent once epoch 1 reported: saved at epoch 1's end (if the signal beat the callback's
    # epoch-end check) or after a later batch, never mid-way through a batch.
    assert checkpoint["global_step"] >= 5
    assert epochs_trained(checkpoint) < REFERENCE_EPOCHS

    interrupted = shutil.copy(last, tmp_path / "interrupted.ckpt")
    metrics = resume_in_process(tiny_data, run_dir)
    assert metrics["epochs"] == REFERENCE_EPOCHS
    assert_same_weights(last, reference_run[1])
    assert_weights_differ(interrupted, last)  # the control: the resumed epochs moved them


class SignalAt(L.Callback):
    """Sends a real signal to this process after a given global step (deterministic timing)."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigusr1_mid_epoch_checkpoint_resumes_exactly(tiny_data, tmp_path, reference_run):
    cfg = compose_train(run_overrides(tiny_data), run_dir=tmp_path)
    # 5 batches per epoch: the signal comes after batch 2 of epoch 2; the batch in flight ends.
    with open_dict(cfg):
        cfg.callbacks.signal_at = {"_target_": f"{__name__}.SignalAt",
                                   "signum": int(signal.SIGUSR1), "step": 7}
    with pytest.raises(Preempted) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signal.SIGUSR1
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 8)
    interrupted = shutil.copy(last, tmp_path / "interrupted.ckpt")
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored after fit

    resume_in_process(tiny_data, tmp_path)
    assert_same_weights(last, reference_run[1])
    assert_weights_differ(interrupted, last)  # the control: the resumed epochs moved them

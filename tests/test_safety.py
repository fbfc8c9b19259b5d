"""Checkpoints are written atomically; a NaN/inf loss stops the run at its step and non-finite
weights never reach a checkpoint."""

import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from helpers import compose_train, tiny_overrides
from omegaconf import open_dict

from foodnet.errors import NonFiniteLossError
from foodnet.train import build, train
from foodnet.training.checkpoint_io import AtomicCheckpointIO


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def dies_midway(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


KILLED_MID_SAVE = """
import os, signal, sys, torch
from foodnet.training.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"w": torch.ones(3)}, path)
def killed(obj, file):
    file.write(b"PK half"); file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = killed
io.save_checkpoint({"w": torch.zeros(3)}, path)
"""


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(path)], timeout=300)
    assert result.returncode == -9
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    stale = list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert len(stale) == 1  # the killed save's partial file, never under the real name
    AtomicCheckpointIO().save_checkpoint({"w": torch.full((3,), 2.0)}, path)
    assert not stale[0].exists()  # cleaned by the next save
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.full((3,), 2.0))


def test_the_trainer_writes_checkpoints_through_the_atomic_io(tiny_data, tmp_path):
    _, _, trainer = build(compose_train(tiny_overrides(tiny_data), run_dir=tmp_path))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_an_exploding_loss_stops_at_its_step_before_any_checkpoint(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"finetune": "full",
                                             "model.optimizer.lr": 1e30})
    with pytest.raises(NonFiniteLossError,
                       match=r"train/loss is (nan|inf) at epoch 1, batch 1 \(global step 1\): "
                             "stopped before this update.*Lower model.optimizer.lr"):
        train(compose_train(overrides, run_dir=tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))


class PoisonAt(L.Callback):
    """Turns the head's weights to NaN after a given global step, as a diverging update would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            pl_module.net.head.weight.data.fill_(math.nan)


def test_nan_weights_after_an_epochs_last_update_are_never_checkpointed(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data, **{"trainer.max_epochs": 3}), run_dir=tmp_path)
    # 5 batches per epoch: step 10 is epoch 2's last update, followed by validation, where
    # ModelCheckpoint would save (val/acc stays finite with NaN weights, so it would not object).
    with open_dict(cfg):
        cfg.callbacks.poison = {"_target_": f"{__name__}.PoisonAt", "step": 10}
    expected = r"non-finite weights \(net.head.weight\) at the validation of epoch 2"
    with pytest.raises(NonFiniteLossError, match=expected):
        train(cfg)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["global_step"] == 5, path  # all from epoch 1
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()
                   if t.is_floating_point())


"""Resume a run: find and vet its checkpoint, and carry the random generators across the restart."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from foodnet.errors import CheckpointError, ConfigError
from foodnet.models.checkpoint import read_checkpoint
from foodnet.training.module import SPEED_KEY


def last_checkpoint_path(checkpoint: ModelCheckpoint) -> Path:
    """<checkpoint dir>/last.ckpt: where every epoch and every signal leaves the latest state."""
    name = checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION
    return Path(checkpoint.dirpath) / name


def epochs_trained(checkpoint: dict) -> int:
    """Epochs whose training finished before the checkpoint was saved."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):  # not written by Trainer.fit: fall back on its epoch counter
        return int(checkpoint.get("epoch", 0))


@dataclass(frozen=True)
class ResumePoint:
    """A vetted checkpoint to continue from: what the run needs of it before Lightning loads it."""

    path: Path
    epochs_done: int
    speed: dict  # the precision and layout it was trained in (kept by the resumed run)


def find_resume(value: str | Path | None, last_dir: str | Path | None, *, arch: str,
                num_classes: int, max_epochs: int | None) -> ResumePoint | None:
    """`ckpt_path`: None, `last` (last.ckpt in `last_dir`) or a file; read once, safely
    (weights_only), and checked against this config before anything is built."""
    if value is None:
        return None
    if str(value) != "last":
        path = Path(value)
    elif last_dir is None:
        raise ConfigError("ckpt_path=last needs the last_checkpoint callback (callbacks=default)")
    else:
        path = Path(last_dir) / "last.ckpt"
        if not path.is_file():
            raise CheckpointError(
                f"{path}: ckpt_path=last found no checkpoint. Pass the folder of the run to "
                "resume, hydra.run.dir=outputs/train/<date_time>, or a file: "
                "ckpt_path=/path/to/file.ckpt")
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    if (hparams["arch"], int(hparams["num_classes"])) != (arch, num_classes):
        raise CheckpointError(
            f"{path}: holds a {hparams['arch']} with {hparams['num_classes']} classes but the "
            f"config asks for model.arch={arch} model.num_classes={num_classes}; resume with "
            "the run's own settings")
    if "loops" not in checkpoint or "optimizer_states" not in checkpoint:
        raise CheckpointError(f"{path}: holds weights only, no training state to resume")
    done = epochs_trained(checkpoint)
    if max_epochs is not None and 0 <= max_epochs < done:
        raise ConfigError(f"trainer.max_epochs={max_epochs} is below the {done} epochs that "
                          f"{path} has already trained; set trainer.max_epochs={done} or more")
    return ResumePoint(path, done, dict(checkpoint.get(SPEED_KEY) or {}))


class RNGState(L.Callback):
    """Save the global random generators in each checkpoint and restore them on resume.

    Lightning restores the model, optimizer and loops but not these, which model-side randomness
    (dropout, stochastic depth) draws from. Plain values only, so that weights_only loads work.
    """

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() \
                and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))

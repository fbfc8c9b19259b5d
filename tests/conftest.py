"""Shared fixtures: tiny real datasets on disk, the composed Hydra config, offline guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import REFERENCE_EPOCHS, compose_train, seed_preprocessing, tiny_overrides

from foodnet.data.demo import make_demo_dataset
from foodnet.logs import console_logging


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path_factory, monkeypatch):
    """Point the torch hub cache at an empty folder so no test can see or fill the real one."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _console_logging():
    """foodnet's lines on the console as the entry points set them up (train under Hydra: info on
    stdout, errors on stderr), for tests that call train() or evaluate() in-process."""
    console_logging()


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """The user's cache folder (speed measurements, foodnet.speed) in a folder of the session,
    set before any other fixture runs: tests never read or fill the real one, and every run of
    the session (session fixtures included) decides the same from what the first one measured."""
    home = tmp_path_factory.mktemp("cache_home")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """The demo dataset at toy size: 20 classes, 32px images, 4/2/2 per class."""
    out = tmp_path_factory.mktemp("tiny_data")
    return make_demo_dataset(out, per_class={"train": 4, "val": 2, "test": 2}, size=32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:
    """A real checkpoint: resnet18, random init, frozen backbone, head fitted 4 epochs at 32px:
    confident, varied predictions (some right, most wrong), in a few seconds of CPU."""
    from functools import partial

    import lightning as L
    import torch

    from foodnet.data import FoodDataModule
    from foodnet.data.augment import NoAugment
    from foodnet.models.transfer import create_model
    from foodnet.training.module import FoodClassifier

    L.seed_everything(0)
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    datamodule = FoodDataModule(tiny_data["train"], tiny_data["val"], classes=tiny_data["classes"],
                                preprocessing=seed_preprocessing(32), augment=NoAugment(),
                                batch_size=16, num_workers=0)
    net = create_model("resnet18", num_classes=20, weights=None, freeze=True)
    module = FoodClassifier(net, optimizer=partial(torch.optim.Adam, lr=0.05),
                            class_names=datamodule.class_names,
                            preprocessing=datamodule.preprocessing)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(out / "tiny.ckpt")
    return out / "tiny.ckpt"


@pytest.fixture(scope="session")
def reference_run(tiny_data, tmp_path_factory) -> tuple[dict, Path]:
    """An uninterrupted 3-epoch run (in-process, augmentation on): its metrics and last.ckpt.
    Resumed, preempted and repeated runs with the same seed must end exactly like it."""
    from foodnet.train import train

    run_dir = tmp_path_factory.mktemp("reference_run")
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS})
    metrics = train(compose_train(overrides, run_dir=run_dir))
    return metrics, run_dir / "checkpoints" / "last.ckpt"

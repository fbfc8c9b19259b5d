"""Shared fixtures: tiny real datasets on disk, the composed Hydra config, offline guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foodnet.data.demo import make_demo_dataset
from foodnet.logs import console_logging

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "conf"


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


def compose_train(overrides: list[str] | None = None, run_dir: Path | None = None):
    """The real train config, composed as Hydra would, with `paths.output_dir` set to run_dir."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides or [], return_hydra_config=False)
    if run_dir is not None:
        cfg.paths.output_dir = str(run_dir)
    return cfg


def seed_preprocessing(size: int = 32):
    """The seed's preprocessing at `size`: torchvision's ImageNet weights' mean, std and
    interpolation, a square resize without crop (what conf/model/resnet152.yaml sets)."""
    from torchvision import models

    from foodnet.models.sources.torchvision import weights_preprocessing

    return weights_preprocessing(models.ResNet18_Weights.DEFAULT).override(
        image_size=size, crop_mode="squash")


def tiny_overrides(data: dict[str, Path], **extra) -> list[str]:
    """Overrides that shrink a run to seconds on CPU: resnet18, random init, 32px, 1 epoch."""
    overrides = {
        "data.train_manifest": data["train"], "data.val_manifest": data["val"],
        "data.classes": data["classes"], "model.preprocessing.image_size": 32,
        "data.batch_size": 16,
        "data.num_workers": 0, "model.arch": "resnet18", "model.weights": "null",
        "trainer.max_epochs": 1, "trainer.accelerator": "cpu",
        "trainer.enable_progress_bar": "false", "trainer.enable_model_summary": "false",
        # Pinned, so that a tiny run computes the same on every CPU (`auto` would pick bf16 on
        # one and fp32 on another); the speed tests exercise `auto` on their own.
        "trainer.precision": "32-true", "channels_last": "false", "compile": "false",
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # Subprocesses run from tmp dirs: import this checkout's foodnet, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HYDRA_FULL_ERROR", "0")
    return env



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


def checkpoint_probs(checkpoint: Path, images: list[Path], image_size: int | None = None):
    """Class probabilities computed by hand: load_model, the eval preset, softmax."""
    import torch

    from foodnet.data.images import load_rgb
    from foodnet.models.checkpoint import load_model

    net, info = load_model(checkpoint)
    transform = info.preprocessing.override(image_size=image_size).eval_transform()
    with torch.no_grad():
        return net(torch.stack([transform(load_rgb(p)) for p in images])).softmax(dim=1)

REFERENCE_EPOCHS = 3


@pytest.fixture(scope="session")
def reference_run(tiny_data, tmp_path_factory) -> tuple[dict, Path]:
    """An uninterrupted 3-epoch run (in-process, augmentation on): its metrics and last.ckpt.
    Resumed, preempted and repeated runs with the same seed must end exactly like it."""
    from foodnet.train import train

    run_dir = tmp_path_factory.mktemp("reference_run")
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS})
    metrics = train(compose_train(overrides, run_dir=run_dir))
    return metrics, run_dir / "checkpoints" / "last.ckpt"


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    """Every tensor of the two checkpoints' state_dicts is bitwise equal."""
    import torch

    a = torch.load(path_a, weights_only=True)["state_dict"]
    b = torch.load(path_b, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"weights differ: {different[:5]}"

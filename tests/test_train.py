"""End-to-end: the real config composed and run, in-process and as `python -m foodnet.train`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, checkpoint_scores, compose_train, subprocess_env, tiny_overrides
from torch.utils.data import SequentialSampler

from foodnet.data.augment import SeedAugment
from foodnet.data.sampling import EpochSampler
from foodnet.train import build


def test_default_config_is_the_seed_recipe():
    cfg = compose_train()
    assert cfg.model.arch == "resnet152"
    assert cfg.model.num_classes is None  # from the data (with_data)
    assert cfg.model.weights == "DEFAULT"
    assert cfg.finetune._target_ == "foodnet.training.finetune.Freeze"  # alone decides what trains
    assert cfg.model.net._target_ == "foodnet.models.transfer.create_model"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"
    assert cfg.model.optimizer.lr == 1e-3
    assert cfg.trainer.max_epochs == 20
    assert cfg.trainer.accelerator == "auto"
    assert (cfg.data.train_manifest, cfg.data.val_manifest) == ("data/train.txt", "data/test.txt")
    assert cfg.data.batch_size == 64
    assert cfg.augment._target_ == "foodnet.data.augment.SeedAugment"  # the seed's transforms
    # The seed's transforms: a 256px square resize, no crop (ImageNet mean/std from the weights).
    assert cfg.model.preprocessing.image_size == 256
    assert cfg.model.preprocessing.crop_mode == "squash"


def test_build_wires_data_model_and_trainer(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data, **{"model.optimizer.lr": 0.01}), run_dir=tmp_path)
    datamodule, module, trainer = build(cfg)
    assert datamodule.class_names[0] == "red-disk" and module.class_names == datamodule.class_names
    # The policy the config chose trains the run and is recorded next to the preprocessing.
    assert datamodule.augment == SeedAugment()
    assert module.hparams["augment"] == SeedAugment().to_dict()
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.01
    datamodule.setup("fit")
    assert isinstance(datamodule.train_dataloader().sampler, EpochSampler)  # shuffles per epoch
    assert isinstance(datamodule.val_dataloader().sampler, SequentialSampler)
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and not y.dtype.is_floating_point


@pytest.mark.slow
def test_train_subprocess_writes_metrics_checkpoints_and_tensorboard(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": 2,
                                             "data.test_manifest": tiny_data["test"]})
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run dir: {run_dir}" in result.stdout
    assert "epoch 2/2" in result.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["run_dir"] == str(run_dir)
    best = Path(metrics["best_checkpoint"])
    assert best.is_file() and best.parent == run_dir / "checkpoints"
    # The run's numbers are the best checkpoint's, counted again by hand.
    assert metrics["val/acc_best"] == pytest.approx(
        checkpoint_scores(best, tiny_data["val"])["acc"], abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(
        checkpoint_scores(best, tiny_data["test"])["acc"], abs=1e-6)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    hparams = torch.load(run_dir / "checkpoints" / "last.ckpt",
                         weights_only=True)["hyper_parameters"]
    assert hparams["augment"] == SeedAugment().to_dict()
    assert hparams["preprocessing"]["image_size"] == 32
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc"} <= tags
    assert len(accumulator.Scalars("val/acc")) == 2


def test_missing_manifest_exits_with_a_clear_message(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"data.train_manifest": tmp_path / "nope.txt"})
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"error: {tmp_path / 'nope.txt'}: manifest not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("entry", ["foodnet.train"])
def test_help_runs(entry):
    result = subprocess.run([sys.executable, "-m", entry, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "model" in result.stdout

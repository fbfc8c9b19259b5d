"""The frozen-backbone fast path is the same model: features, cache keys, cached training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    checkpoint_scores,
    compose_train,
    seed_preprocessing,
    subprocess_env,
    tiny_overrides,
)
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from foodnet.data import FoodDataModule
from foodnet.data.augment import NoAugment, SeedAugment
from foodnet.data.feature_dataset import FeatureDataset, FeatureSampler, FeatureSet
from foodnet.models.checkpoint import load_model
from foodnet.models.transfer import create_model
from foodnet.speed.plan import SpeedPlan
from foodnet.train import build, check_cache_features, train, use_backbone_features
from foodnet.training.features import FeatureCache, attach_features, extract_features
from foodnet.training.finetune import Freeze
from foodnet.training.module import FoodClassifier

BF16 = {"atol": 0.05, "rtol": 0.05}  # bf16 keeps 8 bits of mantissa


@pytest.fixture(autouse=True)
def _one_thread():
    """A 32px ResNet18 gains nothing from intra-op threads; on a busy machine their barriers
    cost more than the convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datamodule(data, **kwargs) -> FoodDataModule:
    args = {"train_manifest": data["train"], "val_manifest": data["val"],
            "test_manifest": data["test"], "classes": data["classes"],
            "preprocessing": seed_preprocessing(32),
            "batch_size": 16, "num_workers": 0, **kwargs}
    return FoodDataModule(**args)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_head_on_extracted_features_gives_the_images_logits(tiny_data, bf16):
    torch.manual_seed(0)
    module = FoodClassifier(create_model("resnet18", num_classes=20, weights=None),
                            speed=SpeedPlan(channels_last=True)).eval()
    loader = _datamodule(tiny_data).image_loader("val", augmented=False)
    images, _ = next(iter(loader))
    context = _bf16 if bf16 else (lambda: torch.autocast("cpu", enabled=False))
    features, labels = extract_features(module.net.backbone, loader, forward_context=context,
                                        forward=module.frozen_backbone)
    assert features.shape == (40, 512) and labels.tolist() == [s.label for s in
                                                               loader.dataset.samples]
    assert features.dtype == (torch.bfloat16 if bf16 else torch.float32)
    with torch.no_grad(), context():
        from_images = module(images).float()
        from_features = module(features[: len(images)]).float()
    assert from_images.shape == (16, 20)
    if bf16:
        torch.testing.assert_close(from_features, from_images, **BF16)
    else:  # features came from batches of another size: float32 sums in another order
        torch.testing.assert_close(from_features, from_images, atol=1e-5, rtol=1e-4)


def test_features_with_a_trainable_backbone_are_refused():
    module = FoodClassifier(create_model("resnet18", num_classes=3, weights=None, freeze=False))
    with pytest.raises(RuntimeError, match="only valid for a frozen backbone"):
        module(torch.randn(2, 512))


def test_sampler_cycles_views_by_epoch_in_a_seeded_order():
    features = torch.arange(3 * 5, dtype=torch.float32).reshape(3, 5, 1)
    dataset = FeatureDataset(FeatureSet(features, torch.arange(5)), seed=7)
    sampler = dataset.sampler(shuffle=True)
    seen = {}
    for epoch in range(4):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        view = epoch % 3
        assert sorted(indices) == list(range(view * 5, view * 5 + 5))
        x, y = dataset[indices[0]]
        assert x.item() == indices[0] and y.item() == indices[0] - view * 5
        seen[epoch] = indices
    assert seen[3] != seen[0], "view 0 again, in a new order"
    again = FeatureSampler(5, views=3, shuffle=True, seed=7)
    again.set_epoch(2)
    assert list(again) == seen[2], "the order must depend only on (seed, epoch)"
    assert list(dataset.sampler(shuffle=False)) == [0, 1, 2, 3, 4]


def test_cache_is_reused_until_manifest_transform_or_weights_change(tiny_data, tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=20, weights=None)
    cache = FeatureCache(tmp_path / "cache")

    def attach(datamodule=None, model=net):
        datamodule = datamodule or _datamodule(tiny_data)
        (report,) = attach_features(datamodule, model, ["val"], cache=cache)
        return report, datamodule.datasets["val"].feature_set

    first, features = attach()
    assert not first.cache_hit and first.path.is_file() and first.images == 40
    again, cached = attach()
    assert again.cache_hit and again.path == first.path
    assert torch.equal(cached.features, features.features)
    assert torch.equal(cached.labels, features.labels)

    # Manifest: one line fewer.
    lines = Path(tiny_data["val"]).read_text().splitlines()
    shorter = tmp_path / "val.txt"
    shorter.write_text("\n".join(str(Path(tiny_data["val"]).parent / line)
                                 for line in lines[:-1]) + "\n")
    report, _ = attach(_datamodule(tiny_data, val_manifest=shorter))
    assert not report.cache_hit and report.path != first.path and report.images == 39

    # Transform: same size, another interpolation.
    nearest = seed_preprocessing(32).override(interpolation="nearest")
    report, _ = attach(_datamodule(tiny_data, preprocessing=nearest))
    assert not report.cache_hit and report.path not in (first.path,)

    # Weights: one BatchNorm statistic moves.
    with torch.no_grad():
        net.backbone.bn1.running_mean[0] += 1.0
    report, moved = attach()
    assert not report.cache_hit and report.path != first.path
    assert not torch.equal(moved.features, features.features)

    assert attach()[0].cache_hit, "unchanged inputs hit the cache again"
    assert len(list((tmp_path / "cache").glob("val-*.pt"))) == 4


def test_augmented_views_are_distinct_and_reproducible(tiny_data, tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=20, weights=None)

    def train_views(seed):
        datamodule = _datamodule(tiny_data, augment=SeedAugment())
        (report,) = attach_features(datamodule, net, ["train"], train_views=2, seed=seed,
                                    cache=FeatureCache(tmp_path))
        return report, datamodule.datasets["train"].feature_set

    report, views = train_views(seed=1)
    assert views.features.shape == (2, 80, 512) and not report.cache_hit
    assert not torch.allclose(views.features[0], views.features[1])
    (tmp_path / report.path.name).unlink()  # extract again: the same seed gives the same views
    assert torch.equal(train_views(seed=1)[1].features, views.features)
    assert not train_views(seed=2)[0].cache_hit

    with pytest.raises(ValueError, match="cache_views=2 with augment=none"):
        attach_features(_datamodule(tiny_data, augment=NoAugment()), net, ["train"],
                        train_views=2)


def test_cache_features_refuses_a_trainable_backbone(tiny_data):
    cfg = compose_train(tiny_overrides(tiny_data, **{"cache_features": "true",
                                                     "finetune": "full"}))
    with pytest.raises(ValueError, match="cache_features=true needs finetune=freeze, but "
                                         "finetune=full"):
        check_cache_features(cfg, instantiate(cfg.finetune), NoAugment())
    check_cache_features(cfg, Freeze(), NoAugment())  # the control: a backbone frozen throughout
    net = create_model("resnet18", num_classes=20, weights=None, freeze=False)
    with pytest.raises(ValueError, match="frozen backbone"):
        attach_features(_datamodule(tiny_data), net, ["val"])


def test_cache_features_refuses_batch_mixing(tiny_data):
    cfg = compose_train(tiny_overrides(tiny_data, **{"cache_features": "true",
                                                     "augment.mix": "mixup"}))
    with pytest.raises(ValueError, match="augment.mix=mixup mixes images in each batch, but "
                                         "cache_features=true"):
        check_cache_features(cfg, Freeze(), instantiate(cfg.augment))
    # The control: the same policy without cache_features is accepted.
    cfg.cache_features = False
    check_cache_features(cfg, Freeze(), instantiate(cfg.augment))


def _run(tiny_data, run_dir, **extra):
    overrides = tiny_overrides(tiny_data, **{
        "augment": "none", "data.batch_size": 80, "trainer.max_epochs": 3,
        "trainer.precision": "32-true", **extra})
    metrics = train(compose_train([*overrides, "~logger"], run_dir=run_dir))
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    return metrics


def test_cached_training_learns_the_same_head_as_normal_training(tiny_data, tmp_path):
    """One full batch per epoch, no augmentation: both paths see the same images each step."""
    normal = _run(tiny_data, tmp_path / "normal")
    cached = _run(tiny_data, tmp_path / "cached", cache_features="true",
                  cache_dir=tmp_path / "cache", **{"data.test_manifest": tiny_data["test"]})
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # train, val, test
    normal_net, _ = load_model(normal["last_checkpoint"])
    cached_net, info = load_model(cached["last_checkpoint"])
    # The head saw the same numbers, computed in batches of other sizes (the CPU's kernels
    # sum float32 in an order that depends on the batch): equal up to reordering.
    torch.testing.assert_close(cached_net.head.weight, normal_net.head.weight,
                               atol=1e-5, rtol=1e-4)
    for key, value in normal_net.backbone.state_dict().items():
        assert torch.equal(cached_net.backbone.state_dict()[key], value), key

    # The checkpoint is the full model: on images it reproduces what training measured.
    datamodule = _datamodule(tiny_data)
    for split, measured in (("val", cached["val/acc_best"]), ("test", cached["test/acc"])):
        best, _ = load_model(cached["best_checkpoint"])
        images, labels = zip(*(batch for batch in datamodule.image_loader(split, False)),
                             strict=True)
        with torch.no_grad():
            logits = best(torch.cat(images))
        accuracy = (logits.argmax(1) == torch.cat(labels)).float().mean().item()
        assert accuracy == pytest.approx(measured, abs=1e-6), split
        # ... and its head on the cached features gives the logits of the whole model on images.
        (cached_file,) = (tmp_path / "cache").glob(f"{split}-*.pt")
        features = torch.load(cached_file, weights_only=True)["features"][0]
        with torch.no_grad():  # equal up to float32 reordering (batch sizes differ)
            torch.testing.assert_close(best.head(features), logits, atol=1e-4, rtol=1e-4)
    assert info.num_classes == 20 and cached["epochs"] == 3


def test_normal_run_computes_validation_features_once(tiny_data, tmp_path, capsys):
    _run(tiny_data, tmp_path / "run", **{"trainer.max_epochs": 2})
    out = capsys.readouterr().out
    assert out.count("features: val: 40 images x 1 view(s)") == 1 and "(in memory)" in out
    assert "features: train" not in out


@pytest.mark.parametrize(("overrides", "val_features"), [
    ({}, True), ({"debug": "fast"}, False), ({"+trainer.limit_val_batches": 1}, False),
    ({"finetune": "full"}, False), ({"finetune": "gradual"}, False)])
def test_validation_features_only_for_a_frozen_backbone_and_full_validation(
        tiny_data, tmp_path, overrides, val_features):
    cfg = compose_train(tiny_overrides(tiny_data, **overrides), run_dir=tmp_path)
    datamodule, module, trainer = build(cfg)
    use_backbone_features(cfg, datamodule, module, trainer)
    assert isinstance(datamodule.datasets.get("val"), FeatureDataset) is val_features


def test_feature_loader_serves_features_without_workers(tiny_data):
    datamodule = _datamodule(tiny_data, num_workers=2)
    net = create_model("resnet18", num_classes=20, weights=None)
    attach_features(datamodule, net, ["val"])
    loader = datamodule.val_dataloader()
    x, y = next(iter(loader))
    assert loader.num_workers == 0 and isinstance(loader.sampler, FeatureSampler)
    assert x.shape == (16, 512) and y.shape == (16,)


@pytest.mark.parametrize("views", [1, 2])
def test_cache_features_runs_with_the_default_callbacks_and_tensorboard(tiny_data, tmp_path,
                                                                       views):
    """As a user runs it (`python -m foodnet.train cache_features=true`): the default callbacks
    and the TensorBoard logger on; the dashboards show what features allow, nothing crashes."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_data, **{
        "trainer.max_epochs": 2, "cache_features": "true", "cache_views": views,
        "cache_dir": tmp_path / "cache", "data.test_manifest": tiny_data["test"]})
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.count(f"features: train: 80 images x {views} view(s)") == 1
    assert result.stdout.count("train/augmented_samples: not logged, this run trains the head "
                               "on cached backbone features") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    # The head trained on cached features is tested as a whole network on the images.
    assert metrics["test/acc"] == pytest.approx(
        checkpoint_scores(metrics["best_checkpoint"], tiny_data["test"])["acc"], abs=1e-6)

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    assert {"train/loss", "val/acc", "speed/train_images_per_sec", "lr-Adam"} <= set(
        accumulator.Tags()["scalars"])
    assert set(accumulator.Tags()["images"]) == {"val/confusion_matrix"}
    assert len(accumulator.Images("val/confusion_matrix")) == 2

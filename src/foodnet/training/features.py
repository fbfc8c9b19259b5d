"""Frozen-backbone features (the fast path): extract them once, cache them, train only the head.

A frozen backbone in eval mode maps an image to the same pooled features every epoch, so with a
deterministic transform they can be computed once. Training the head on them gives the same logits
as running the whole network (same head, same features); the LightningModule still holds the full
network, so checkpoints are complete models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from foodnet.data.feature_dataset import FeatureDataset, FeatureSet
from foodnet.data.manifest import Sample
from foodnet.errors import ConfigError
from foodnet.speed.frozen import FrozenBackbone

if TYPE_CHECKING:
    from foodnet.data.datamodule import FoodDataModule
    from foodnet.models.transfer import TransferNet

log = logging.getLogger(__name__)
# Bump when the cache file layout or what goes into the key changes: old files are then ignored.
CACHE_FORMAT = 1


def state_dict_digest(module: nn.Module) -> str:
    """Identity of a network's weights and buffers (BatchNorm statistics included)."""
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # logical order, any layout
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def samples_digest(samples: Sequence[Sample]) -> str:
    """Identity of a manifest's content: each image's resolved path, label, size and mtime."""
    hasher = hashlib.sha256()
    for sample in samples:
        try:
            stat = sample.path.stat()
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:  # a missing image fails later, at decode, with its manifest line
            signature = "missing"
        hasher.update(f"{sample.path.resolve()}\t{sample.label}\t{signature}\n".encode())
    return hasher.hexdigest()


def cache_key(**parts) -> str:
    """A hex digest of everything that determines the features (plain JSON-able values)."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# no_grad rather than inference_mode: the grad mode of FrozenBackbone in training, so that a
# compiled backbone (speed.compile.CompiledForward) serves both without compiling twice.
@torch.no_grad()
def extract_features(backbone: nn.Module, loader: Iterable, *, device: torch.device | str = "cpu",
                     forward_context: Callable[[], contextlib.AbstractContextManager] = (
                         contextlib.nullcontext),
                     forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the backbone in eval mode over (images, labels) batches -> features (N, F), labels.

    `forward` runs it when given (a FrozenBackbone of the same backbone, with the run's plan)."""
    forward = forward or backbone
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with forward_context():
                features.append(forward(images).cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("no images to extract features from (empty loader)")
    return torch.cat(features), torch.cat(labels).long()


def extract_views(backbone: nn.Module, loader: DataLoader, views: int, seed: int = 0,
                  **kwargs) -> FeatureSet:
    """`views` passes of extract_features; view v's random augmentations are seeded by seed + v."""
    per_view, labels = [], None
    for view in range(views):
        # A fixed seed per view makes augmented views reproducible, whatever ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + view)
            features, view_labels = extract_features(backbone, loader, **kwargs)
        if labels is not None and not torch.equal(labels, view_labels):
            raise RuntimeError("feature extraction needs an unshuffled loader: labels differ "
                               "between views")
        per_view.append(features)
        labels = view_labels
    return FeatureSet(torch.stack(per_view), labels)


class FeatureCache:
    """Feature sets on disk, one file per key; written atomically, read with weights_only=True."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        return self.directory / f"{name}-{key[:32]}.pt"

    def load(self, path: Path) -> FeatureSet | None:
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return FeatureSet(data["features"], data["labels"])
        except Exception as err:  # torch raises several types for truncated or foreign files
            raise ValueError(f"{path}: unreadable feature cache file ({err}); delete it to "
                             "extract the features again") from None

    def save(self, path: Path, feature_set: FeatureSet, meta: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"features": feature_set.features, "labels": feature_set.labels,
                    "meta": meta}, partial)
        os.replace(partial, path)  # readers never see a half-written file


@dataclass(frozen=True)
class FeatureReport:
    """How one split's features were obtained, for the log and the tests."""

    split: str
    images: int
    views: int
    cache_hit: bool
    path: Path | None
    seconds: float


def attach_features(datamodule: FoodDataModule, net: TransferNet, splits: Iterable[str], *,
                    cache: FeatureCache | None = None, train_views: int = 1, seed: int = 0,
                    device: torch.device | str = "cpu", precision: str = "32-true",
                    forward_context: Callable[[], contextlib.AbstractContextManager] = (
                        contextlib.nullcontext),
                    frozen: FrozenBackbone | None = None) -> list[FeatureReport]:
    """Serve `splits` of the datamodule as frozen-backbone features (from `cache` when given),
    computed by `frozen` (the run's runner of `net.backbone`; default: plain, whole batches).

    Train uses `train_views` views: 1 is the deterministic eval transform, more are augmented
    passes of the train transform. Other splits use the eval transform.
    """
    if not net.backbone_frozen:
        raise ConfigError("backbone features can only be reused with a frozen backbone "
                          "(finetune=freeze)")
    if train_views < 1:
        raise ConfigError(f"cache_views={train_views} must be at least 1")
    if train_views > 1 and not datamodule.augment.random:
        raise ConfigError(f"cache_views={train_views} with augment={datamodule.augment.name} "
                          f"would store {train_views} identical views; set cache_views=1 or "
                          "augment=seed")
    net.to(device)
    weights = state_dict_digest(net.backbone) if cache is not None else ""
    reports = []
    for split in splits:
        views = train_views if split == "train" else 1
        augmented = views > 1
        loader = datamodule.image_loader(split, augmented=augmented)
        dataset = loader.dataset
        start = time.perf_counter()
        path, feature_set = None, None
        if cache is not None:
            key = cache_key(samples=samples_digest(dataset.samples),
                            transform=repr(dataset.transform), arch=net.arch, weights=weights,
                            preprocessing=datamodule.preprocessing.to_dict(), views=views,
                            augment=datamodule.augment.to_dict() if augmented else None,
                            seed=seed if augmented else None, precision=precision)
            path = cache.path(split, key)
            feature_set = cache.load(path)
        hit = feature_set is not None
        if feature_set is None:
            feature_set = extract_views(net.backbone, loader, views, seed=seed,
                                        device=device, forward_context=forward_context,
                                        forward=frozen or FrozenBackbone(net.backbone))
            if cache is not None:
                cache.save(path, feature_set, {"split": split, "arch": net.arch,
                                               "views": views, "precision": precision})
        datamodule.use_features(split, FeatureDataset(feature_set, seed=seed))
        report = FeatureReport(split, len(feature_set), views, hit, path,
                               time.perf_counter() - start)
        where = f" ({'read from' if hit else 'saved to'} {path})" if path else " (in memory)"
        log.info("features: %s: %d images x %d view(s) in %.1fs%s", split, report.images, views,
                 report.seconds, where)
        reports.append(report)
    return reports

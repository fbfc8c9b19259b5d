"""FoodDataModule: train/val/test datasets and loaders from manifests."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from foodnet.data.dataset import ManifestDataset
from foodnet.features import FeatureDataset
from foodnet.hardware import auto_num_workers
from foodnet.manifest import ManifestError, read_classes, read_manifest
from foodnet.transforms import eval_transform, train_transform


class FoodDataModule(L.LightningDataModule):
    """Builds the datasets from manifests; only the training loader shuffles."""

    def __init__(self, train_manifest: str | Path | None, val_manifest: str | Path | None,
                 test_manifest: str | Path | None = None, classes: str | Path | None = None,
                 num_classes: int | None = None, image_size: int = 256, augment: bool = True,
                 batch_size: int = 64, num_workers: int | str = "auto"):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size} must be positive")
        if image_size < 8:
            raise ValueError(f"data.image_size={image_size} is too small (at least 8)")
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.class_names = read_classes(classes) if classes else None
        if self.class_names and num_classes is not None and len(self.class_names) != num_classes:
            raise ManifestError(f"{classes} lists {len(self.class_names)} classes but "
                                f"model.num_classes={num_classes}; make them agree")
        self.num_classes = num_classes or (len(self.class_names) if self.class_names else None)
        self.image_size = image_size
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = auto_num_workers() if num_workers == "auto" else int(num_workers)
        self.datasets: dict[str, ManifestDataset | FeatureDataset] = {}

    def _dataset(self, split: str) -> ManifestDataset | None:
        path = self.manifests[split]
        if path is None:
            return None
        samples = read_manifest(path, num_classes=self.num_classes)
        transform = (train_transform(self.image_size, self.augment) if split == "train"
                     else eval_transform(self.image_size))
        return ManifestDataset(samples, transform)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage, ("train", "val", "test"))
        for split in wanted:
            if split not in self.datasets and self.manifests[split] is not None:
                self.datasets[split] = self._dataset(split)

    def image_loader(self, split: str, augmented: bool) -> DataLoader:
        """The split's images in manifest order, with the train or the eval transform, for
        feature extraction (foodnet.features); its workers exit after each pass."""
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = copy.copy(self.datasets[split])
        if not isinstance(dataset, ManifestDataset):
            raise ValueError(f"the {split} split already serves features, not images")
        dataset.transform = (train_transform(self.image_size, self.augment) if augmented
                             else eval_transform(self.image_size))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def use_features(self, split: str, dataset: FeatureDataset) -> None:
        """Serve `split` as precomputed backbone features instead of images."""
        self.datasets[split] = dataset

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set data.{split}_manifest")
        dataset = self.datasets[split]
        if isinstance(dataset, FeatureDataset):
            # Already in memory: loader workers would only add inter-process copies.
            return DataLoader(dataset, batch_size=self.batch_size,
                              sampler=dataset.sampler(shuffle))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

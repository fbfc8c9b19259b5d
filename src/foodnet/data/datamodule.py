"""FoodDataModule: train/val/test datasets and loaders from manifests."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from foodnet.data.dataset import ManifestDataset
from foodnet.data.sampling import EpochSampler, SeededSamples
from foodnet.manifest import ManifestError, read_classes, read_manifest
from foodnet.transforms import eval_transform, train_transform


def auto_num_workers() -> int:
    """Decode in parallel with every core the process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, 8)


class FoodDataModule(L.LightningDataModule):
    """Builds the datasets from manifests; only the training loader shuffles."""

    def __init__(self, train_manifest: str | Path | None, val_manifest: str | Path | None,
                 test_manifest: str | Path | None = None, classes: str | Path | None = None,
                 num_classes: int | None = None, image_size: int = 256, augment: bool = True,
                 batch_size: int = 64, num_workers: int | str = "auto", seed: int = 0):
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
        self.seed = seed
        self.datasets: dict[str, ManifestDataset] = {}

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

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set data.{split}_manifest")
        dataset = self.datasets[split]
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer \
            else (1, 0)
        if split == "train":
            # Order and augmentation come from (seed, epoch) only: see foodnet.data.sampling.
            sampler = EpochSampler(dataset, self.seed, world_size, rank,
                                   position=self._train_position if self.trainer else None)
            dataset = SeededSamples(dataset)
        elif world_size > 1:
            # Lightning's default DistributedSampler pads with repeated samples; evaluation must
            # count each sample exactly once (torchmetrics sums the ranks' states).
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                   shuffle=False)
        else:
            sampler = None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          # Worker base seeds come from here, not from the global RNG.
                          generator=torch.Generator().manual_seed(self.seed))

    def _train_position(self) -> tuple[int, int]:
        """(epoch, samples this rank already trained on in it), from Lightning's loop progress.

        Read when the train loader starts an epoch. Lightning starts the first epoch of a resumed
        run before it calls set_epoch, and resumes a mid-epoch checkpoint at the following batch:
        the sampler needs both to repeat the interrupted run exactly.
        """
        loop = self.trainer.fit_loop
        epochs = loop.epoch_progress.current
        in_progress = epochs.processed < epochs.started
        done = loop.epoch_loop.batch_progress.current.processed if in_progress else 0
        return epochs.processed, done * self.batch_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

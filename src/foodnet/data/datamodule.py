"""FoodDataModule: train/val/test datasets and loaders from manifests."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from foodnet.data.augment import Augmentation, NoAugment
from foodnet.data.check import MAX_REPORTED, check_manifest, format_problems, raise_for_errors
from foodnet.data.dataset import (
    BAD_IMAGE_POLICIES,
    BadImage,
    ManifestDataset,
    SkippingLoader,
    collate_skipping,
    ignore_stop_signals,
    record_skip,
)
from foodnet.data.feature_dataset import FeatureDataset
from foodnet.data.manifest import read_classes
from foodnet.data.preprocessing import Preprocessing
from foodnet.data.sampling import EpochSampler, SeededSamples
from foodnet.errors import ConfigError, ManifestError
from foodnet.machine import num_workers as worker_count

log = logging.getLogger(__name__)
VALIDATE_MODES = ("quick", "full")


class FoodDataModule(L.LightningDataModule):
    """Builds the datasets from manifests; only the training loader shuffles."""

    def __init__(self, train_manifest: str | Path | None, val_manifest: str | Path | None,
                 test_manifest: str | Path | None = None, classes: str | Path | None = None,
                 num_classes: int | None = None, preprocessing: Preprocessing | None = None,
                 augment: Augmentation | None = None,
                 batch_size: int = 64, num_workers: int | str = "auto",
                 on_bad_image: str = "error", validate: str = "quick", seed: int = 0):
        super().__init__()
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r}: expected one of "
                              f"{', '.join(BAD_IMAGE_POLICIES)}")
        if validate not in VALIDATE_MODES:
            raise ConfigError(f"data.validate={validate!r}: expected one of "
                              f"{', '.join(VALIDATE_MODES)}")
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.class_names = read_classes(classes) if classes else None
        if self.class_names and num_classes is not None and len(self.class_names) != num_classes:
            raise ManifestError(f"{classes} lists {len(self.class_names)} classes but "
                                f"model.num_classes={num_classes}; make them agree")
        self.num_classes = num_classes or (len(self.class_names) if self.class_names else None)
        # Made once per run from the backbone's weights (train.py); the datamodule only uses it.
        self.preprocessing = preprocessing
        # The train-time policy (the `augment` config group; None: none); evaluation never uses it.
        self.augment = augment if augment is not None else NoAugment()
        self.batch_size = batch_size
        self.num_workers = worker_count(num_workers)
        self.on_bad_image = on_bad_image
        self.validate = validate
        self.seed = seed
        self.datasets: dict[str, ManifestDataset | FeatureDataset] = {}
        # Every image skipped under on_bad_image=skip, by MANIFEST:LINE (train.py reports them).
        self.skipped: dict[str, BadImage] = {}

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",)}.get(stage, ("train", "val", "test"))
        todo = [s for s in wanted if s not in self.datasets and self.manifests[s] is not None]
        # Validate every manifest before building any dataset, so that all problems of all
        # splits are reported at once, before the first epoch.
        reports = {}
        for split in todo:
            reports[split] = check_manifest(self.manifests[split], self.num_classes,
                                            self.class_names, decode=self.validate == "full")
        if self.on_bad_image == "skip":
            # Unreadable images (missing, empty, undecodable) are skipped; bad lines still stop.
            for report in reports.values():
                for problem in report.errors:
                    if problem.scope == "image":
                        where = f"{problem.source}:{problem.line}"
                        record_skip(self.skipped, BadImage(where, str(problem.path),
                                                           problem.message))
                report.problems = [p for p in report.problems if p.scope != "image"]
        raise_for_errors(reports.values())
        notes = [p for report in reports.values() for p in report.warnings]
        if notes:
            log.warning("data warnings:\n%s", format_problems(notes, MAX_REPORTED))
        for split, report in reports.items():
            samples = [s for s in report.samples if s.where not in self.skipped]
            if not samples:
                raise ManifestError(f"{report.manifest}: every image was skipped, none is left")
            self.datasets[split] = ManifestDataset(samples, self.transform(split == "train"))

    def transform(self, train: bool):
        """The train transform (the augment policy's) or the eval preset."""
        if self.preprocessing is None:
            raise ValueError("FoodDataModule needs preprocessing=Preprocessing(...) to build "
                             "datasets (train.py makes it from the backbone's weights)")
        if train:
            return self.augment.transform(self.preprocessing)
        return self.preprocessing.eval_transform()

    def image_loader(self, split: str, augmented: bool) -> DataLoader:
        """The split's images in manifest order, with the train or the eval transform, for
        feature extraction (foodnet.training.features); its workers exit after each pass."""
        self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = copy.copy(self.datasets[split])
        if not isinstance(dataset, ManifestDataset):
            raise ValueError(f"the {split} split already serves features, not images")
        dataset.transform = self.transform(augmented)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=ignore_stop_signals)

    def use_features(self, split: str, dataset: FeatureDataset) -> None:
        """Serve `split` as precomputed backbone features instead of images."""
        self.datasets[split] = dataset

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise ConfigError(f"no {split} data: set data.{split}_manifest")
        dataset = self.datasets[split]
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer \
            else (1, 0)
        drop_last = False
        collate = collate_skipping
        if split != "train" and world_size > 1:
            # Lightning's default DistributedSampler pads with repeated samples; evaluation must
            # count each sample exactly once (torchmetrics sums the ranks' states).
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                   shuffle=False)
        elif isinstance(dataset, FeatureDataset):
            sampler = dataset.sampler(shuffle=split == "train")
        elif split == "train":
            # Order and augmentation come from (seed, epoch) only: see foodnet.data.sampling.
            sampler = EpochSampler(dataset, self.seed, world_size, rank,
                                   position=self._train_position if self.trainer else None)
            # augment.mix: MixUp/CutMix in the collate function, drawn from the samples' seeds.
            mix = self.augment.batch_mix(self.num_classes, collate_skipping)
            dataset = SeededSamples(dataset, with_seed=mix is not None)
            collate = mix or collate_skipping
            # A last batch of one sample breaks BatchNorm in train mode ("Expected more than 1
            # value per channel"): that sample is left out of this epoch (the order changes
            # every epoch, so it is another one each time).
            drop_last = len(sampler) % self.batch_size == 1 and len(sampler) > 1
            if drop_last:
                log.info("train: %d images per epoch = k x data.batch_size %d + 1: the last "
                         "batch of one is dropped (BatchNorm cannot train on a single sample)",
                         len(sampler), self.batch_size)
        else:
            sampler = None
        if isinstance(dataset, FeatureDataset):
            if split == "train" and self.augment.mix:  # a bug: train.py refuses the combination
                raise RuntimeError("augment.mix mixes images, but the train split serves features")
            # Already in memory: loader workers would only add inter-process copies.
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        return SkippingLoader(dataset, on_bad_image=self.on_bad_image, skipped=self.skipped,
                              batch_size=self.batch_size, sampler=sampler, collate_fn=collate,
                              drop_last=drop_last, num_workers=self.num_workers,
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

"""A Dataset over manifest samples (decode as RGB, transform) and a loader that skips bad images.

Bad images and DataLoader workers: a worker is a separate process, so a counter kept in the
dataset never reaches the main process. SkippingLoader therefore has its workers return a
BadImage record in place of a sample that fails to decode; `collate_skipping` drops it from the
batch and carries it along, and SkippingLoader, in the main process, applies the policy: raise a
clean ImageLoadError naming the manifest line and the path, or log it once, count it and go on.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util  # registers its exit cleanup before ours: ours runs first (LIFO)
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from foodnet.data.images import load_rgb
from foodnet.data.manifest import Sample
from foodnet.errors import ConfigError, ImageLoadError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
# The signals that stop a run. `timeout`, `kill -TERM -PGID`, SLURM and a terminal's Ctrl-C send
# them to the whole process group, loader workers included.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: workers ignore the stop signals, so that the main process,
    which decides (training.callbacks.safety.Preemption), can still fetch its batch and save.
    A worker still exits when the main process ends (torch watches its parent)."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def end_workers_at_exit(grace_s: float = 1.0) -> None:
    """At interpreter exit, multiprocessing terminates (SIGTERM) the daemonic children still
    running, then waits for each. A loader worker still alive then (its iterator kept by a
    traceback, or by an object in a reference cycle) ignores SIGTERM, so that wait would never
    end. Registered below with atexit, this runs just before: it terminates them too, and kills
    those still running after `grace_s`."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    # torch's SIGCHLD handler would report each killed worker as a loader failure.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
        if child.is_alive():
            child.kill()
            child.join()


atexit.register(end_workers_at_exit)


@dataclass(frozen=True)
class BadImage:
    """An image that failed to load, with its manifest line: travels with the batch."""

    where: str  # MANIFEST:LINE
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason} ({self.path})"


def record_skip(skipped: dict[str, BadImage], item: BadImage) -> None:
    """Remember a skipped image by its manifest line and log it the first time only."""
    if item.where not in skipped:
        skipped[item.where] = item
        log.warning("skipped bad image: %s", item)


class ManifestDataset(Dataset):
    """Images listed in a manifest; a decode error names the image and its manifest line."""

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path)
        except ImageLoadError as err:
            raise ImageLoadError(err.reason, sample.path, where=sample.where) from None
        if self.transform is not None:
            try:
                image = self.transform(image)
            except Exception as err:
                # A transform bug is not bad data: never skipped, but it still names the image.
                raise RuntimeError(f"{sample.where}: transform failed on {sample.path} "
                                   f"({type(err).__name__}: {err})") from err
        return image, sample.label


class _MarkBadImages(Dataset):
    """Returns a BadImage where the wrapped dataset raises ImageLoadError (runs in workers)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except ImageLoadError as err:
            return BadImage(err.where or "?", err.path or "?", err.reason)


def collate_skipping(items: list) -> tuple[torch.Tensor, torch.Tensor, list[BadImage]]:
    """default_collate of the good samples, plus the BadImages that were dropped."""
    bad = [item for item in items if isinstance(item, BadImage)]
    good = [item for item in items if not isinstance(item, BadImage)]
    if not good:  # an all-bad batch: empty, SkippingLoader never yields it
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images, labels = default_collate(good)
    return images, labels, bad


class SkippingLoader(DataLoader):
    """A DataLoader over a ManifestDataset that applies the bad-image policy in the main process
    and yields plain (images, labels) batches, never empty ones."""

    def __init__(self, dataset: ManifestDataset, on_bad_image: str = "error",
                 skipped: dict[str, BadImage] | None = None, **kwargs):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r}: expected one of "
                              f"{', '.join(BAD_IMAGE_POLICIES)}")
        kwargs.setdefault("collate_fn", collate_skipping)
        kwargs.setdefault("worker_init_fn", ignore_stop_signals)
        if isinstance(dataset, _MarkBadImages):  # Lightning re-creates loaders from .dataset
            dataset = dataset.dataset
        super().__init__(_MarkBadImages(dataset), **kwargs)
        self.on_bad_image = on_bad_image
        # Shared with the owner (FoodDataModule): MANIFEST:LINE -> BadImage, in order seen.
        self.skipped = skipped if skipped is not None else {}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        failed = None
        for images, labels, bad in super().__iter__():
            if bad and self.on_bad_image == "error":
                failed = bad[0]
                break
            for item in bad:
                record_skip(self.skipped, item)
            if len(labels):
                yield images, labels
        if failed is not None:
            # Raised after the loop has let go of the worker iterator, so that its workers shut
            # down now rather than whenever the garbage collector reaches the traceback.
            raise ImageLoadError(
                f"{failed.reason}; set data.on_bad_image=skip to train without it",
                failed.path, where=failed.where)

"""Training order and augmentation drawn from (seed, epoch) alone, so a resumed run repeats them.

The global RNG, the DataLoader workers and their count play no part: the sampler shuffles with its
own generator and hands every sample an augmentation seed, which the dataset wrapper applies in
whichever process decodes the sample. A run killed after epoch N and resumed sees exactly the
batches and augmentations of an uninterrupted run, with any `data.num_workers`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffle per epoch from seed + epoch; yield (index, augmentation seed) pairs for one rank.

    A DistributedSampler, so that Lightning neither replaces it under DDP nor pads it again; like
    torch's, it repeats a few samples so that every rank runs the same number of batches.
    `position` returns (epoch, samples of this rank already trained on in that epoch) when an
    epoch starts; without it the epoch is the one given to `set_epoch` and nothing is skipped.
    """

    def __init__(self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0,
                 position: Callable[[], tuple[int, int]] | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.position = position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.position() if self.position else (self.epoch, 0)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        size = len(self.dataset)
        order = torch.randperm(size, generator=generator).tolist()
        seeds = torch.randint(2**62, (size,), generator=generator).tolist()
        pairs = list(zip(order, seeds, strict=True))
        while len(pairs) < self.total_size:
            pairs += pairs[: self.total_size - len(pairs)]
        mine = pairs[self.rank:self.total_size:self.num_replicas]
        return iter(mine[skip:])


@contextmanager
def seeded_rngs(seed: int):
    """Seed torch's CPU, python's and numpy's global generators; restore them afterwards."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    numpy_state = np.random.get_state()
    torch.random.default_generator.manual_seed(seed)  # CPU only: leave the CUDA generators alone
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """`dataset[index]` fetched under the sample's own seed, so its random augmentation is fixed.
    with_seed=True appends the seed to the sample, for a collate function that mixes the batch
    (foodnet.data.augment.BatchMix) to draw from."""

    def __init__(self, dataset: Dataset, with_seed: bool = False):
        self.dataset = dataset
        self.with_seed = with_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with seeded_rngs(seed):
            sample = self.dataset[index]
        return (*sample, seed) if self.with_seed else sample

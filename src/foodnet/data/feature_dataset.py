"""Precomputed frozen-backbone features as a dataset: one split's features, served one view per
epoch (training/features.py extracts and caches them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler


@dataclass(frozen=True)
class FeatureSet:
    """Pooled backbone features of one split: `views` passes over the same N images."""

    features: torch.Tensor  # (views, N, num_features), in the dtype the backbone produced
    labels: torch.Tensor  # (N,) int64

    @property
    def views(self) -> int:
        return self.features.shape[0]

    def __len__(self) -> int:
        return self.features.shape[1]


class FeatureDataset(Dataset):
    """Index `view * N + i` is image i's features in that view; FeatureSampler picks the view."""

    def __init__(self, feature_set: FeatureSet, seed: int = 0):
        self.feature_set = feature_set
        self.seed = seed

    def __len__(self) -> int:
        return self.feature_set.views * len(self.feature_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        view, i = divmod(index, len(self.feature_set))
        return self.feature_set.features[view, i], self.feature_set.labels[i]

    def sampler(self, shuffle: bool) -> FeatureSampler:
        return FeatureSampler(len(self.feature_set), self.feature_set.views, shuffle, self.seed)


class FeatureSampler(Sampler[int]):
    """One view per epoch (epoch e uses view e % views), in a fresh order when shuffling.

    Lightning calls set_epoch before every epoch; the order depends only on (seed, epoch), so a
    resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, num_items: int, views: int = 1, shuffle: bool = True, seed: int = 0):
        self.num_items, self.views, self.shuffle, self.seed = num_items, views, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        offset = (self.epoch % self.views) * self.num_items
        if not self.shuffle:
            return iter(range(offset, offset + self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter((torch.randperm(self.num_items, generator=generator) + offset).tolist())

"""A Dataset over manifest samples: decode as RGB, transform, return (image, label)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from foodnet.images import ImageLoadError, load_rgb
from foodnet.manifest import Sample


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
            raise ImageLoadError(f"{sample.where}: {err}") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label

"""Datasets and the LightningDataModule built from manifests; `python -m foodnet.data` for tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foodnet.data.datamodule import FoodDataModule
    from foodnet.data.dataset import ManifestDataset

__all__ = ["FoodDataModule", "ManifestDataset"]


def __getattr__(name: str):
    # Imported on first use, so that `python -m foodnet.data check` does not pay for torch and
    # Lightning (seconds) just to validate a manifest.
    if name == "FoodDataModule":
        from foodnet.data.datamodule import FoodDataModule
        return FoodDataModule
    if name == "ManifestDataset":
        from foodnet.data.dataset import ManifestDataset
        return ManifestDataset
    raise AttributeError(f"module 'foodnet.data' has no attribute {name!r}")

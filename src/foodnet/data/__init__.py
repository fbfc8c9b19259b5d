"""Datasets and the LightningDataModule built from manifests; `python -m foodnet.data` for tools."""

from foodnet.data.datamodule import FoodDataModule
from foodnet.data.dataset import ManifestDataset

__all__ = ["FoodDataModule", "ManifestDataset"]

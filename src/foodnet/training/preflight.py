"""Settings checked before anything is built, so that a typo costs seconds, not an epoch.

The rest is checked where it is first read, still before training starts: classes.txt against
model.num_classes and data.batch_size (FoodDataModule), the labels against model.num_classes (the
manifests, read before fit), a weights file against the arch (create_model), and a resumed
checkpoint against the config and trainer.max_epochs (foodnet.training.resume.check_resume).
"""

from __future__ import annotations

from pathlib import Path

from torchvision import models

from foodnet.errors import ConfigError
from foodnet.models.backbones import check_arch
from foodnet.models.weights import resolve_weights


def check_settings(arch: str, weights: str | None, lr: float | None) -> None:
    """The arch and its weights name (create_model builds them later) and the learning rate."""
    check_arch(arch)
    resolved = resolve_weights(arch, weights)
    # resolve_weights reads "ResNet50_Weights.IMAGENET1K_V1" as IMAGENET1K_V1 of any arch.
    text = str(weights)
    if resolved is not None and not isinstance(resolved, Path) and "." in text:
        expected = type(resolved).__name__
        if text.split(".")[0] != expected:
            names = ", ".join(f"{expected}.{name}"
                              for name in models.get_model_weights(arch).__members__)
            raise ConfigError(f"model.weights={text} are not weights of model.arch={arch}; use "
                              f"one of {names}, a .pth file, or null")
    if lr is not None and not lr > 0:
        raise ConfigError(f"model.optimizer.lr={lr} must be positive (the default is 1e-3)")

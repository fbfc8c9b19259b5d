"""Settings checked before anything is built, so that a typo costs seconds, not an epoch.

The rest is checked where it is first read, still before training starts: classes.txt against
model.num_classes and data.batch_size (FoodDataModule), the labels against model.num_classes (the
manifests, read before fit), a weights file against the arch (create_model), and a resumed
checkpoint against the config and trainer.max_epochs (foodnet.training.resume.check_resume).
"""

from __future__ import annotations

from foodnet.errors import ConfigError
from foodnet.models.sources import check_arch, check_weights


def check_settings(arch: str, weights: str | None, lr: float | None) -> None:
    """The arch and its weights name (create_model builds them later) and the learning rate."""
    check_arch(arch)
    check_weights(arch, weights)
    if lr is not None and not lr > 0:
        raise ConfigError(f"model.optimizer.lr={lr} must be positive (the default is 1e-3)")

"""Settings checked before anything is built, so that a typo costs seconds, not an epoch.

The rest is checked where it is first read, still before training starts: types and the ranges
of values no class takes (foodnet.schema), classes.txt against model.num_classes
(FoodDataModule), the labels against model.num_classes (the manifests, read before fit), a
weights file against the arch (create_model), and a resumed checkpoint against the config and
trainer.max_epochs (foodnet.training.resume.find_resume).
"""

from __future__ import annotations

from foodnet.models.sources import check_arch, check_weights


def check_settings(arch: str, weights: str | None) -> None:
    """The arch and its weights name, which create_model builds later."""
    check_arch(arch)
    check_weights(arch, weights)

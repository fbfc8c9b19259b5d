"""The Lightning Trainer, built with a precision resolved first (foodnet.speed), and the Lightning
warnings that foodnet's design makes moot."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L


def create_trainer(precision: str | int = "32-true", **kwargs) -> L.Trainer:
    """A lightning Trainer. `precision: auto` is resolved before, on the run's own backbone
    (foodnet.speed.plan.resolve_speed), which the Trainer does not know."""
    if precision == "auto":
        raise ValueError("trainer.precision=auto must be resolved first with "
                         "foodnet.speed.plan.resolve_speed (it measures the backbone)")
    if not kwargs.get("enable_progress_bar", True):
        # conf/callbacks names the bar shown when there is one; with none, Lightning refuses it.
        from lightning.pytorch.callbacks import ProgressBar

        kwargs["callbacks"] = [c for c in kwargs.get("callbacks") or []
                               if not isinstance(c, ProgressBar)]
    return L.Trainer(precision=precision, **kwargs)


@contextmanager
def expected_warnings() -> Iterator[None]:
    """Silence, around fit/test only, the Lightning warnings that foodnet's design makes moot."""
    with warnings.catch_warnings():
        # FoodClassifier keeps frozen parts in eval mode on purpose (BatchNorm must not drift).
        warnings.filterwarnings(
            "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        # EpochSampler resumes a mid-epoch checkpoint exactly (data/sampling.py); Lightning,
        # which cannot tell, would warn on every such resume that results may be unreliable.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before the epoch "
                              "ended and your dataloader is not resumable")
        yield

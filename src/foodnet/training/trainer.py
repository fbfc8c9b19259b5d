"""The Lightning Trainer, with this machine's settings resolved first."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L

from foodnet.hardware import resolve_precision


def create_trainer(precision: str | int = "auto", accelerator: str = "auto",
                   **kwargs) -> L.Trainer:
    """A lightning Trainer whose `precision: auto` is resolved for this machine first."""
    return L.Trainer(precision=resolve_precision(precision, accelerator),
                     accelerator=accelerator, **kwargs)


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

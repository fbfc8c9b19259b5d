"""Learning-rate schedules built from torch's schedulers.

Every factory takes the optimizer and `total`, the number of scheduler steps in the whole run
(epochs when the schedule steps per epoch, optimizer steps when it steps per batch), which
FoodClassifier computes from the Trainer; the other arguments come from conf/scheduler/*.yaml.
"""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

from foodnet.errors import ConfigError

INTERVALS = ("epoch", "step")


def _check_total(total: int) -> None:
    if total < 1:
        raise ConfigError(f"a learning-rate schedule needs a finite run length, got {total} steps: "
                          "set trainer.max_epochs (or trainer.max_steps) to a positive number")


def step_decay(optimizer: Optimizer, total: int, step_size: int, gamma: float) -> StepLR:
    """Multiply the lr by gamma every step_size steps."""
    _check_total(total)
    if step_size < 1:
        raise ConfigError(f"scheduler.schedule.step_size={step_size} must be at least 1")
    if step_size >= total:
        # A warning, not an error: short wiring checks (debug=fast) must still run.
        warnings.warn(f"scheduler.schedule.step_size={step_size} but the run has only {total} "
                      "scheduler steps: the learning rate never decays", stacklevel=1)
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def cosine_with_warmup(optimizer: Optimizer, total: int, warmup_ratio: float,
                       warmup_start_factor: float) -> LRScheduler:
    """Ramp the lr linearly from lr*warmup_start_factor to lr, then decay it to 0 along a cosine."""
    _check_total(total)
    if not 0.0 <= warmup_ratio < 1.0:
        raise ConfigError(f"scheduler.schedule.warmup_ratio={warmup_ratio} must be in [0, 1)")
    warmup = round(warmup_ratio * total)
    # Decay to exactly 0 (no eta_min): torch's recursive cosine formula then keeps every param
    # group at the same ratio to the head's lr, which groups added by finetune=gradual rely on.
    cosine = CosineAnnealingLR(optimizer, T_max=total - warmup)
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0,
                    total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def one_cycle(optimizer: Optimizer, total: int, pct_start: float, div_factor: float,
              final_div_factor: float) -> OneCycleLR:
    """Leslie Smith's one-cycle policy peaking at the optimizer's configured lr."""
    _check_total(total)
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start,
                      div_factor=div_factor, final_div_factor=final_div_factor)

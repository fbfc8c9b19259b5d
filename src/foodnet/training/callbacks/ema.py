"""ema=true: Lightning's EMAWeightAveraging, so that validation, checkpoints and hence export use
the exponential moving average of the weights training changes."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from foodnet.errors import ConfigError


class TrainableEMA(EMAWeightAveraging):
    """EMA whose frozen weights stay bit for bit the trained ones: decay * w + (1 - decay) * w
    rounds off w in float32, so averaging a frozen backbone would slowly change it."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay={decay} must be in (0, 1), e.g. 0.999")
        super().__init__(decay=decay)
        self.decay = decay

        @torch.no_grad()
        def update(average: torch.Tensor, current: torch.Tensor, _count) -> torch.Tensor:
            if torch.equal(average, current):  # frozen (or not yet unfrozen): nothing to average
                return current
            return average.lerp(current, 1.0 - decay)

        # EMAWeightAveraging hands its avg_fn to torch's AveragedModel: replace it with the one
        # above (same formula, frozen weights kept exact).
        self._kwargs["avg_fn"] = update

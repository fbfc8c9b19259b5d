"""A Lightning callback that bench.py adds to foodnet's run: epoch wall times and val/acc to JSON.

It lives apart from bench.py so that the seed's process never imports Lightning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class EpochTimer(L.Callback):
    """An epoch lasts from its start to the next one's (or the end of fit): that includes the
    checkpoint writes, which Lightning runs after every other callback's epoch-end hook."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.record = {"epochs": []}

    def _close_epoch(self, trainer) -> None:
        if self.record["epochs"] and "end" not in self.record["epochs"][-1]:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.record["epochs"][-1]["end"] = time.time()
            self.path.write_text(json.dumps(self.record))

    def on_fit_start(self, trainer, pl_module):
        self.record["t_fit_start"] = time.time()
        self.record.update(precision=str(trainer.precision),
                           device=str(trainer.strategy.root_device))

    def on_train_epoch_start(self, trainer, pl_module):
        self._close_epoch(trainer)
        self.record["epochs"].append({"start": time.time()})

    def on_train_epoch_end(self, trainer, pl_module):  # after validation
        val_acc = trainer.callback_metrics.get("val/acc")
        self.record["epochs"][-1]["val_acc"] = None if val_acc is None else float(val_acc)

    def on_fit_end(self, trainer, pl_module):
        self._close_epoch(trainer)

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
    def __init__(self, path: str):
        self.path = Path(path)
        self.record = {"epochs": []}

    def on_fit_start(self, trainer, pl_module):
        self.record["t_fit_start"] = time.time()

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.time()

    def on_train_epoch_end(self, trainer, pl_module):  # runs after validation
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        val_acc = trainer.callback_metrics.get("val/acc")
        self.record["epochs"].append({"start": self._start, "end": time.time(),
                                      "val_acc": None if val_acc is None else float(val_acc)})
        self.record.update(precision=str(trainer.precision),
                           device=str(trainer.strategy.root_device))
        self.path.write_text(json.dumps(self.record))

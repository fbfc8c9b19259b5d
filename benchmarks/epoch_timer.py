"""A Lightning callback that bench.py adds to foodnet's run: epoch wall times and val/acc to JSON,
turn-taking with the other variants at every epoch start, and an early stop after --epochs.

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
    checkpoint writes, which Lightning runs after every other callback's epoch-end hook.

    `stop_after`: end the run after that many epochs. The run is configured for the recipe's
    20, so that every decision made from the run's length (compile: auto) is the real one.
    """

    def __init__(self, path: str, stop_after: int | None = None, turns_dir: str | None = None,
                 name: str = "foodnet"):
        self.path = Path(path)
        self.stop_after = stop_after
        self.turns = None
        if turns_dir:
            from turns import Turns  # benchmarks/ is on sys.path (bench.py runs from there)
            self.turns = Turns.current(turns_dir, name)
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
        if self.turns is not None:  # the setup, or the previous epoch, was this turn
            self.turns.next()
        self.record["epochs"].append({"start": time.time()})

    def on_train_epoch_end(self, trainer, pl_module):  # after validation
        val_acc = trainer.callback_metrics.get("val/acc")
        self.record["epochs"][-1]["val_acc"] = None if val_acc is None else float(val_acc)
        if self.stop_after is not None and len(self.record["epochs"]) >= self.stop_after:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module):
        self._close_epoch(trainer)

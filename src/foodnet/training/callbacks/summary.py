"""A one-line summary per epoch, like the seed prints, through logging (console and log file)."""

from __future__ import annotations

import logging
import time

import lightning as L

from foodnet.reports.metrics import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_ACC_BEST, VAL_LOSS

log = logging.getLogger(__name__)
SUMMARY_KEYS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, VAL_ACC_BEST)


class EpochSummary(L.Callback):
    """Print epoch number, losses, accuracies and wall time once each epoch ends."""

    def on_train_start(self, trainer, pl_module):
        # A run resumed mid-epoch continues that epoch without on_train_epoch_start.
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Runs after validation, so val/* of this epoch are in callback_metrics. Reading them
        # syncs the epoch's metrics across DDP ranks: every rank must, or rank 0 waits forever.
        metrics = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
        parts = [f"{key} {float(metrics[key]):.4f}" for key in SUMMARY_KEYS if key in metrics]
        seconds = time.perf_counter() - self._start
        log.info("epoch %d/%s  %s  (%.1fs)", trainer.current_epoch + 1, trainer.max_epochs,
                 "  ".join(parts), seconds)

"""What keeps a run's checkpoints trustworthy: atomic writes, a stop on non-finite loss, and a
checkpoint-then-exit on SIGTERM/SIGUSR1."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import lightning as L
import torch

from foodnet.errors import NonFiniteLossError
from foodnet.reports.metrics import TRAIN_LOSS
from foodnet.training.resume import last_checkpoint_path

log = logging.getLogger(__name__)


class FiniteLossGuard(L.Callback):
    """Stop the run at the first NaN/inf loss, before the bad update, and refuse to let a
    checkpoint be written from non-finite weights.

    ModelCheckpoint has no such guard: its monitor (val/acc) stays finite with NaN weights, and a
    NaN monitor is saved anyway while fewer than save_top_k checkpoints exist.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss):
        bad = not bool(torch.isfinite(loss.detach()).all())
        # Every rank must stop at the same step, or DDP would hang in the next all-reduce.
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            where = (f"epoch {trainer.current_epoch + 1}, batch {getattr(self, '_batch_idx', '?')}"
                     f" (global step {trainer.global_step})")
            value = loss.detach().float().item() if bad else "non-finite on another rank"
            raise NonFiniteLossError(
                f"{TRAIN_LOSS} is {value} at {where}: stopped before this update; no checkpoint "
                "was written from these weights. Lower model.optimizer.lr or check this batch")

    def _check_weights(self, trainer, pl_module, when: str) -> None:
        bad = [name for name, p in pl_module.named_parameters()
               if p.requires_grad and not bool(torch.isfinite(p).all())]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise NonFiniteLossError(
                f"non-finite weights ({', '.join(bad[:3]) or 'on another rank'}) at {when} of "
                f"epoch {trainer.current_epoch + 1}: stopped before they could be checkpointed. "
                "Lower model.optimizer.lr")

    # Both run before ModelCheckpoint's hooks: Lightning orders checkpoint callbacks last.
    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._check_weights(trainer, pl_module, "the validation")

    def on_train_epoch_end(self, trainer, pl_module):
        self._check_weights(trainer, pl_module, "the end")


class Preempted(SystemExit):
    """Raised after a signal's checkpoint is written; exits with 128 + the signal number."""


class Preemption(L.Callback):
    """On SIGTERM, SIGUSR1 or Ctrl-C (SIGINT): finish the current batch, write last.ckpt, exit
    128 + signal (143, 138, 130). A second Ctrl-C stops at once, without a checkpoint.

    Lightning's own SIGTERM handler stops without a checkpoint and exits 0, and outside SLURM it
    ignores SIGUSR1. This callback takes over SIGTERM while training runs and adds SIGUSR1 on top
    of whatever handled it (under SLURM with auto-requeue: Lightning's requeue handler, which
    still runs). A signal during validation takes effect at the end of the epoch; one during the
    sanity check or the final test ends the run through Lightning's handler, without checkpoint.
    """

    # SIGUSR1: SLURM's `--signal=USR1@<seconds>` warning. The loader workers ignore all three
    # (foodnet.data.dataset.ignore_stop_signals): a signal sent to the whole process group must
    # not kill them before this process has saved.
    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.signum: int | None = None

    def on_train_start(self, trainer, pl_module):
        # Lightning installs its handlers just before this hook and restores the originals at
        # teardown, which removes these too.
        if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
            return  # Python lets only the main thread set handlers (and Windows lacks SIGUSR1)
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            previous = signal.getsignal(signum)
            chained = previous if name == "SIGUSR1" and callable(previous) else None
            signal.signal(signum, self._handler(chained))

    def _handler(self, chained):
        def handle(signum, frame):
            if signum == signal.SIGINT:
                # The next Ctrl-C interrupts at once, as Python's default does.
                signal.signal(signal.SIGINT, signal.default_int_handler)
            self.signum = self.signum or signum
            if chained is not None:
                chained(signum, frame)
        return handle

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # The epoch's last batch is left to on_train_epoch_end, so that its validation still runs.
        if batch_idx + 1 < trainer.num_training_batches:
            self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        # After validation and the epoch's regular checkpoint.
        self._maybe_stop(trainer)

    def _maybe_stop(self, trainer) -> None:
        # All ranks decide together: a signal may reach only one process.
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        signum = self.signum or signal.SIGTERM
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or checkpoint.dirpath is None:
            raise Preempted(128 + signum)
        path = last_checkpoint_path(checkpoint)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning("%s: saved %s at epoch %d, global step %d; resume with "
                        "hydra.run.dir=<this run's folder> ckpt_path=last",
                        signal.Signals(signum).name, path, trainer.current_epoch + 1,
                        trainer.global_step)
        raise Preempted(128 + signum)

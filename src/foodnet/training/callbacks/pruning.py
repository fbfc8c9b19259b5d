"""Optuna pruning for a run that is one trial of a study (hparams_search=optuna, docs/search.md)."""

from __future__ import annotations

import logging

import lightning as L

from foodnet.errors import ConfigError
from foodnet.reports.metrics import VAL_ACC

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Report `monitor` to trial `trial` of the study after every validation epoch (the epoch is
    the step), and stop the run cleanly when the study's pruner prunes the trial.

    The trial lives in a database, so the run can be another process or machine than the sweeper
    that asked for it. `pruner` is the study's (Optuna keeps no pruner in the database); None
    never prunes. After a prune, `pruned_epoch` is the epoch (from 0) at which it happened.
    """

    def __init__(self, storage: str, study_name: str, trial: int, pruner=None,
                 monitor: str = VAL_ACC):
        self.storage = storage
        self.study_name = study_name
        self.trial_number = int(trial)
        self.pruner = pruner
        self.monitor = monitor
        self.pruned_epoch: int | None = None
        self._trial = None

    def _optuna_trial(self):
        if self._trial is None:
            import optuna

            study = optuna.load_study(study_name=self.study_name, storage=self.storage,
                                      pruner=self.pruner or optuna.pruners.NopPruner(),
                                      sampler=optuna.samplers.RandomSampler())
            frozen = next(t for t in study.get_trials(deepcopy=False)
                          if t.number == self.trial_number)
            # FrozenTrial._trial_id: the storage's key; Optuna has no public name for it.
            self._trial = optuna.trial.Trial(study, frozen._trial_id)
        return self._trial

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.pruned_epoch is not None:
            return
        # Read on every rank: reading callback_metrics syncs them across DDP processes.
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"callbacks.optuna_pruning.monitor={self.monitor} is not logged in "
                              f"validation; choose one of {sorted(trainer.callback_metrics)}")
        prune = False
        if trainer.is_global_zero:
            trial = self._optuna_trial()
            trial.report(float(value), step=trainer.current_epoch)
            prune = trial.should_prune()
            if prune:
                from optuna.trial import TrialState

                trial.study.tell(self.trial_number, state=TrialState.PRUNED)
        if trainer.strategy.broadcast(prune):
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info("optuna trial %d pruned after epoch %d: %s %.4f", self.trial_number,
                         trainer.current_epoch + 1, self.monitor, float(value))

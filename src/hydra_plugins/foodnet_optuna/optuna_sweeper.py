"""An Optuna sweeper for Hydra: one study in a database, shared by any number of workers.

Why foodnet has its own: the released hydra-optuna-sweeper (1.3.0) pins optuna<3, and neither it
nor its 1.4 release candidates (which need a pre-release Hydra 1.4) can prune a trial, count one
study's trials across workers, or resume a study where it stopped. This sweeper keeps that
plugin's config names (n_trials, n_jobs, storage, study_name, direction, sampler, params), so
its configs still apply, and adds `pruner` and `heartbeat_interval`.

How it works:
- The study lives in `storage` (an RDB URL; SQLite in the sweep folder by default). Every worker
  that runs the same command against the same storage and study_name works on the same study.
- `n_trials` is the study's total, not this worker's: a worker asks for trials while fewer than
  n_trials have been started (finished, running, or queued for a retry), so two workers finish
  n_trials between them, and running the command again resumes the study where it stopped.
- Trial k runs as Hydra job k (hydra.job.num == trial number): its folder is `<sweep dir>/k`,
  whatever worker runs it, and the job's pruning callback reports to trial k (see
  conf/hparams_search/optuna.yaml and foodnet/training/callbacks/pruning.py). A pruned trial is
  marked pruned by its job; this sweeper tells Optuna the value of every other trial, or that it
  failed.
- A trial whose worker is interrupted (Ctrl-C, SIGTERM) is failed and queued again with the same
  parameters; one whose worker died silently (kill -9, a lost node) stops sending heartbeats
  and the next worker to ask does the same. Neither counts towards n_trials.

Optuna is imported inside the methods: Hydra imports every plugin module at start-up, also for
runs that never sweep.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from foodnet.errors import ConfigError, exit_on_user_error
from foodnet.reports.metrics import TEST_ACC, VAL_ACC_BEST

log = logging.getLogger(__name__)

# A failed trial's error, set by this sweeper. Failed trials without it (interrupted, stale, or
# asked by two workers at once) never ran to an end and do not count towards n_trials.
ERROR_ATTR = "error"
SQLITE_PREFIX = "sqlite:///"
MAX_RETRY = 2  # times a trial whose worker died or was interrupted is run again


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split overrides into Optuna distributions (choice, range, interval) and fixed overrides.

    A key given again later wins, so a command-line `data.batch_size=64` fixes a key that
    hydra.sweeper.params searches, and `data.batch_size=choice(32,64)` replaces its range.
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    entries: dict[str, Any] = {}  # key -> a distribution, or the fixed override's text
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        entries.pop(key, None)  # re-inserted last: fixed overrides keep the command line's order
        if not override.is_sweep_override():
            entries[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
        elif override.is_interval_sweep():
            interval = override.value()
            log_scale = "log" in interval.tags
            if isinstance(interval.start, int) and isinstance(interval.end, int):
                entries[key] = IntDistribution(interval.start, interval.end, log=log_scale)
            else:
                entries[key] = FloatDistribution(interval.start, interval.end, log=log_scale)
        else:  # choice(...) or range(...): the values Hydra would sweep, in order
            values = list(override.sweep_iterator(transformer=Transformer.encode))
            sweep = override.value()
            if override.is_range_sweep() and all(isinstance(v, int) for v in values) \
                    and not sweep.shuffle and len(values) > 1:
                entries[key] = IntDistribution(min(values), max(values), step=abs(sweep.step))
            else:
                entries[key] = CategoricalDistribution(values)
    space = {k: v for k, v in entries.items() if not isinstance(v, str)}
    return space, [v for v in entries.values() if isinstance(v, str)]


def idle_keys(space: Collection[str], setting: Callable[[str], Any]) -> dict[str, str]:
    """The searched keys that change nothing in any trial, each with why and the fix.

    `setting(key)` is the value every trial gets for a key the space does not search. A key
    whose effect depends on a searched setting counts in the trials where it applies, so it
    stays. The one case: `augment` (the group or its options) under cache_features=true with
    cache_views=1, where the train features come from the eval transform.
    """
    def fixed(key: str) -> Any:
        return _SEARCHED if key in space else setting(key)

    idle = {}
    if fixed("cache_features") is True and fixed("cache_views") == 1:
        for key in space:
            if key == "augment" or key.startswith("augment."):
                idle[key] = (
                    "cache_features=true with cache_views=1 trains the head on features of the "
                    "eval transform, so no augmentation policy is applied. Drop it from the "
                    "search (augment=none on the command line fixes it), or set cache_views=K>1 "
                    "to train on K augmented views per image (every policy searched must then "
                    "augment: augment=none is refused with cache_views>1)")
    return idle


_SEARCHED = object()  # idle_keys' value of a setting that the search space searches


def _counted(trial) -> bool:
    from optuna.trial import TrialState

    return trial.state != TrialState.FAIL or ERROR_ATTR in trial.user_attrs


class _Heartbeat:
    """Record a heartbeat for the trials being run, every `interval` seconds, in a thread."""

    def __init__(self, storage, interval: int | None):
        self.storage = storage
        self.interval = interval

    def record(self, trials: Sequence) -> None:
        if self.interval:
            for trial in trials:
                # Trial._trial_id: the storage's key; Optuna has no public name for it.
                self.storage.record_heartbeat(trial._trial_id)

    @contextmanager
    def beating(self, trials: Sequence) -> Iterator[None]:
        if not self.interval:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.interval):
                self.record(trials)

        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class OptunaSweeper(Sweeper):
    """Hydra sweeper: ask Optuna for trials, run each as a Hydra job, tell Optuna the outcome."""

    def __init__(self, sampler: Any, pruner: Any, direction: str, storage: str | None,
                 study_name: str, n_trials: int, n_jobs: int, heartbeat_interval: int | None,
                 params: DictConfig | None = None):
        self.sampler = sampler  # instantiated by Hydra from its _target_
        self.pruner = pruner
        self.direction = direction
        self.storage_url = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.heartbeat_interval = heartbeat_interval
        self.params = OmegaConf.to_container(params) if params else {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    # --- the study -------------------------------------------------------------------------

    def open_study(self):
        import optuna

        url = self.storage_url
        if not url:
            raise ConfigError("hydra.sweeper.storage is null: an Optuna search needs a database "
                              "that its trials report to, e.g. sqlite:///optuna.db")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials} and hydra.sweeper.n_jobs="
                              f"{self.n_jobs} must both be at least 1")
        engine_kwargs: dict[str, Any] = {}
        if url.startswith(SQLITE_PREFIX):
            Path(url[len(SQLITE_PREFIX):]).parent.mkdir(parents=True, exist_ok=True)
            # Workers and their trials write to one file: wait for the lock instead of failing.
            engine_kwargs = {"connect_args": {"timeout": 60}}
        import sqlalchemy.exc

        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.storage = optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs,
                        heartbeat_interval=self.heartbeat_interval,
                        heartbeat_stale_trial_callback=self._requeue_stale)
                break
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
                # Workers started together on a new database race to create its tables; the
                # loser finds them made on its next try.
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
        self.heartbeat = _Heartbeat(self.storage, self.heartbeat_interval)
        return optuna.create_study(storage=self.storage, study_name=self.study_name,
                                   sampler=self.sampler, pruner=self.pruner,
                                   direction=self.direction, load_if_exists=True)

    def started(self, study) -> int:
        from optuna.trial import TrialState

        return sum(1 for t in study.get_trials(deepcopy=False)
                   if _counted(t) and t.state != TrialState.WAITING)

    def ask(self, study, space: dict[str, Any], count: int) -> list:
        """Up to `count` trials of the study's n_trials that nobody has started yet."""
        import optuna
        from optuna.trial import TrialState

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed, queued again
        trials = []
        while len(trials) < count and self.started(study) < self.n_trials:
            with warnings.catch_warnings():
                # Optuna expects heartbeats inside Study.optimize; _Heartbeat sends them here.
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = study.ask(fixed_distributions=space)
            self.heartbeat.record([trial])  # from now on, a trial nobody beats for goes stale
            # Trial numbers are unique and in creation order: if another worker asked at the
            # same moment, the later trial is over the budget and is dropped before it runs.
            rank = sum(1 for t in study.get_trials(deepcopy=False)
                       if _counted(t) and t.number <= trial.number)
            if rank > self.n_trials:
                study.tell(trial, state=TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    def tell(self, study, trial, job_return) -> None:
        """Record how the job ended, unless the job already did (a pruned trial)."""
        from optuna.trial import TrialState

        if _frozen(study, trial.number).state.is_finished():
            return
        try:
            value = job_return.return_value  # re-raises what the job raised
            value = float(value)
        except Exception as err:  # noqa: BLE001 - any way a job fails is a failed trial
            value, error = None, f"{type(err).__name__}: {err}"
        else:
            error = "" if math.isfinite(value) else _job_error(job_return, value)
        if error:
            trial.set_user_attr(ERROR_ATTR, error)
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, error)
        else:
            study.tell(trial, value)

    def requeue(self, study, trials: Sequence) -> None:
        """Fail the trials of an interrupted launch that did not end, and queue them again."""
        from optuna.trial import TrialState

        retry = _retry()
        for trial in trials:
            if not _frozen(study, trial.number).state.is_finished():
                study.tell(trial, state=TrialState.FAIL)
                retry(study, _frozen(study, trial.number))
                self._mark_interrupted(trial.number, "interrupted")

    def _requeue_stale(self, study, frozen_trial) -> None:
        """Optuna's heartbeat callback: a trial whose worker died, already failed; queue it."""
        _retry()(study, frozen_trial)
        self._mark_interrupted(frozen_trial.number, "its worker stopped sending heartbeats")

    def _mark_interrupted(self, number: int, why: str) -> None:
        """Log it, and say so in the trial's metrics.json when its folder is in this sweep's
        folder (the summary then shows it as interrupted, not as a crash)."""
        message = f"trial {number} {why}: queued again with the same parameters, from epoch 1"
        log.warning(message)
        config = getattr(self, "config", None)  # None before setup()
        if config is None or OmegaConf.to_container(
                config.hydra.sweep, resolve=False).get("subdir") != "${hydra.job.num}":
            return
        job_dir = Path(str(config.hydra.sweep.dir)) / str(number)
        if job_dir.is_dir() and not (job_dir / "metrics.json").exists():
            (job_dir / "metrics.json").write_text(json.dumps(
                {"status": "interrupted", "error": message, VAL_ACC_BEST: None, TEST_ACC: None,
                 "run_dir": str(job_dir)}, indent=2) + "\n")

    # --- the sweep -------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        with exit_on_user_error():  # `error: ...` and exit code 2, as from every foodnet command
            space, fixed = self.search(arguments)
            study = self.open_study()
        self.run(study, space, fixed)

    def search(self, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """The sweep's search space and fixed overrides (hydra.sweeper.params, then the command
        line), refusing a searched key that changes nothing in any trial."""
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + [*arguments])
        # Refused, not dropped: a search is run as the user wrote it, or not at all
        # (docs/search.md says why).
        for key, why in idle_keys(space, self._setting(fixed)).items():
            raise ConfigError(f"hydra.sweeper.params searches {key}, which changes nothing in "
                              f"any trial: {why}")
        return space, fixed

    def _setting(self, fixed: list[str]) -> Callable[[str], Any]:
        """A key's value in every trial: the last fixed override of it, else the composed
        config's (which holds the command line's fixed overrides, not hydra.sweeper.params')."""
        values = {o.get_key_element(): o.value()
                  for o in OverridesParser.create().parse_overrides(fixed)}
        return lambda key: values[key] if key in values else OmegaConf.select(self.config, key)

    def run(self, study, space: dict[str, Any], fixed: list[str]) -> None:
        done = self.started(study)
        log.info("Optuna study %s in %s: %d of %d trials started before this worker",
                 self.study_name, self.storage_url, done, self.n_trials)
        while trials := self.ask(study, space, self.n_jobs):
            # Beat for all of them: the later batches' trials wait while the first one runs.
            with self.heartbeat.beating(trials):
                try:
                    for batch in _consecutive(trials):
                        overrides = [tuple(f"{key}={Transformer.str(value)}"
                                           for key, value in trial.params.items()) + tuple(fixed)
                                     for trial in batch]
                        returns = self.launcher.launch(overrides,
                                                       initial_job_idx=batch[0].number)
                        for trial, job_return in zip(batch, returns, strict=True):
                            self.tell(study, trial, job_return)
                except BaseException:
                    self.requeue(study, trials)  # those that did not end
                    raise
        self.report(study)

    def report(self, study) -> None:
        """Log the study's trial counts and best trial; write optimization_results.yaml."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(1 for t in trials if t.state == state and _counted(t))
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                TrialState.RUNNING, TrialState.WAITING)}
        log.info("Optuna study %s: %s (n_trials %d)", self.study_name,
                 ", ".join(f"{n} {state}" for state, n in counts.items() if n), self.n_trials)
        if not counts["complete"]:
            log.info("no completed trial: no best parameters")
            return
        best = study.best_trial
        log.info("best trial %d: value %.4f %s", best.number, best.value, best.params)
        results = {"name": "optuna", "study_name": self.study_name, "best_trial": best.number,
                   "best_params": best.params, "best_value": best.value, "trials": counts}
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def _job_error(job_return, value: float) -> str:
    """The error a failed foodnet job wrote into its metrics.json (foodnet.train.record_failure)."""
    try:
        metrics_file = Path(job_return.hydra_cfg.hydra.runtime.output_dir) / "metrics.json"
        return json.loads(metrics_file.read_text())["error"]
    except (AttributeError, OSError, KeyError, ValueError):
        return f"the job returned {value}"


def _retry():
    """Queue a trial that never ended again, as WAITING with its parameters: at most twice, so a
    trial that keeps killing its worker (out of memory) gives way to a new one."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def _frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _consecutive(trials: Sequence) -> list[list]:
    """Split trials into runs of consecutive numbers: a launch numbers its jobs consecutively,
    and job k must be trial k (another worker's trial can sit between two of ours)."""
    batches: list[list] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if batches and batches[-1][-1].number + 1 == trial.number:
            batches[-1].append(trial)
        else:
            batches.append([trial])
    return batches


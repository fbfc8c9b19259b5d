"""Optuna search (hparams_search=optuna): pruning, one study shared by two workers, resuming,
and the retry of trials whose worker was interrupted or died."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import REPO, subprocess_env, tiny_overrides
from optuna.trial import TrialState

from foodnet.data.demo import make_demo_dataset
from foodnet.sweep import summarize

STUDY = "test"


def _tiny(data: dict[str, Path]) -> list[str]:
    """A tiny run on `data`, leaving data.batch_size to the search space, max_epochs to a test."""
    return tiny_overrides(data, **{"data.batch_size": None, "trainer.max_epochs": None})


def _search(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "foodnet.train", "hparams_search=optuna",
                             *args], cwd=cwd, env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=420)
    assert process.returncode == 0, output[-4000:]
    return output


def _study(db: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> dict[str, Path]:
    """Four classes that differ only by colour (the demo's disks), 8 train and 4 val images each
    at 32px: a head on random features learns them in a few steps with a sane learning rate, and
    not at all with lr=1e-7."""
    out = tmp_path_factory.mktemp("colour_data")
    paths = make_demo_dataset(out, per_class={"train": 8, "val": 4}, size=32)
    for split in ("train", "val"):
        lines = paths[split].read_text().splitlines()
        paths[split].write_text("\n".join(x for x in lines if int(x.split()[-1]) < 4) + "\n")
    names = paths["classes"].read_text().splitlines()[:4]
    paths["classes"].write_text("\n".join(names) + "\n")
    return paths


@pytest.mark.slow
def test_median_pruner_stops_poor_trials_before_their_last_epoch(colour_data, tmp_path):
    db, sweep_dir, epochs = tmp_path / "study.db", tmp_path / "sweep", 3
    # Six trials queued in the study (Optuna's enqueue_trial), so the arms are known: two
    # learning rates that learn the colours, one that cannot move the head from its start.
    queued = [3e-3, 1e-2, 1e-7, 3e-3, 1e-7, 1e-2]
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{db}", direction="maximize")
    for lr in queued:
        study.enqueue_trial({"model.optimizer.lr": lr})
    output = _finish(_search(
        ["~hydra.sweeper.params", "model.optimizer.lr=choice(1e-7,3e-3,1e-2)",
         "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner.n_startup_trials=2",
         f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweeper.study_name={STUDY}",
         f"trainer.max_epochs={epochs}", "data.batch_size=8", "model.num_classes=4",
         "logger=mlflow", *_tiny(colour_data), f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path))

    trials = _study(db).trials
    assert [t.number for t in trials] == list(range(6))
    assert [t.params["model.optimizer.lr"] for t in trials] == queued
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and len(pruned) + len(complete) == 6, [t.state for t in trials]
    for trial in pruned:  # reported each epoch until the pruner stopped it
        last_step = max(trial.intermediate_values)
        assert sorted(trial.intermediate_values) == list(range(last_step + 1))
        metrics = _metrics(sweep_dir / str(trial.number))  # job k is trial k
        assert metrics["status"] == "pruned" and metrics["test/acc"] is None
        assert metrics["epochs"] == last_step + 1 and metrics["max_epochs"] == epochs
        assert f"optuna trial {trial.number} pruned after epoch {last_step + 1}" in output
    for trial in complete:  # the control: trials the pruner let go ran every epoch
        assert sorted(trial.intermediate_values) == list(range(epochs))
        metrics = _metrics(sweep_dir / str(trial.number))
        assert metrics["status"] == "completed" and metrics["epochs"] == epochs
        assert trial.value == pytest.approx(metrics["val/acc_best"])
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()))
    # Pruning saved epochs: the hopeless arm, at least, stopped before its last epoch.
    early = [t for t in pruned if max(t.intermediate_values) < epochs - 1]
    assert any(t.params["model.optimizer.lr"] == 1e-7 for t in early), early

    # The sweep summary knows pruned trials ended as they should (the search exited 0).
    jobs = {job.job: job for job in summarize(sweep_dir)}
    assert {n: j.status for n, j in jobs.items()} == {
        t.number: "pruned" if t.state == TrialState.PRUNED else "completed" for t in trials}
    markdown = (sweep_dir / "summary.md").read_text()
    assert f"6 jobs: {len(complete)} completed, {len(pruned)} pruned, 0 failed" in markdown
    assert f"pruned after epoch {max(early[0].intermediate_values) + 1} of {epochs}" in markdown
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value for t in complete))
    assert results["trials"]["pruned"] == len(pruned)

    # Each trial is one MLflow run; a pruned one says so and has its shorter val/acc curve.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    by_dir = {run.data.tags["run_dir"]: run for run in runs}
    assert sorted(by_dir) == sorted(str(sweep_dir / str(t.number)) for t in trials)
    for trial in trials:
        run = by_dir[str(sweep_dir / str(trial.number))]
        assert run.data.tags["status"] == ("pruned" if trial in pruned else "completed")
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)])


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_rerun_resumes_it(tiny_data, tmp_path):
    db = tmp_path / "shared.db"
    common = [f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweeper.study_name={STUDY}",
              "trainer.max_epochs=1", *_tiny(tiny_data)]
    # Two workers at once on the full search space of conf/hparams_search/optuna.yaml.
    workers = [_search(["hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path / f'w{i}'}",
                        *common], cwd=tmp_path) for i in range(2)]
    outputs = [_finish(worker) for worker in workers]

    trials = _study(db).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == [0, 1, 2, 3]
    # Any other trial was asked by both workers at the same moment and dropped before it ran.
    assert all(t.state == TrialState.FAIL and not t.user_attrs for t in trials
               if t not in complete)
    ran = [{int(p.name) for p in (tmp_path / f"w{i}").iterdir() if (p / ".hydra").is_dir()}
           for i in range(2)]
    assert ran[0] and ran[1] and not ran[0] & ran[1], ran  # both worked, no trial twice
    assert ran[0] | ran[1] == {0, 1, 2, 3}
    for trial in complete:
        job_dir = tmp_path / f"w{0 if trial.number in ran[0] else 1}" / str(trial.number)
        chosen = dict(o.split("=", 1) for o in yaml.safe_load(
            (job_dir / ".hydra" / "overrides.yaml").read_text()))
        params = trial.params
        assert 1e-5 <= params["model.optimizer.lr"] <= 1e-1
        assert 1e-6 <= params["model.optimizer.weight_decay"] <= 1e-2
        assert params["model.optimizer._target_"] in ("torch.optim.Adam", "torch.optim.AdamW")
        assert params["data.batch_size"] in (16, 32, 64, 128)
        assert params["augment"] in ("seed", "none")
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
        assert config["model"]["optimizer"]["lr"] == params["model.optimizer.lr"]
        assert config["data"]["batch_size"] == params["data.batch_size"]
        assert config["augment"]["_target_"] == {
            "seed": "foodnet.data.augment.SeedAugment",
            "none": "foodnet.data.augment.NoAugment"}[params["augment"]]
        assert float(chosen["model.optimizer.lr"]) == params["model.optimizer.lr"]
        assert trial.value == pytest.approx(_metrics(job_dir)["val/acc_best"])
    assert sum("trials started before this worker" in out for out in outputs) == 2

    # A larger budget, and a worker stopped by SIGTERM (as SLURM preempts) while it trains
    # trial 4: the trial is failed and queued again with its parameters, and counts for nothing.
    worker = _search(["hydra.sweeper.n_trials=5", f"hydra.sweep.dir={tmp_path / 'w0'}",
                      *common, "trainer.max_epochs=3"], cwd=tmp_path)
    in_trial_4 = False
    for line in worker.stdout:
        in_trial_4 = in_trial_4 or line.startswith(f"run dir: {tmp_path / 'w0' / '4'}")
        if in_trial_4 and line.startswith("epoch 1/3"):
            worker.send_signal(signal.SIGTERM)
            break
    output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "trial 4 interrupted: queued again with the same parameters" in output
    interrupted, queued = _study(db).trials[4:]
    assert (interrupted.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert queued.params == interrupted.params
    assert _metrics(tmp_path / "w0" / "4")["status"] == "interrupted"

    # Run the command again: the study resumes where it stopped, trial 4's parameters first.
    output = _finish(_search(["hydra.sweeper.n_trials=5", f"hydra.sweep.dir={tmp_path / 'w0'}",
                              *common, "trainer.max_epochs=3"], cwd=tmp_path))
    assert f"Optuna study {STUDY} in sqlite:///{db}: 4 of 5 trials started" in output
    trials = _study(db).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, 1, 2, 3, 5] and len(trials) == 6
    assert trials[5].params == interrupted.params
    assert _metrics(tmp_path / "w0" / "5")["status"] == "completed"
    summary = (tmp_path / "w0" / "summary.md").read_text()  # worker 0's trials, 4 and 5
    assert f"{len(ran[0]) + 2} jobs: {len(ran[0]) + 1} completed, 1 interrupted, 0 failed" \
        in summary
    results = yaml.safe_load((tmp_path / "w0" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value for t in complete))


def _sweeper(db: Path, n_trials: int, heartbeat_interval: int | None = 60):
    from hydra_plugins.foodnet_optuna.optuna_sweeper import OptunaSweeper, search_space

    sweeper = OptunaSweeper(sampler=optuna.samplers.RandomSampler(seed=0), pruner=None,
                            direction="maximize", storage=f"sqlite:///{db}", study_name=STUDY,
                            n_trials=n_trials, n_jobs=1, heartbeat_interval=heartbeat_interval)
    space, _ = search_space(["model.optimizer.lr=tag(log, interval(1e-5, 1e-1))"])
    return sweeper, sweeper.open_study(), space


def test_an_interrupted_trial_is_queued_again_and_does_not_count(tmp_path):
    sweeper, study, space = _sweeper(tmp_path / "study.db", n_trials=2)
    [first] = sweeper.ask(study, space, 1)
    sweeper.requeue(study, [first])  # what sweep() does when the launch raises (Ctrl-C, SIGTERM)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING] and sweeper.started(study) == 0
    [retry] = sweeper.ask(study, space, 1)
    assert retry.number == 1 and retry.params == first.params
    # A finished trial is never re-queued: the job ended it (e.g. pruned), nothing was lost.
    study.tell(retry, 0.5)
    sweeper.requeue(study, [retry])
    assert len(study.trials) == 2 and sweeper.started(study) == 1


def test_a_dead_workers_trial_goes_stale_and_is_run_again(tmp_path):
    # Heartbeats every second, so a trial nobody beats for is stale after 2 s.
    sweeper, study, space = _sweeper(tmp_path / "study.db", n_trials=1, heartbeat_interval=1)
    [orphan] = sweeper.ask(study, space, 1)  # its worker "dies": no heartbeat, no tell
    assert sweeper.ask(study, space, 1) == []  # still running as far as anyone knows
    time.sleep(3)
    [retry] = sweeper.ask(study, space, 1)
    assert study.trials[orphan.number].state == TrialState.FAIL
    assert retry.params == orphan.params and sweeper.started(study) == 1


def test_a_failed_job_is_a_failed_trial_with_its_error_and_counts(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    sweeper, study, space = _sweeper(tmp_path / "study.db", n_trials=3)
    done, failed, crashed = sweeper.ask(study, space, 3)
    job_dir = tmp_path / "1"  # what foodnet.train.record_failure leaves
    job_dir.mkdir()
    (job_dir / "metrics.json").write_text(json.dumps(
        {"status": "failed", "error": "data.batch_size=0 must be positive"}))
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
    sweeper.tell(study, done, JobReturn(status=JobStatus.COMPLETED, _return_value=0.25))
    sweeper.tell(study, failed, JobReturn(status=JobStatus.COMPLETED, _return_value=float("-inf"),
                                          hydra_cfg=hydra_cfg))
    sweeper.tell(study, crashed, JobReturn(status=JobStatus.FAILED,
                                           _return_value=RuntimeError("out of memory")))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 0.25
    assert trials[1].user_attrs["error"] == "data.batch_size=0 must be positive"
    assert trials[2].user_attrs["error"] == "RuntimeError: out of memory"
    assert sweeper.started(study) == 3 and sweeper.ask(study, space, 1) == []  # they count


def _search_of(overrides: list[str], arguments: list[str]):
    """The sweeper's search space as `foodnet.train hparams_search=optuna OVERRIDES ARGUMENTS`
    starts it: the config composed with the fixed overrides, the sweep's arguments as given."""
    from hydra import compose, initialize_config_dir

    from hydra_plugins.foodnet_optuna.optuna_sweeper import OptunaSweeper

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna", *overrides],
                      return_hydra_config=True)
    sweeper = OptunaSweeper(sampler=None, pruner=None, direction="maximize", storage=None,
                            study_name=STUDY, n_trials=1, n_jobs=1, heartbeat_interval=None,
                            params=cfg.hydra.sweeper.params)
    sweeper.config = cfg
    return sweeper.search(arguments)


def test_a_searched_key_that_changes_nothing_is_refused_with_the_fix():
    from foodnet.errors import ConfigError

    # Cached features of the eval transform (one view): no trial applies an augmentation policy.
    for overrides in (["cache_features=true"], ["experiment=demo"]):
        with pytest.raises(ConfigError) as err:
            _search_of(overrides, [])
        message = str(err.value)
        assert message.startswith("hydra.sweeper.params searches augment, which changes "
                                  "nothing in any trial: cache_features=true with "
                                  "cache_views=1 ") and "\n" not in message
        assert "augment=none on the command line" in message and "cache_views=K>1" in message
    # The controls: the same space where augment does something in some trial, or not searched.
    space, _ = _search_of(["cache_features=false"], [])  # the images are augmented
    assert "augment" in space
    space, _ = _search_of(["cache_features=true"], ["cache_views=3"])  # augmented views
    assert "augment" in space
    space, _ = _search_of(["cache_features=true"], ["cache_features=choice(true,false)"])
    assert {"augment", "cache_features"} <= set(space)
    space, fixed = _search_of(["cache_features=true"], ["augment=none"])  # the fix it names
    assert "augment" not in space and "augment=none" in fixed


def test_a_sweep_of_a_key_that_changes_nothing_stops_at_start(tiny_data, tmp_path):
    db = tmp_path / "study.db"
    common = ["hydra.sweeper.n_trials=1", f"hydra.sweeper.storage=sqlite:///{db}",
              f"hydra.sweeper.study_name={STUDY}", "trainer.max_epochs=1", *_tiny(tiny_data)]
    refused = _search([*common, "cache_features=true", f"hydra.sweep.dir={tmp_path / 'a'}"],
                      cwd=tmp_path)
    output = refused.communicate(timeout=300)[0]
    assert refused.returncode == 2, output[-3000:]
    assert "error: hydra.sweeper.params searches augment, which changes nothing in any " \
           "trial: cache_features=true with cache_views=1" in output
    assert "Traceback" not in output and not db.exists() and not (tmp_path / "a").exists()
    # The control: the same search space on images, where augment is applied, runs.
    _finish(_search([*common, "cache_features=false", f"hydra.sweep.dir={tmp_path / 'b'}"],
                    cwd=tmp_path))
    [trial] = _study(db).trials
    assert trial.state == TrialState.COMPLETE and trial.params["augment"] in ("seed", "none")


def test_optuna_search_configs_keep_the_released_plugins_names():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.foodnet_optuna.optuna_sweeper.OptunaSweeper"
    for name in ("n_trials", "n_jobs", "storage", "study_name", "direction", "sampler",
                 "params"):
        assert name in sweeper, name
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert cfg.callbacks.optuna_pruning._target_ == \
        "foodnet.training.callbacks.pruning.OptunaPruning"

"""Hydra multirun: per-job dirs, summary.csv/summary.md, a failing job, submitit, SLURM.
(Optuna searches: test_optuna.py.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, subprocess_env, tiny_overrides

from foodnet.sweep import summarize


def _env() -> dict[str, str]:
    env = subprocess_env()
    # An absolute path: jobs run from tmp dirs, and submitit's job processes inherit it.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def _tiny(data: dict[str, Path]) -> list[str]:
    """Tiny-run overrides without data.batch_size, which the tests below sweep or search."""
    return tiny_overrides(data, **{"data.batch_size": None})


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "foodnet.train", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def _summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_multirun_summarises_every_job_and_survives_a_failing_one(tiny_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = _run(["-m", "model.optimizer.lr=1e-3,1e-2", "data.batch_size=16,0", *_tiny(tiny_data),
                   f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    # Every job ran; the exit status still says that some failed.
    assert result.returncode == 1, result.stderr[-3000:]
    rows = _summary(sweep_dir)
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert [row["status"] for row in rows] == ["completed", "failed", "completed", "failed"]
    for row in rows:
        job_dir = Path(row["run_dir"])
        assert job_dir.parent == sweep_dir
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["status"] == row["status"]
        assert f"model.optimizer.lr={'0.001' if row['job'] in '01' else '0.01'}" in row["overrides"]
        if row["status"] == "completed":
            assert float(row["val/acc_best"]) == round(metrics["val/acc_best"], 4)
            assert "data.batch_size=16" in row["overrides"] and not row["error"]
            assert list((job_dir / "tensorboard").glob("events.out.tfevents.*"))
        else:
            assert row["val/acc_best"] == ""
            assert row["error"] == "data.batch_size=0: expected a positive integer"
    assert "error: data.batch_size=0: expected a positive integer" in result.stderr

    completed = [row for row in rows if row["status"] == "completed"]
    best = max(completed, key=lambda row: float(row["val/acc_best"]))
    assert f"best job {best['job']}: val/acc_best {best['val/acc_best']}" in result.stdout
    markdown = (sweep_dir / "summary.md").read_text()
    assert f"**Best: job {best['job']}**" in markdown
    assert "| job | status | val/acc_best | test/acc | model.optimizer.lr | data.batch_size |" \
        in markdown
    assert "- job 1 (failed" in markdown and "- job 3 (failed" in markdown


def test_submitit_local_launcher_runs_the_job_in_its_own_process(tiny_data, tmp_path):
    sweep_dir = tmp_path / "submitit"
    result = _run(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                   "model.optimizer.lr=1e-3", "data.batch_size=16", *_tiny(tiny_data),
                   f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    rows = _summary(sweep_dir)
    assert [row["status"] for row in rows] == ["completed"]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    # The job's own output went to submitit's log: it ran in a process submitit started.
    logs = list((sweep_dir / ".submitit").glob("*/*_0_log.out"))
    assert logs and f"run dir: {sweep_dir / '0'}" in logs[0].read_text()


def test_slurm_launcher_config_renders_an_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               f"hydra.sweep.dir={tmp_path}"])
    launcher = cfg.hydra.launcher
    assert cfg.model.arch == "resnet152"  # the launcher changes nothing but where jobs run
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.submitit_folder == f"{tmp_path}/.submitit/%j"
    # What the launcher hands to submitit (same mapping as BaseSubmititLauncher.launch); submitit
    # checks that "srun" exists before it writes a script, so give it a stand-in.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(launcher, resolve=False)
    for key in ("_target_", "submitit_folder", "max_num_timeout"):
        params.pop(key)
    params["name"] = "train"
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m foodnet.train", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--time=240", "--ntasks-per-node=1", "--job-name=train"):
        assert f"#SBATCH {line}\n" in script


def test_summary_reports_a_job_that_left_no_metrics(tmp_path):
    for num, metrics in ((0, {"status": "completed", "val/acc_best": 0.5, "test/acc": None}),
                         (1, None)):
        hydra_dir = tmp_path / str(num) / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(f"- model.optimizer.lr={num + 1}e-3\n")
        (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        if metrics:
            (tmp_path / str(num) / "metrics.json").write_text(json.dumps(metrics))
    jobs = summarize(tmp_path)
    assert [(j.job, j.status) for j in jobs] == [(0, "completed"), (1, "unfinished")]
    assert "killed or crashed" in jobs[1].error
    rows = _summary(tmp_path)
    assert rows[0]["val/acc_best"] == "0.5000" and rows[1]["status"] == "unfinished"
    assert "**Best: job 0**, val/acc_best 0.5000, `model.optimizer.lr=1e-3`" in \
        (tmp_path / "summary.md").read_text()


def test_the_summary_shows_swept_floats_to_4_significant_digits(tmp_path):
    lrs = ("0.015238363140598041", "0.0031", "2e-3")
    for num, lr in enumerate(lrs):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- model.optimizer.lr={lr}\n- trainer.max_epochs=12\n- data.augment=seed\n")
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (job / "metrics.json").write_text(json.dumps(
            {"status": "completed", "val/acc_best": 0.5 + num / 10 if num != 2 else 0.1,
             "test/acc": None, "epochs": 12, "max_epochs": 12}))
    summarize(tmp_path)
    markdown = (tmp_path / "summary.md").read_text()
    assert "0.015238363140598041" not in markdown
    assert "**Best: job 1**, val/acc_best 0.6000, `model.optimizer.lr=0.0031`" in markdown
    assert "| 0 | completed | 0.5000 |  | 0.01524 |" in markdown
    assert "| 2 | completed | 0.1000 |  | 2e-3 |" in markdown  # as written: no shorter
    # The control: the CSV keeps the exact value, to run the job again.
    assert "model.optimizer.lr=0.015238363140598041" in _summary(tmp_path)[0]["overrides"]

"""Experiment tracking: logger=mlflow / many / csv, read back from what the runs wrote."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, compose_train, subprocess_env, tiny_overrides


@pytest.mark.slow
def test_multirun_jobs_are_mlflow_runs_of_one_experiment(tiny_data, tmp_path):
    from mlflow import MlflowClient

    sweep_dir = tmp_path / "sweep"
    args = ["-m", "logger=many", "model.optimizer.lr=1e-3,1e-2", f"hydra.sweep.dir={sweep_dir}",
            *tiny_overrides(tiny_data, **{"data.test_manifest": tiny_data["test"],
                                          "trainer.max_epochs": 2})]
    # From tmp_path: the default tracking URI is sqlite:///outputs/mlflow.db, under the cwd.
    result = subprocess.run([sys.executable, "-m", "foodnet.train", *args], cwd=tmp_path,
                            env=subprocess_env(), capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("MLflow run ") == 2

    database = tmp_path / "outputs" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("train")
    runs = client.search_runs([experiment.experiment_id])
    by_dir = {run.data.tags["run_dir"]: run for run in runs}
    assert sorted(by_dir) == [str(sweep_dir / "0"), str(sweep_dir / "1")]  # one run per job
    # Named after their folders (MLflow's random names, from the seeded `random`, would repeat).
    assert {run.info.run_name for run in runs} == {"sweep/0", "sweep/1"}
    for job, lr in (("0", "0.001"), ("1", "0.01")):
        job_dir = sweep_dir / job
        run = by_dir[str(job_dir)]
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"

        # Params: the composed config, flattened under the override names.
        params = run.data.params
        assert params["model.optimizer.lr"] == lr
        assert params["model.arch"] == "resnet18"
        assert params["model.preprocessing.image_size"] == "32"
        assert params["trainer.max_epochs"] == "2" and params["seed"] == "42"
        assert params["logger.mlflow.tracking_uri"] == "sqlite:///outputs/mlflow.db"
        assert "class_names" not in params and "arch" not in params  # not the module's hparams

        # Metrics: the names foodnet logs everywhere, with the values metrics.json has.
        assert run.data.metrics["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
        assert run.data.metrics["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"])
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert len(history) == metrics["epochs"] == 2
        assert max(m.value for m in history) == pytest.approx(metrics["val/acc_best"])
        assert {"train/loss", "val/loss", "val/acc_top5", "lr-Adam"} <= set(run.data.metrics)

        # Artifacts: metrics.json, the best checkpoint and the best epoch's confusion matrix.
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / f"a{job}")))
        assert json.loads((local / "metrics.json").read_text()) == metrics
        best = Path(metrics["best_checkpoint"])
        assert (local / "checkpoints" / best.name).read_bytes() == best.read_bytes()
        figure = local / "val" / "confusion_matrix.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # logger=many: TensorBoard wrote its events too.
        assert list((job_dir / "tensorboard").glob("events.out.tfevents.*"))

    # `make mlflow`'s command, from the same folder, serves these runs on 127.0.0.1.
    recipe = (REPO / "Makefile").read_text().split("\nmlflow:", 1)[1].splitlines()[1].split()
    assert recipe[:2] == ["$(VENV)/bin/mlflow", "ui"] and recipe[-2:] == ["--port", "5000"]
    with socket.socket() as probe:  # a free port, not the 5000 a developer may be using
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Its own process group: `mlflow ui` runs the web server as a child process.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", *recipe[1:-1], str(port)],
                              cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = (f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?"
               f"run_id={by_dir[str(sweep_dir / '0')].info.run_id}")
        for _ in range(120):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    served = json.load(response)["run"]
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                time.sleep(1)
        else:
            pytest.fail("mlflow ui did not answer within 2 minutes")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert served["info"]["run_id"] == by_dir[str(sweep_dir / "0")].info.run_id


def test_csv_logger_writes_every_epoch(tiny_data, tmp_path):
    from foodnet.train import train

    overrides = tiny_overrides(tiny_data, **{"logger": "csv", "trainer.max_epochs": 2})
    metrics = train(compose_train(overrides, run_dir=tmp_path))
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["val/acc"]]
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert max(float(row["val/acc_best"]) for row in rows) == pytest.approx(
        metrics["val/acc_best"])
    assert not (tmp_path / "tensorboard").exists()  # csv alone: no TensorBoard logger

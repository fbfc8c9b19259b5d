"""MLflow runs (logger=mlflow or logger=many, docs/tracking.md): the composed config as params,
the outcome as a tag, metrics.json and the best checkpoint as artifacts. (The run-folder tag is
set in conf/logger/mlflow.yaml, so a run shows it while it trains.)

Metrics need nothing here: Lightning's MLFlowLogger receives every `self.log` under the names
TensorBoard and metrics.json use. The confusion-matrix figure is logged by its callback
(training/callbacks/dashboards.py, ConfusionMatrixImage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger


def mlflow_loggers(loggers: Iterable[Logger]) -> list[MLFlowLogger]:
    return [logger for logger in loggers if isinstance(logger, MLFlowLogger)]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"optimizer": {"lr": 1e-3}}} -> {"model.optimizer.lr": 1e-3}: override names."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def default_run_name(logger_config: Mapping[str, Any], run_dir: Path) -> dict[str, str]:
    """`run_name` for an MLflow logger whose config gives none: the run folder's last two parts
    (`train/2026-12-01_10-00-00`; a multirun job: `<sweep time>/<job>`). MLflow's own random
    names come from Python's `random`, which the run has just seeded: every job of a sweep would
    get the same one."""
    if str(logger_config.get("_target_", "")).endswith("MLFlowLogger") and \
            logger_config.get("run_name") is None:
        return {"run_name": f"{run_dir.parent.name}/{run_dir.name}"}
    return {}


def log_params(loggers: Iterable[Logger], config: Mapping[str, Any]) -> None:
    """Log a (resolved, plain) config as flat params to every MLflow logger."""
    params = flatten(config)
    for logger in mlflow_loggers(loggers):
        # Lightning flattens nested dicts with "/"; a flat dict keeps the dotted names.
        logger.log_hyperparams(params)


def log_outcome(loggers: Iterable[Logger], status: str,
                artifacts: Mapping[str, Path | str | None]) -> None:
    """Tag every MLflow run with the run's status (completed, pruned); log files as artifacts.

    `artifacts` maps an artifact folder ("" for the top) to a file; missing files are skipped.
    """
    for logger in mlflow_loggers(loggers):
        client, run_id = logger.experiment, logger.run_id
        client.set_tag(run_id, "status", status)
        for folder, path in artifacts.items():
            if path is not None and Path(path).is_file():
                client.log_artifact(run_id, str(path), artifact_path=folder or None)

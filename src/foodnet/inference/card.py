"""The model card: what a model is and how it was trained, as plain JSON values.

A checkpoint knows its network, the weights its backbone started from, classes, preprocessing
and augmentation (hyper_parameters), its epoch, and the best val/acc of its run (the state of the
ModelCheckpoint that monitors val/acc). Its run folder (checkpoints/../.hydra/config.yaml, written
by foodnet.train) says what it was trained from; its model.weights (DEFAULT, say) stands in for
the weights' name only where the checkpoint records none.
An export copies the card of its checkpoint into its sidecar, so the card travels with it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from foodnet.inference.export_format import INFO_KEYS, read_sidecar, sidecar_path
from foodnet.models.checkpoint import model_info, read_checkpoint
from foodnet.reports.metrics import VAL_ACC, VAL_ACC_BEST


def _best_val_acc(checkpoint: dict, run_dir: Path) -> float | None:
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) \
                and state.get("monitor") == VAL_ACC and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    metrics = run_dir / "metrics.json"  # a checkpoint saved without ModelCheckpoint's state
    try:
        value = json.loads(metrics.read_text(encoding="utf-8")).get(VAL_ACC_BEST)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _training_config(run_dir: Path) -> dict:
    """What the run was trained from, when its Hydra config sits in the run folder."""
    path = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    found = {"train_manifest": data.get("train_manifest"),
             "val_manifest": data.get("val_manifest"),
             "weights": model.get("weights"),
             "max_epochs": (cfg.get("trainer") or {}).get("max_epochs")}
    # Unresolved interpolations (${...}) say nothing to a reader of the card.
    return {key: value for key, value in found.items()
            if not (isinstance(value, str) and "${" in value)}


def checkpoint_card(path: str | Path, checkpoint: dict) -> dict:
    """The card of a checkpoint file (read with foodnet.models.checkpoint.read_checkpoint)."""
    path = Path(path)
    info = model_info(checkpoint)
    run_dir = path.resolve().parent.parent  # RUN/checkpoints/FILE.ckpt
    saved = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    # Epochs whose training finished (Lightning's `epoch` is the index of the one running).
    progress = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress")
    epochs = progress.get("total", {}).get("processed") if isinstance(progress, dict) else None
    in_run = (run_dir / ".hydra").is_dir()
    hparams = checkpoint["hyper_parameters"]
    card = {
        # last.ckpt says little on its own: a run's checkpoint is named after its run folder.
        "name": f"{run_dir.name}/{path.stem}" if in_run else path.stem,
        "arch": info.arch,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "preprocessing": info.preprocessing.to_dict(),
        # The train-time augmentation policy (foodnet.data.augment), None where not recorded.
        "augment": hparams.get("augment"),
        "finetune": (hparams.get("finetune") or {}).get("name"),
        # The decay of the weights' moving average it holds (ema=true), None: the raw weights.
        "ema": hparams.get("ema"),
        VAL_ACC_BEST: _best_val_acc(checkpoint, run_dir),
        "epochs": epochs if isinstance(epochs, int) else None,
        "trained_at": saved.isoformat(timespec="seconds"),
        "checkpoint": str(path),
        "run_dir": str(run_dir) if in_run else None,
        **_training_config(run_dir),
    }
    if "weights" in hparams:  # the weights loaded, by name; None: random initialisation
        card["weights"] = hparams["weights"]
    return card


def model_card(path: str | Path) -> dict:
    """The card of anything open_classifier opens: a checkpoint, or an export with its sidecar
    (whose "card" export copied from the checkpoint; older sidecars give the network only)."""
    path = Path(path)
    if sidecar_path(path).is_file():
        meta = read_sidecar(path)
        card = dict(meta.get("card") or {key: meta[key] for key in INFO_KEYS})
        card.update(format=meta["format"], file=str(path))
        return card
    card = checkpoint_card(path, read_checkpoint(path))
    card.update(format="checkpoint", file=str(path))
    return card

"""Train a classifier: `python -m foodnet.train [hydra overrides]`."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from foodnet.checkpoint import CheckpointError
from foodnet.data import FoodDataModule
from foodnet.manifest import ManifestError
from foodnet.model import WeightsError, create_model
from foodnet.module import FoodClassifier
from foodnet.preflight import check_settings
from foodnet.resume import check_resume, resolve_ckpt_path
from foodnet.safety import NonFiniteLossError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Errors that are the user's to fix: print the message, not a traceback.
USER_ERRORS = (ManifestError, WeightsError, CheckpointError, NonFiniteLossError, ValueError,
               FileNotFoundError)


def build(cfg: DictConfig) -> tuple[FoodDataModule, FoodClassifier, L.Trainer]:
    """Instantiate the datamodule, the LightningModule and the Trainer from a composed config."""
    datamodule: FoodDataModule = instantiate(cfg.data)
    net = create_model(cfg.model.arch, cfg.model.num_classes, cfg.model.weights, cfg.model.freeze)
    module = FoodClassifier(net, optimizer=instantiate(cfg.model.optimizer),
                            class_names=datamodule.class_names, image_size=cfg.data.image_size)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint when a test manifest is given, write metrics.json."""
    run_dir = Path(cfg.paths.output_dir)
    print(f"run dir: {run_dir}", flush=True)
    check_settings(cfg.model.arch, cfg.model.weights, cfg.model.optimizer.get("lr"))
    L.seed_everything(cfg.seed, workers=True)
    try:
        datamodule, module, trainer = build(cfg)
    except InstantiationException as err:  # Hydra wraps what the built classes raise
        if isinstance(err.__cause__, USER_ERRORS):
            raise err.__cause__ from None
        raise
    # Resume: vet the checkpoint (weights_only, same model, epochs left) before Lightning loads it.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), trainer.checkpoint_callback)
    if ckpt_path is not None:
        check_resume(ckpt_path, cfg.model.arch, cfg.model.num_classes, trainer.max_epochs)
        print(f"resuming from {ckpt_path}", flush=True)
    datamodule.setup("fit")  # read the manifests now: a bad label stops the run before training
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    test_acc = None
    if cfg.data.get("test_manifest"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None,
                               weights_only=True)
        test_acc = float(results[0]["test/acc"])
    best_score = checkpoint.best_model_score if checkpoint else None
    metrics = {
        "best_val_acc": float(best_score) if best_score is not None else None,
        "test_acc": test_acc,
        "epochs": trainer.current_epoch,
        "run_dir": str(run_dir),
        "best_checkpoint": best_path or None,
        "last_checkpoint": str(Path(checkpoint.dirpath) / "last.ckpt") if checkpoint else None,
    }
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics, indent=2), flush=True)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except SIGTERMException:  # Lightning's handler, outside training (foodnet.safety.Preemption)
        raise SystemExit(128 + signal.SIGTERM) from None
    # Returned to Hydra so that sweepers can optimise it.
    return metrics["best_val_acc"]


if __name__ == "__main__":
    main()

"""Train a classifier: `python -m foodnet.train [hydra overrides]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BaseFinetuning
from omegaconf import DictConfig

from foodnet.data import FoodDataModule
from foodnet.features import FeatureCache, attach_features
from foodnet.manifest import ManifestError
from foodnet.model import WeightsError, create_model
from foodnet.module import FoodClassifier

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Errors that are the user's to fix: print the message, not a traceback.
USER_ERRORS = (ManifestError, WeightsError, ValueError, FileNotFoundError)


def build(cfg: DictConfig) -> tuple[FoodDataModule, FoodClassifier, L.Trainer]:
    """Instantiate the datamodule, the LightningModule and the Trainer from a composed config."""
    datamodule: FoodDataModule = instantiate(cfg.data)
    net = create_model(cfg.model.arch, cfg.model.num_classes, cfg.model.weights, cfg.model.freeze)
    module = FoodClassifier(net, optimizer=instantiate(cfg.model.optimizer),
                            class_names=datamodule.class_names, image_size=cfg.data.image_size,
                            channels_last=cfg.get("channels_last", False))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def check_cache_features(cfg: DictConfig) -> None:
    """cache_features needs a backbone that never changes; say so before anything is built."""
    if cfg.get("cache_features") and not cfg.model.freeze:
        raise ValueError("cache_features=true needs a frozen backbone, but model.freeze=false: "
                         "the backbone's features change as it trains. Set model.freeze=true, "
                         "or cache_features=false to train the whole network")


def validates_everything(trainer: L.Trainer) -> bool:
    """False for runs that validate a few batches only (debug=fast, limit_val_batches), which
    would pay for extracting the whole validation set up front."""
    limit = trainer.limit_val_batches  # an int counts batches, a float is a fraction
    return not trainer.fast_dev_run and isinstance(limit, float) and limit == 1.0


def use_backbone_features(cfg: DictConfig, datamodule: FoodDataModule, module: FoodClassifier,
                          trainer: L.Trainer) -> None:
    """Compute frozen-backbone features once instead of every epoch (foodnet.features).

    cache_features=true: train, val and test come from the on-disk cache. Otherwise, while the
    backbone stays frozen for the whole run, the validation features are computed once in memory.
    """
    unfreezes = any(isinstance(c, BaseFinetuning) for c in trainer.callbacks)
    frozen = module.net.backbone_frozen and not unfreezes
    if cfg.get("cache_features"):
        if not frozen:
            raise ValueError("cache_features=true needs a backbone that stays frozen, but a "
                             "finetuning callback unfreezes it; set cache_features=false")
        splits = [s for s in ("train", "val", "test") if cfg.data.get(f"{s}_manifest")]
        cache = FeatureCache(cfg.cache_dir)
    elif frozen and cfg.data.get("val_manifest") and validates_everything(trainer):
        splits, cache = ["val"], None
    else:
        return
    attach_features(datamodule, module.net, splits, cache=cache,
                    train_views=cfg.get("cache_views", 1), seed=cfg.seed,
                    device=trainer.strategy.root_device, precision=str(trainer.precision),
                    forward_context=trainer.precision_plugin.forward_context,
                    channels_last=module.channels_last)


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint when a test manifest is given, write metrics.json."""
    run_dir = Path(cfg.paths.output_dir)
    print(f"run dir: {run_dir}", flush=True)
    check_cache_features(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    use_backbone_features(cfg, datamodule, module, trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    test_acc = None
    if cfg.data.get("test_manifest"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None)
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
    # Returned to Hydra so that sweepers can optimise it.
    return metrics["best_val_acc"]


if __name__ == "__main__":
    main()

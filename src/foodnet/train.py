"""Train a classifier: `python -m foodnet.train [hydra overrides]`."""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BaseFinetuning, LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from foodnet.checkpoint import CheckpointError
from foodnet.data import FoodDataModule
from foodnet.features import FeatureCache, attach_features
from foodnet.finetune import create_finetuning
from foodnet.images import ImageLoadError
from foodnet.manifest import ManifestError
from foodnet.model import WeightsError, create_model
from foodnet.module import FoodClassifier, balanced_class_weights
from foodnet.preflight import check_settings
from foodnet.resume import check_resume, resolve_ckpt_path
from foodnet.safety import NonFiniteLossError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Errors that are the user's to fix: print the message, not a traceback.
USER_ERRORS = (ManifestError, WeightsError, CheckpointError, NonFiniteLossError, ImageLoadError,
               ValueError, FileNotFoundError)


def build(cfg: DictConfig) -> tuple[FoodDataModule, FoodClassifier, L.Trainer]:
    """Instantiate the datamodule, the LightningModule and the Trainer from a composed config."""
    datamodule: FoodDataModule = instantiate(cfg.data)
    finetune_options = OmegaConf.to_container(cfg.finetune, resolve=True)
    finetuning = create_finetuning(finetune_options.pop("strategy"), cfg.model.freeze,
                                   **finetune_options)
    net = create_model(cfg.model.arch, cfg.model.num_classes, cfg.model.weights, cfg.model.freeze)
    module = FoodClassifier(net, optimizer=instantiate(cfg.model.optimizer),
                            class_names=datamodule.class_names, image_size=cfg.data.image_size,
                            scheduler=instantiate(cfg.scheduler.schedule),
                            scheduler_interval=cfg.scheduler.interval,
                            label_smoothing=cfg.model.label_smoothing,
                            class_weights=_class_weights(cfg.model.class_weights, datamodule,
                                                         cfg.model.num_classes),
                            channels_last=cfg.get("channels_last", False))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if finetuning is not None:
        callbacks.append(finetuning)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    if not loggers:  # `~logger`: the learning-rate monitor has nowhere to write and would refuse
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def _class_weights(option, datamodule: FoodDataModule, num_classes: int) -> list[float] | None:
    """model.class_weights: null, "balanced" (from the train labels) or explicit weights."""
    if option is None:
        return None
    if option == "balanced":
        datamodule.setup("fit")
        return balanced_class_weights(datamodule.datasets["train"].labels, num_classes)
    if isinstance(option, str):
        raise ValueError(f"model.class_weights={option} is unknown: use null, balanced or a "
                         f"list of {num_classes} floats")
    return [float(w) for w in option]


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
    check_settings(cfg.model.arch, cfg.model.weights, cfg.model.optimizer.get("lr"))
    check_cache_features(cfg)
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
    use_backbone_features(cfg, datamodule, module, trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    test_acc, test_extra = None, {}
    if cfg.data.get("test_manifest"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None,
                               weights_only=True)
        test_acc = float(results[0]["test/acc"])
        test_extra = {"test_acc_top5": float(results[0]["test/acc_top5"]),
                      "test_f1_macro": float(results[0]["test/f1_macro"]),
                      "test_per_class_acc": module.test_per_class_acc}
    best_score = checkpoint.best_model_score if checkpoint else None
    metrics = {
        "status": "completed",
        "best_val_acc": float(best_score) if best_score is not None else None,
        "test_acc": test_acc,
        **test_extra,
        "epochs": trainer.current_epoch,
        "run_dir": str(run_dir),
        "best_checkpoint": best_path or None,
        "last_checkpoint": str(Path(checkpoint.dirpath) / "last.ckpt") if checkpoint else None,
        # data.on_bad_image=skip: every image left out, as "MANIFEST:LINE: reason (path)".
        "skipped_images": len(datamodule.skipped),
        "skipped": [str(item) for item in datamodule.skipped.values()],
    }
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics, indent=2), flush=True)
        print(f"checkpoints: {run_dir / 'checkpoints'}\nTensorBoard logs: {run_dir / 'tensorboard'}"
              " (make tensorboard, then open http://127.0.0.1:6006)", flush=True)
    return metrics


def record_failure(cfg: DictConfig, error: str) -> float:
    """In a multirun, a failed job writes metrics.json with the error and lets the sweep go on."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    failure = {"status": "failed", "error": error, "best_val_acc": None,
               "test_acc": None, "run_dir": str(run_dir)}
    (run_dir / "metrics.json").write_text(json.dumps(failure, indent=2) + "\n")
    # Sweepers need a number; -inf ranks the job last when maximising val/acc_best.
    return float("-inf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Hydra's launchers stop a sweep at the first job that raises; one bad job must not cost the
    # others, so in a multirun failures are recorded (sweep.py summarises them) instead.
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except SIGTERMException:  # Lightning's handler, outside training (foodnet.safety.Preemption)
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception as err:
        user_error = err if isinstance(err, USER_ERRORS) else None
        if user_error is not None:
            print(f"error: {user_error}", file=sys.stderr, flush=True)
        elif multirun:
            traceback.print_exc()
        if multirun:
            return record_failure(cfg, str(user_error) if user_error is not None
                                  else f"{type(err).__name__}: {err}")
        if user_error is not None:
            raise SystemExit(2) from None
        raise
    # Returned to Hydra so that sweepers can optimise it.
    return metrics["best_val_acc"]


if __name__ == "__main__":
    main()

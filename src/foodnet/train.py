"""Train a classifier: `python -m foodnet.train [hydra overrides]`."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from foodnet.config import CONFIG_DIR
from foodnet.errors import (
    ConfigError,
    did_you_mean,
    exit_on_user_error,
    find_user_error,
    user_message,
)
from foodnet.hydra_entry import run
from foodnet.reports.metrics import (
    SCORES,
    TEMPERATURE,
    TEST_ACC,
    TEST_PER_CLASS_ACC,
    VAL_ACC_BEST,
    VAL_ECE,
    VAL_ECE_RAW,
)
from foodnet.run_folder import discard_unused_run_folder
from foodnet.schema import TrainSchema, check_config

# torch, Lightning and torchvision are imported where they are used, so that `--help` and a
# config mistake answer in well under a second.
if TYPE_CHECKING:
    import lightning as L

    from foodnet.data.augment import Augmentation
    from foodnet.data.datamodule import FoodDataModule
    from foodnet.models.transfer import TransferNet
    from foodnet.speed.plan import SpeedPlan
    from foodnet.training.finetune import FinetuneStrategy
    from foodnet.training.module import FoodClassifier
    from foodnet.training.resume import ResumePoint

log = logging.getLogger(__name__)
# data.* keys that with_data reads (a folder of photos and its split), not the datamodule.
FOLDER_KEYS = ("folder", "val_fraction", "test_fraction")


def build(cfg: DictConfig, resume: ResumePoint | None = None,
          ) -> tuple[FoodDataModule, FoodClassifier, L.Trainer]:
    """The run's parts, each from its config group, in the order they depend on each other."""
    from foodnet.training.module import FoodClassifier

    if cfg.model.num_classes is None:  # a config that train() has not settled (tests build one)
        cfg = with_data(cfg)
    strategy: FinetuneStrategy = _instantiate(cfg.finetune)
    augment: Augmentation = _instantiate(cfg.augment)
    check_cache_features(cfg, strategy, augment)
    warn_random_frozen_backbone(cfg.model.weights, strategy)
    net: TransferNet = _instantiate(cfg.model.net)
    strategy.prepare(net)
    # The run's one preprocessing record: the weights' own, with model.preprocessing's values.
    preprocessing = net.preprocessing.override(
        **OmegaConf.to_container(cfg.model.preprocessing, resolve=True))
    log.info("preprocessing: %s", preprocessing.describe())
    # Partial, then called: instantiate would turn the records (dataclasses) into DictConfigs.
    # The folder keys were for with_data, which turned them into manifests.
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if k not in FOLDER_KEYS}
    datamodule: FoodDataModule = _instantiate(data, _partial_=True)(
        preprocessing=preprocessing, augment=augment)
    callbacks, loggers = _callbacks_and_loggers(cfg, strategy)
    speed = _speed_plan(cfg, net, preprocessing.image_size, strategy, resume)
    module = FoodClassifier(net, optimizer=_instantiate(cfg.model.optimizer),
                            class_names=datamodule.class_names, preprocessing=preprocessing,
                            augment=augment, finetune=strategy, speed=speed,
                            scheduler=_instantiate(cfg.scheduler.schedule),
                            scheduler_interval=cfg.scheduler.interval,
                            label_smoothing=cfg.model.label_smoothing,
                            calibrate=cfg.calibrate,
                            ema=cfg.ema_decay if cfg.ema else None,
                            class_weights=_class_weights(cfg.model.class_weights, datamodule,
                                                         cfg.model.num_classes))
    trainer: L.Trainer = _instantiate(cfg.trainer, precision=speed.precision,
                                      callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def _callbacks_and_loggers(cfg: DictConfig, strategy: FinetuneStrategy) -> tuple[list, list]:
    """callbacks.* and logger.*, plus the strategy's own callback (gradual unfreezing) and the
    weights' moving average (ema=true)."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from foodnet.training.callbacks.ema import TrainableEMA
    from foodnet.training.tracking import default_run_name

    callbacks = [_instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if strategy.callback() is not None:
        callbacks.append(strategy.callback())
    if cfg.ema:
        callbacks.append(TrainableEMA(cfg.ema_decay))
    run_dir = Path(cfg.paths.output_dir)
    loggers = [_instantiate(c, **default_run_name(c, run_dir))
               for c in (cfg.get("logger") or {}).values()]
    if not loggers:  # `~logger`: the learning-rate monitor has nowhere to write and would refuse
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks, loggers


def _speed_plan(cfg: DictConfig, net: TransferNet, image_size: int,
                strategy: FinetuneStrategy, resume: ResumePoint | None) -> SpeedPlan:
    """This machine's speed settings for the run's backbone (docs/speed.md); a resumed run keeps
    the precision and layout it started with."""
    from foodnet.machine import resolve_device
    from foodnet.speed.plan import resolve_speed

    return resolve_speed(net.backbone, arch=net.arch, image_size=image_size,
                         device=resolve_device(cfg.trainer.accelerator),
                         batch_size=cfg.data.batch_size, precision=cfg.trainer.precision,
                         channels_last=cfg.channels_last, backbone_batch=cfg.backbone_batch,
                         compile=cfg.compile, images=_backbone_passes(cfg, strategy, resume),
                         resumed=resume.speed if resume else None)


def _backbone_passes(cfg: DictConfig, strategy: FinetuneStrategy,
                     resume: ResumePoint | None) -> int:
    """About how many images the frozen backbone will see in this run (what compiling can speed
    up): cache_features: each split once (train once per view); otherwise the train set every
    epoch left and the validation set once (its features are computed once)."""
    if not strategy.backbone_frozen_throughout:
        return 0
    trainer = cfg.trainer
    limit = trainer.get("limit_train_batches")
    if trainer.get("fast_dev_run") or (limit is not None and limit != 1.0):
        return 0  # a partial run (debug): not worth a compile
    sizes = {split: _count_lines(cfg.data.get(f"{split}_manifest"))
             for split in ("train", "val", "test")}
    if cfg.cache_features:
        return sizes["train"] * cfg.cache_views + sizes["val"] + sizes["test"]
    epochs = trainer.get("max_epochs")
    if epochs is None:  # Lightning's default: 1000 epochs, unless max_steps limits the run
        epochs = 1000 if trainer.get("max_steps", -1) in (None, -1) else 1
    epochs = epochs if epochs >= 0 else 1
    return sizes["train"] * max(epochs - (resume.epochs_done if resume else 0), 0) + sizes["val"]


def _count_lines(manifest: str | None) -> int:
    """A manifest's sample lines, counted without validating them (setup does that later)."""
    try:
        with open(manifest, encoding="utf-8-sig") as handle:
            return sum(1 for line in handle if line.strip() and not line.lstrip().startswith("#"))
    except (OSError, TypeError):  # none given, or missing: setup reports it
        return 0


def _instantiate(node, **kwargs):
    """hydra's instantiate, re-raising a user error that the built class raised as itself."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        raise user_error from None


def _class_weights(option, datamodule: FoodDataModule, num_classes: int) -> list[float] | None:
    """model.class_weights: null, "balanced" (from the train labels) or explicit weights."""
    if option is None:
        return None
    if option == "balanced":
        from foodnet.training.module import balanced_class_weights

        datamodule.setup("fit")
        return balanced_class_weights(datamodule.datasets["train"].labels, num_classes)
    if isinstance(option, str):
        raise ConfigError(f"model.class_weights={option} is unknown: use null, balanced or a "
                          f"list of {num_classes} floats")
    return [float(w) for w in option]


def check_cache_features(cfg: DictConfig, strategy: FinetuneStrategy,
                         augment: Augmentation) -> None:
    """Features are reusable only while the backbone stays frozen for the whole run, which the
    fine-tuning strategy alone decides. Batch mixing is refused with them rather than applied to
    features: CutMix pastes image regions, which has no meaning on pooled features, and MixUp of
    features is another method (manifold mixup) than the MixUp of images it is asked for."""
    if not cfg.cache_features:
        return
    if not strategy.backbone_frozen_throughout:
        raise ConfigError(f"cache_features=true needs finetune=freeze, but finetune="
                          f"{strategy.name} trains the backbone, so its features change; "
                          "set finetune=freeze, or cache_features=false")
    if augment.mix is not None:
        raise ConfigError(f"augment.mix={augment.mix} mixes images in each batch, but "
                          "cache_features=true trains the head on features computed once; set "
                          "cache_features=false to mix images, or augment.mix=null")


def validates_everything(trainer: L.Trainer) -> bool:
    """False for runs that validate a few batches only (debug=fast, limit_val_batches), which
    would pay for extracting the whole validation set up front."""
    limit = trainer.limit_val_batches  # an int counts batches, a float is a fraction
    return not trainer.fast_dev_run and isinstance(limit, float) and limit == 1.0


def use_backbone_features(cfg: DictConfig, datamodule: FoodDataModule, module: FoodClassifier,
                          trainer: L.Trainer) -> None:
    """Compute frozen-backbone features once instead of every epoch (training/features.py).

    cache_features=true: train, val and test come from the on-disk cache. Otherwise, while the
    backbone stays frozen for the whole run (finetune=freeze), the validation features are
    computed once in memory.
    """
    from foodnet.training.features import FeatureCache, attach_features

    if cfg.cache_features:
        splits = [s for s in ("train", "val", "test") if cfg.data.get(f"{s}_manifest")]
        cache = FeatureCache(cfg.cache_dir)
    elif module.finetune.backbone_frozen_throughout and cfg.data.get("val_manifest") \
            and validates_everything(trainer):
        splits, cache = ["val"], None
    else:
        return
    attach_features(datamodule, module.net, splits, cache=cache,
                    train_views=cfg.get("cache_views", 1), seed=cfg.seed,
                    device=trainer.strategy.root_device, precision=str(trainer.precision),
                    forward_context=trainer.precision_plugin.forward_context,
                    frozen=module.frozen_backbone)


def find_lr(tune: DictConfig, module: FoodClassifier, datamodule: FoodDataModule,
            trainer: L.Trainer, run_dir: Path) -> dict:
    """tune.lr_find: Lightning's learning-rate range test; its suggestion becomes the run's lr.

    The curve is plotted to RUN/lr_find.png and TensorBoard; the test restores the weights it
    trained, so the run starts from where it would have without it.
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.tuner import Tuner

    # The test runs tune.num_training steps; Lightning would also stop it at trainer.max_epochs,
    # which on a small data set leaves too few points for a suggestion.
    epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = -1
    try:
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, min_lr=tune.min_lr,
                                        max_lr=tune.max_lr, num_training=tune.num_training,
                                        update_attr=False)
    finally:
        trainer.fit_loop.max_epochs = epochs
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        log.warning("tune.lr_find: no suggestion (too few steps with a finite loss); training "
                    "with model.optimizer.lr. More steps: tune.num_training, or more data")
        return {"suggestion": None}
    module.lr = float(suggestion)
    log.info("tune.lr_find: suggested lr %.3g, used instead of model.optimizer.lr", suggestion)
    result = {"suggestion": module.lr, "steps": len(finder.results["lr"])}
    if trainer.is_global_zero:
        figure = finder.plot(suggest=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(run_dir / "lr_find.png", dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("tune/lr_find", figure, global_step=0)
        result["plot"] = str(run_dir / "lr_find.png")
    return result


def check_trainer_keys(trainer_cfg) -> None:
    """A trainer.* key that Lightning's Trainer does not take is a typo, named before building."""
    import inspect

    import lightning as L

    from foodnet.training.trainer import create_trainer

    known = set(inspect.signature(L.Trainer.__init__).parameters)
    known |= set(inspect.signature(create_trainer).parameters) | {"_target_"}
    unknown = sorted(set(trainer_cfg) - known)
    if unknown:
        key = f"trainer.{unknown[0]}"
        hint = did_you_mean(key, [f"trainer.{name}" for name in sorted(known)])
        raise ConfigError(f"{key}: no such setting of Lightning's Trainer{hint} (foodnet train "
                          "--cfg job lists every key)")


def warn_random_frozen_backbone(weights: str | None, strategy: FinetuneStrategy) -> None:
    """model.weights=null with a frozen backbone trains a head on random features: allowed (speed
    benchmarks of the recipe use it), but said once, with the fix."""
    if weights is None and strategy.backbone_frozen_throughout:
        log.warning("model.weights=null with finetune=%s: the backbone stays RANDOM and only "
                    "the head trains, which learns little. For a real model use "
                    "finetune=full (train everything from scratch) or real pretrained weights "
                    "(model.weights=DEFAULT, or a .pth file)", strategy.name)


def with_data(cfg: DictConfig) -> DictConfig:
    """The config with its data settled: data.folder split into the run folder's data/ (its
    manifests and classes.txt replace data.*), model.num_classes from the data unless given.

    Done on the composed config, before its interpolations are resolved, so that the values set
    here reach every key that refers to them (data.num_classes, model.net.num_classes).
    """
    from foodnet.data.folder import from_folder
    from foodnet.data.manifest import resolve_num_classes

    cfg = cfg.copy()
    data = cfg.data
    if data.folder:
        out = Path(cfg.paths.output_dir) / "data"
        split = from_folder(data.folder, out, data.val_fraction, data.test_fraction,
                            seed=cfg.seed, names=("data.val_fraction", "data.test_fraction"))
        log.info("data.folder=%s: %d classes, %s written to %s", data.folder,
                 len(split.class_names),
                 ", ".join(f"{len(split.rows[s])} {s}" for s in ("train", "val", "test")), out)
        for key in ("train", "val", "test"):
            data[f"{key}_manifest"] = str(split.files[key]) if key in split.files else None
        data.classes = str(split.files["classes"])
    cfg.model.num_classes = resolve_num_classes(
        cfg.model.num_classes, data.classes,
        [data.get(f"{key}_manifest") for key in ("train", "val", "test")])
    return cfg


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint when a test manifest is given, write metrics.json."""
    from foodnet.training.preflight import check_settings

    # What the config alone can be checked for, before the data is read (with_data) and before
    # anything heavy is built: the types, the trainer's keys, the arch and its weights' name.
    typed = check_config(cfg, TrainSchema)
    check_trainer_keys(typed.trainer)
    check_settings(typed.model.arch, typed.model.weights)
    cfg = check_config(with_data(cfg), TrainSchema)
    from foodnet.logs import library_chatter

    with library_chatter(cfg.verbose):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from foodnet.training.callbacks.pruning import OptunaPruning
    from foodnet.training.resume import find_resume
    from foodnet.training.tracking import log_outcome, log_params, mlflow_loggers
    from foodnet.training.trainer import expected_warnings

    run_dir = Path(cfg.paths.output_dir)
    log.info("run dir: %s", run_dir)
    # The checkpoint to resume from, read once and vetted before anything is built.
    resume = find_resume(cfg.ckpt_path,
                         OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath"),
                         arch=cfg.model.arch, num_classes=cfg.model.num_classes,
                         max_epochs=cfg.trainer.max_epochs)
    if resume is not None:
        log.info("resuming from %s", resume.path)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module, trainer = build(cfg, resume)
    # Read every manifest of the run now (train, val and test): all problems of all splits are
    # reported at once, before the first epoch.
    datamodule.setup()
    use_backbone_features(cfg, datamodule, module, trainer)
    log_params(trainer.loggers, OmegaConf.to_container(cfg, resolve=True))
    lr_found = None
    if cfg.tune.lr_find and resume is not None:
        log.info("tune.lr_find: skipped, a resumed run keeps its optimizer's learning rate")
    elif cfg.tune.lr_find:
        with expected_warnings():
            lr_found = find_lr(cfg.tune, module, datamodule, trainer, run_dir)
    with expected_warnings():
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=resume.path if resume else None, weights_only=True)

    # An Optuna trial that its pruner stopped: a normal end, but no test (docs/search.md).
    pruned = any(isinstance(c, OptunaPruning) and c.pruned_epoch is not None
                 for c in trainer.callbacks)
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    test_metrics = {TEST_ACC: None}
    if cfg.data.get("test_manifest") and not pruned:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None,
                               weights_only=True, verbose=False)
        test_metrics = {name: float(results[0][name]) for name in SCORES["test"]}
        test_metrics[TEST_PER_CLASS_ACC] = module.test_per_class_acc
    best_score = checkpoint.best_model_score if checkpoint else None
    metrics = {
        "status": "pruned" if pruned else "completed",
        VAL_ACC_BEST: float(best_score) if best_score is not None else None,
        **test_metrics,
        **_calibration(module, best_path),
        "epochs": trainer.current_epoch,
        "max_epochs": trainer.max_epochs,
        "run_dir": str(run_dir),
        "best_checkpoint": best_path or None,
        "last_checkpoint": str(Path(checkpoint.dirpath) / "last.ckpt") if checkpoint else None,
        # data.on_bad_image=skip: every image left out, as "MANIFEST:LINE: reason (path)".
        "skipped_images": len(datamodule.skipped),
        "skipped": [str(item) for item in datamodule.skipped.values()],
    }
    if lr_found is not None:  # tune.lr_find: the suggested lr (used), the plot
        metrics["lr_find"] = lr_found
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log_outcome(trainer.loggers, metrics["status"],
                    {"": run_dir / "metrics.json", "checkpoints": best_path or None})
        log.info("%s", json.dumps(metrics, indent=2))
        log.info("checkpoints: %s", run_dir / "checkpoints")
        if any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            log.info("TensorBoard logs: %s (make tensorboard, then open http://127.0.0.1:6006)",
                     run_dir / "tensorboard")
        for logger in mlflow_loggers(trainer.loggers):
            log.info("MLflow run %s in %s (make mlflow, then open http://127.0.0.1:5000)",
                     logger.run_id, logger.experiment.tracking_uri)
    return metrics


def _calibration(module: FoodClassifier, best_path: str) -> dict:
    """The temperature of the checkpoint that tools load (the best one, else the last state)
    and its validation ECE before and after; nothing when the run did not calibrate."""
    from foodnet.models.checkpoint import read_checkpoint
    from foodnet.training.module import CALIBRATION_KEY

    if module.calibration is None:
        return {}
    if not best_path:
        return {VAL_ECE_RAW: module.calibration.ece_raw, VAL_ECE: module.calibration.ece,
                TEMPERATURE: module.calibration.temperature}
    checkpoint = read_checkpoint(best_path)
    return {**checkpoint.get(CALIBRATION_KEY, {}),
            TEMPERATURE: checkpoint["hyper_parameters"][TEMPERATURE]}


def record_failure(cfg: DictConfig, error: str) -> float:
    """In a multirun, a failed job writes metrics.json with the error and lets the sweep go on."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    failure = {"status": "failed", "error": error, VAL_ACC_BEST: None,
               TEST_ACC: None, "run_dir": str(run_dir)}
    (run_dir / "metrics.json").write_text(json.dumps(failure, indent=2) + "\n")
    # Sweepers need a number; -inf ranks the job last when maximising val/acc_best.
    return float("-inf")


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: its overrides, its folder and ckpt_path=last."""
    overrides = []
    if HydraConfig.initialized():
        dropped = ("ckpt_path=", "hydra.run.dir=", "overwrite=")
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(dropped)]
    words = ["foodnet", "train", *overrides, f"hydra.run.dir={run_dir}",
             "ckpt_path=last"]
    return " ".join(shlex.quote(str(w)) for w in words)


def _run(cfg: DictConfig) -> dict:
    """train(), with a stop by signal turned into exit 128+N and the command that resumes."""
    check_config(cfg, TrainSchema)  # before the heavy imports: a typo answers at once
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from foodnet.training.callbacks.safety import Preempted

    try:
        return train(cfg)
    except Preempted:
        log.warning("resume: %s", resume_command(Path(cfg.paths.output_dir)))
        raise
    except SIGTERMException:  # Lightning's handler, outside training (callbacks.safety)
        log.warning("SIGTERM before training started: nothing to save")
        raise SystemExit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:  # Ctrl-C outside training (setup, sanity check, final test)
        log.warning("interrupted (Ctrl-C) outside training: no checkpoint written")
        raise SystemExit(128 + signal.SIGINT) from None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Hydra's launchers stop a sweep at the first job that raises; one bad job must not cost the
    # others, so in a multirun failures are recorded (sweep.py summarises them) instead.
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        try:
            metrics = _run(cfg)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                traceback.print_exc()
            else:
                log.error("error: %s", user_message(user_error))
            return record_failure(cfg, user_message(user_error) if user_error is not None
                                  else f"{type(err).__name__}: {err}")
    else:
        with exit_on_user_error(cleanup=discard_unused_run_folder):
            metrics = _run(cfg)
    # Returned to Hydra so that sweepers can optimise it.
    return metrics[VAL_ACC_BEST]


if __name__ == "__main__":
    run(main)

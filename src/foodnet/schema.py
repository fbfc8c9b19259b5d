"""The schema of the composed configs (conf/train.yaml, conf/eval.yaml): every key foodnet reads,
with its type, checked when an entry point receives its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from foodnet.errors import ConfigError, did_you_mean

# `check_config` merges a composed config into it, so that a wrong type or a key
# nothing reads (a typo, `+model.lr=0.5`) fails naming the key before anything is built. The
# defaults stay in the YAML files (one home per default): a field here is only a type.
# Nodes passed whole to a library (trainer, callbacks, logger, optimizer, schedule) are open
# dicts; their keys are checked against what they build (foodnet.train).


@dataclass
class DataSchema:
    _target_: str = MISSING
    train_manifest: str | None = None
    val_manifest: str | None = None
    test_manifest: str | None = None
    classes: str | None = None
    folder: str | None = None
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    num_classes: int | None = None
    batch_size: int = MISSING
    num_workers: Any = MISSING  # auto or an int (checked in check_ranges)
    on_bad_image: str = MISSING
    validate: str = MISSING
    seed: int = MISSING


@dataclass
class PreprocessingSchema:
    """Overrides of the weights' preprocessing record (null: the weights' own value)."""

    image_size: int | None = None
    crop_mode: str | None = None
    crop_pct: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None


@dataclass
class ModelSchema:
    arch: str = MISSING
    num_classes: int | None = None  # null: from the data (foodnet.train resolves it)
    weights: str | None = None
    label_smoothing: float = MISSING
    class_weights: Any = None  # null, balanced or a list of floats
    net: dict[str, Any] = field(default_factory=dict)  # what builds the network (_target_)
    optimizer: dict[str, Any] = field(default_factory=dict)
    preprocessing: PreprocessingSchema = field(default_factory=PreprocessingSchema)


@dataclass
class EvalModelSchema:
    preprocessing: PreprocessingSchema = field(default_factory=PreprocessingSchema)


@dataclass
class SchedulerSchema:
    interval: str = MISSING
    schedule: dict[str, Any] | None = None


@dataclass
class TuneSchema:
    lr_find: bool = MISSING
    min_lr: float = MISSING
    max_lr: float = MISSING
    num_training: int = MISSING


@dataclass
class PathsSchema:
    output_dir: str = MISSING


@dataclass
class CommonSchema:
    task_name: str = MISSING
    ckpt_path: str | None = None
    verbose: bool = False
    overwrite: bool = False
    data: DataSchema = field(default_factory=DataSchema)
    trainer: dict[str, Any] = field(default_factory=dict)
    paths: PathsSchema = field(default_factory=PathsSchema)


@dataclass
class TrainSchema(CommonSchema):
    seed: int = MISSING
    channels_last: Any = MISSING  # auto, true or false (checked by speed.plan.check_options)
    compile: Any = MISSING  # auto, true or false (speed.plan.check_options)
    backbone_batch: Any = MISSING  # auto or a positive integer (speed.plan.check_options)
    cache_features: bool = MISSING
    cache_views: int = MISSING
    cache_dir: str = MISSING
    calibrate: bool = MISSING
    ema: bool = MISSING
    ema_decay: float = MISSING
    model: ModelSchema = field(default_factory=ModelSchema)
    finetune: dict[str, Any] = field(default_factory=dict)  # the strategy (_target_), its options
    augment: dict[str, Any] = field(default_factory=dict)  # _target_ (a policy) and its options
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    tune: TuneSchema = field(default_factory=TuneSchema)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class EvalSchema(CommonSchema):
    channels_last: Any = MISSING  # auto, true or false (checked by speed.plan.check_options)
    calibrate: bool = MISSING
    tta: str = MISSING  # none, flip or five (checked by data.tta.check_tta)
    model: EvalModelSchema = field(default_factory=EvalModelSchema)


# (key, type, test, what it must be): ranges checked once the types are. Only for values that
# no foodnet class checks as it takes them (a dict handed to a library, a value handed to torch's
# DataLoader by two entry points); the others are checked by their class (FoodDataModule,
# Preprocessing, create_model, FoodClassifier, the fine-tuning strategies, attach_features).
_RANGES = {
    "data.batch_size": (int, lambda v: v >= 1, "a positive integer"),
    "data.num_workers": ((int, str), lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
                         "auto or an integer >= 0"),
    "model.optimizer.lr": (float, lambda v: v > 0, "a positive number (the default is 1e-3)"),
    "model.optimizer.weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
    "trainer.max_epochs": (int, lambda v: v >= 1, "a positive integer"),
    "ema_decay": (float, lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.999"),
    "tune.min_lr": (float, lambda v: v > 0, "a positive number"),
    "tune.num_training": (int, lambda v: v >= 2, "an integer >= 2"),
}


def check_config(cfg: DictConfig, schema: type) -> DictConfig:
    """The composed config, typed by `schema`, or a ConfigError naming the first bad key."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        typed = OmegaConf.merge(OmegaConf.structured(schema), plain)
        OmegaConf.to_container(typed, throw_on_missing=True)
    except ConfigKeyError as err:
        key = err.full_key or err.key
        known = [k for k in _dotted_keys(plain) if k != key and not k.startswith(f"{key}.")]
        raise ConfigError(f"{key}: no such setting, nothing would read it{did_you_mean(key, known)}"
                          f" (foodnet {_command(schema)} --cfg job lists every key)") from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key}: missing, set it") from None
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}={err.value!r}: expected {_type_name(err)}") from None
    except OmegaConfBaseException as err:  # e.g. an interpolation that names no key
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{key}: {err.msg}" if key else str(err)) from None
    for key, (kind, test, wanted) in _RANGES.items():
        value = OmegaConf.select(typed, key, default=None)
        if value is None:
            continue
        given = value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) or not test(value):
            raise ConfigError(f"{key}={given!r}: expected {wanted}")
    result = OmegaConf.create(OmegaConf.to_container(typed))
    OmegaConf.set_struct(result, True)
    return result


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        keys.append(f"{prefix}{name}")
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{name}.")
    return keys


def _command(schema: type) -> str:
    return "evaluate" if schema is EvalSchema else "train"


def _type_name(err: ValidationError) -> str:
    text = str(err.msg)
    for name, wanted in (("Integer", "an integer"), ("Float", "a number"),
                         ("bool", "true or false"), ("Boolean", "true or false")):
        if name in text:
            return wanted
    return text.splitlines()[0]

"""The Lightning Trainer, with this machine's settings resolved first: precision and memory layout
measured on the run's backbone, the frozen backbone compiled when that pays (foodnet.hardware)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import lightning as L
import torch

from foodnet.errors import ConfigError
from foodnet.hardware import (
    CompiledForward,
    CompileMeasurement,
    SpeedCache,
    SpeedSettings,
    choose_speed,
    compile_key,
    compile_pays_back,
    resolve_device,
)
from foodnet.models.transfer import TransferNet

log = logging.getLogger(__name__)
COMPILE_CHOICES = ("auto", True, False)


def create_trainer(precision: str | int = "32-true", **kwargs) -> L.Trainer:
    """A lightning Trainer. `precision: auto` is resolved before, on the run's own backbone
    (speed_settings), which the Trainer does not know."""
    if precision == "auto":
        raise ValueError("trainer.precision=auto must be resolved first with "
                         "foodnet.training.trainer.speed_settings (it measures the backbone)")
    return L.Trainer(precision=precision, **kwargs)


def speed_settings(net: TransferNet, image_size: int, accelerator: str = "auto",
                   precision: str | int = "auto", channels_last: bool | str = "auto",
                   compile: bool | str = False, resumed: dict | None = None,
                   cache: SpeedCache | None = None) -> SpeedSettings:
    """Precision and channels_last for this run: explicit values as given, `auto` measured on
    this machine (or read from its cache); each decision is logged with what it was based on."""
    speed = choose_speed(net.backbone, image_size, resolve_device(accelerator), net.arch,
                         precision=precision, channels_last=channels_last,
                         measure=compile == "auto", resumed=resumed,
                         cache=cache)
    for note in speed.notes:
        log.info("%s", note)
    return speed


def use_compiled_backbone(net: TransferNet, option: bool | str, *, images: int,
                          speed: SpeedSettings, image_size: int, batch_size: int,
                          device: torch.device | str, cache: SpeedCache | None = None) -> bool:
    """`compile`: run the frozen backbone through torch.compile (hardware.CompiledForward).

    auto: when the eager time saved over the run's `images` backbone passes exceeds the compile
    time measured on this machine (measured and cached by the first run that tries)."""
    if option not in COMPILE_CHOICES:
        raise ConfigError(f"compile={option!r}: use auto, true or false")
    if option is False:
        return False
    if not net.backbone_frozen:
        if option is True:
            raise ConfigError("compile=true compiles the frozen backbone, but this run trains "
                              "it; set finetune=freeze, or compile=false")
        return False
    cache = cache or SpeedCache()
    device = torch.device(device)
    key = compile_key(device, net.arch, image_size, speed.precision, speed.channels_last,
                      batch_size)
    entry = cache.get(key)
    measured = CompileMeasurement(**entry["measurement"]) if entry else None
    if option == "auto":
        chosen, why = compile_pays_back(images, speed.eager_img_per_s(), measured)
        log.info("compile auto: %s (%s)", "on" if chosen else "off", why)
        if not chosen:
            return False

    def record(measurement: CompileMeasurement) -> None:
        cache.put(key, {"measurement": asdict(measurement)})

    net.frozen_forward = CompiledForward(net.backbone, name=f"{net.arch} backbone",
                                         batch_size=batch_size, on_measured=record)
    return True


@contextmanager
def expected_warnings() -> Iterator[None]:
    """Silence, around fit/test only, the Lightning warnings that foodnet's design makes moot."""
    with warnings.catch_warnings():
        # FoodClassifier keeps frozen parts in eval mode on purpose (BatchNorm must not drift).
        warnings.filterwarnings(
            "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        # EpochSampler resumes a mid-epoch checkpoint exactly (data/sampling.py); Lightning,
        # which cannot tell, would warn on every such resume that results may be unreliable.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before the epoch "
                              "ended and your dataloader is not resumable")
        yield

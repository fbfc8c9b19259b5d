"""The run's speed decisions as one value (SpeedPlan), resolved from its options in one call."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from foodnet.errors import ConfigError
from foodnet.speed.cache import CacheEntry, SpeedCache, compile_key
from foodnet.speed.compile import CompileMeasurement
from foodnet.speed.decide import (
    choose_backbone_batch,
    choose_precision_and_layout,
    compile_pays_back,
)
from foodnet.speed.measure import FP32

log = logging.getLogger(__name__)
COMPILE_CHOICES = ("auto", True, False)


@dataclass(frozen=True)
class SpeedPlan:
    """How a run computes: what the Trainer and the frozen backbone's runner (FrozenBackbone) use.

    The default is the plain way: fp32, contiguous, whole batches, eager."""

    precision: str | int = FP32
    channels_last: bool = False
    backbone_batch: int | None = None  # images per pass of a frozen backbone; None: whole batch
    compiled: bool = False  # the frozen backbone runs through torch.compile (CompiledForward)
    # A compiled backbone's pass size (the shape it compiles for) and the cache entry where it
    # records what compiling cost and gained, for the next run's `compile: auto`.
    compile_batch: int | None = None
    compile_record: CacheEntry | None = None
    notes: tuple[str, ...] = ()  # each decision and why, as the run logged it


def check_options(**options: object) -> None:
    """The speed options as a user writes them: channels_last and compile are auto, true or
    false; backbone_batch is auto or a positive integer (None: not decided here)."""
    for key in ("channels_last", "compile"):
        value = options.get(key, "auto")
        if value not in COMPILE_CHOICES or (value != "auto" and not isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r}: expected auto, true or false")
    passes = options.get("backbone_batch")
    if passes not in (None, "auto") and (isinstance(passes, bool) or not isinstance(passes, int)
                                         or passes < 1):
        raise ConfigError(f"backbone_batch={passes!r}: expected auto or a positive integer")


def resolve_speed(backbone: nn.Module, *, arch: str, image_size: int, device: torch.device,
                  batch_size: int, precision: str | int = "auto",
                  channels_last: bool | str = "auto", backbone_batch: int | str | None = None,
                  compile: bool | str = False, images: int = 0, resumed: dict | None = None,
                  cache: SpeedCache | None = None) -> SpeedPlan:
    """The run's SpeedPlan: explicit values as given, `auto` measured on this machine (or read
    from its cache); each decision is logged with what it was based on.

    `resumed`: the checkpoint's speed record ({"precision", "channels_last"}), which a resumed
    run keeps. `backbone_batch` and `compile` apply to a frozen backbone only (None: whole
    batches, not decided); `images`: about how many images the frozen backbone sees in the run,
    what compiling would have to pay back."""
    check_options(channels_last=channels_last, compile=compile, backbone_batch=backbone_batch)
    cache = cache or SpeedCache()
    frozen = not any(p.requires_grad for p in backbone.parameters())
    layout = choose_precision_and_layout(
        backbone, image_size, device, arch, precision=precision, channels_last=channels_last,
        measure=compile == "auto", resumed=resumed, cache=cache)
    notes = list(layout.notes)
    for note in notes:
        log.info("%s", note)
    passes = None
    if frozen and backbone_batch is not None:
        passes, why = choose_backbone_batch(backbone_batch, device, batch_size, backbone,
                                            image_size)
        what = f"{passes} images per pass" if passes else "the whole batch per pass"
        notes.append(f"backbone batch: {what} ({why})")
        log.info("%s", notes[-1])
    compiled, record = False, None
    compile_batch = passes or batch_size
    if compile is not False:
        if not frozen:
            if compile is True:
                raise ConfigError("compile=true compiles the frozen backbone, but this run "
                                  "trains it; set finetune=freeze, or compile=false")
        else:
            record = CacheEntry(cache.path, compile_key(
                device, arch, image_size, layout.precision, layout.channels_last, compile_batch))
            compiled = True
            if compile == "auto":
                entry = record.get()
                measured = CompileMeasurement(**entry["measurement"]) if entry else None
                compiled, why = compile_pays_back(images, layout.eager_img_per_s(), measured)
                notes.append(f"compile auto: {'on' if compiled else 'off'} ({why})")
                log.info("%s", notes[-1])
    return SpeedPlan(precision=layout.precision, channels_last=layout.channels_last,
                     backbone_batch=passes, compiled=compiled,
                     compile_batch=compile_batch if compiled else None,
                     compile_record=record if compiled else None, notes=tuple(notes))

"""Deciding from measurements: the precision and layout, the backbone's pass size, whether
compiling pays back. Each decision says why, in a line the run logs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from foodnet.machine import last_level_cache
from foodnet.speed.cache import SpeedCache, measurement_key
from foodnet.speed.compile import CompileMeasurement
from foodnet.speed.measure import (
    FP32,
    LOW_PRECISION_MARGIN,
    Calibration,
    calibrate,
    largest_activation,
    low_precision,
    mode_name,
)

MAX_FEATURE_ERROR = 0.02  # mixed precision only when its features stay this close to fp32's
NOISY_SPREAD = 1.5  # samples of one setting this far apart: say the machine was busy
DEFAULT_CACHE_BYTES = 32 * 2**20  # a CPU's last-level cache where the system does not say
COMPILE_FIRST_TRY_S = 300.0  # compile, unmeasured, only when the backbone's eager work is this long
# Lightning's spellings of the same precisions, for looking up a measurement.
PRECISION_ALIASES = {"32": FP32, 32: FP32, "bf16": "bf16-mixed", "16": "16-mixed", 16: "16-mixed"}


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    channels_last: bool
    why: str  # the measured ratio behind it, for the log


def choose_precision(calibration: Calibration, low: str | None) -> PrecisionChoice:
    """Mixed precision only with a clear margin over fp32 (its slowest sample against fp32's
    fastest, so that a busy machine cannot make it win by chance) and features close to fp32's;
    then the faster measured layout."""
    fp32 = calibration.best(FP32)
    if fp32 is None:
        return PrecisionChoice(FP32, False, "nothing measured")
    if low is None:
        return PrecisionChoice(FP32, fp32[0], "fp32 only on this device")
    low_best = calibration.best(low)
    if low_best is None:
        reason = calibration.skipped.get(mode_name(low, True), "not measured")
        return PrecisionChoice(FP32, fp32[0], f"{low} not measured: {reason}")
    ratio = low_best[1] / fp32[1]
    worst = ratio / calibration.spread.get(mode_name(low, low_best[0]), 1.0)
    error = calibration.feature_error.get(low, 0.0)
    if worst < LOW_PRECISION_MARGIN:
        # The number named first is the one compared with the margin.
        ran = (f"{ratio:.2f}x fp32" if ratio < LOW_PRECISION_MARGIN else
               f"{worst:.2f}x fp32 in its slowest sample ({ratio:.2f}x at best)")
        return PrecisionChoice(FP32, fp32[0], f"{low} ran at {ran}, below the "
                                              f"{LOW_PRECISION_MARGIN}x margin")
    if error > MAX_FEATURE_ERROR:
        return PrecisionChoice(FP32, fp32[0], f"{low} ran at {ratio:.2f}x fp32 but its features "
                                              f"differ by {error:.1%} (over "
                                              f"{MAX_FEATURE_ERROR:.0%})")
    return PrecisionChoice(low, low_best[0], f"{ratio:.2f}x fp32")


@dataclass(frozen=True)
class PrecisionLayout:
    """The precision and memory layout decided, the calibration behind them, and why."""

    precision: str | int
    channels_last: bool
    calibration: Calibration | None
    notes: tuple[str, ...] = ()

    def eager_img_per_s(self) -> float | None:
        """The measured forward speed in the settings chosen (None when not measured)."""
        if self.calibration is None:
            return None
        precision = PRECISION_ALIASES.get(self.precision, self.precision)
        return self.calibration.rate(str(precision), self.channels_last)


def choose_precision_and_layout(backbone: nn.Module, image_size: int,
                                device: torch.device | str, arch: str,
                                precision: str | int = "auto", channels_last: bool | str = "auto",
                                measure: bool = False, resumed: dict | None = None,
                                cache: SpeedCache | None = None) -> PrecisionLayout:
    """Resolve `auto` precision and channels_last for this backbone on this device: from the
    cache, else by calibrating (about 15 s). Explicit values are kept as given; a resumed run
    keeps what its checkpoint records (`resumed`: {"precision", "channels_last"}). `measure`:
    calibrate even if nothing is auto (compile: auto needs the forward speed)."""
    device = torch.device(device)
    notes = []
    resumed = resumed or {}
    if precision == "auto" and resumed.get("precision") is not None:
        precision = resumed["precision"]
        notes.append(f"precision auto: {precision}, kept from the checkpoint being resumed")
    if channels_last == "auto" and resumed.get("channels_last") is not None:
        channels_last = bool(resumed["channels_last"])
        notes.append(f"channels_last auto: {str(channels_last).lower()}, kept from the "
                     "checkpoint being resumed")
    if precision != "auto" and channels_last != "auto" and not measure:
        return PrecisionLayout(precision, bool(channels_last), None, tuple(notes))
    cache = cache or SpeedCache()
    key = measurement_key(device, arch, image_size)
    entry = cache.get(key)
    doubt = ""
    if entry is not None:
        calibration = Calibration(**entry["calibration"])
        source = f"from the cache {cache.path}, measured there on {calibration.device}"
    else:
        calibration = calibrate(backbone, image_size, device)
        # Cached even when incomplete (fp32 then wins what was not measured): every run on this
        # machine must decide the same.
        cache.put(key, {"calibration": asdict(calibration)})
        source = (f"measured on {calibration.device} in {calibration.seconds:.1f} s, cached in "
                  f"{cache.path}")
        # Said once, when measured: later runs decide from the cache, whatever the machine did.
        doubt = measurement_doubts(calibration)
    choice = choose_precision(calibration, low_precision(device))
    if precision == "auto":
        precision = choice.precision
        notes.append(f"precision auto: {precision} ({choice.why}; {source})")
    if channels_last == "auto":
        measured = calibration.best(str(PRECISION_ALIASES.get(precision, precision)))
        channels_last = measured[0] if measured is not None else choice.channels_last
        notes.append(f"channels_last auto: {str(channels_last).lower()} "
                     f"({_layout_ratio(calibration, precision)}; {source})")
    if doubt:
        notes.append(f"speed: {doubt}: delete {cache.path} to measure again")
    return PrecisionLayout(precision, bool(channels_last), calibration, tuple(notes))


def measurement_doubts(calibration: Calibration) -> str:
    """Why a calibration may not show the machine at its usual speed ("" when nothing)."""
    doubts = []
    if not calibration.complete:
        over = [name for name, why in calibration.skipped.items() if "budget" in why]
        doubts.append(f"the measurement is incomplete ({', '.join(over)} over the time budget)")
    spread = max(calibration.spread.values(), default=1.0)
    if spread > NOISY_SPREAD:
        doubts.append(f"the machine was busy while measuring (load {calibration.load}, samples "
                      f"varied up to {spread:.1f}x)")
    return "; ".join(doubts)


def _layout_ratio(calibration: Calibration, precision: str | int) -> str:
    name = str(PRECISION_ALIASES.get(precision, precision))
    fast, plain = calibration.rate(name, True), calibration.rate(name, False)
    if fast is None or plain is None:
        return f"one layout measured in {name}"
    return f"channels_last {fast / plain:.2f}x contiguous in {name}"


def cached_layout(device: torch.device | str, arch: str, image_size: int,
                  precision: str = FP32, cache: SpeedCache | None = None) -> bool | None:
    """channels_last as a calibration on this machine measured it, None if none did."""
    entry = (cache or SpeedCache()).get(measurement_key(torch.device(device), arch, image_size))
    if entry is None:
        return None
    best = Calibration(**entry["calibration"]).best(precision)
    return None if best is None else best[0]


def pass_size(per_image_bytes: int, cache_bytes: int | None, batch_size: int) -> int | None:
    """Images per backbone pass on a CPU: as many as keep the pass's largest activation within
    the last-level cache (at least 1); None when the whole batch fits."""
    images = max(1, (cache_bytes or DEFAULT_CACHE_BYTES) // max(per_image_bytes, 1))
    return images if images < batch_size else None


def choose_backbone_batch(option: int | str, device: torch.device, batch_size: int,
                   backbone: nn.Module | None = None, image_size: int | None = None,
                   ) -> tuple[int | None, str]:
    """`backbone_batch`: (images per pass of the frozen backbone, None for the whole batch; why).

    auto: on a CPU, as many images as keep the pass's largest activation within the last-level
    cache (pass_size); elsewhere the whole batch, which a GPU needs to be busy. A frozen backbone
    runs in eval mode, so splitting a batch changes no value. On a CPU the activations then stay
    in cache: a ResNet152 at 256 px (4 MiB per image) runs 1.2x faster in passes of 8 than of
    64, an EfficientNet-Lite0 at 224 px 2x, and the pass peaks about 0.7 GiB lower for the
    ResNet152; a small network on small images keeps the whole batch. `make bench` times the
    seed's single pass against these side by side."""
    if option != "auto":  # checked by plan.check_options
        return (option if option < batch_size else None), f"backbone_batch={option}"
    if device.type != "cpu" or backbone is None or image_size is None:
        return None, f"auto on {device.type}"
    per_image = largest_activation(backbone, image_size, device)
    cache = last_level_cache()
    size = pass_size(per_image, cache, batch_size)
    cache_text = (f"the {cache / 2**20:.0f} MiB last-level cache" if cache else
                  f"{DEFAULT_CACHE_BYTES / 2**20:.0f} MiB (the CPU's cache size is unknown)")
    return size, (f"auto: its largest activation is {per_image / 2**20:.1f} MiB per image; "
                  f"{cache_text} holds {size or f'the batch of {batch_size}'}")


def compile_pays_back(images: int, eager_img_per_s: float | None,
                      measured: CompileMeasurement | None,
                      first_try_s: float = COMPILE_FIRST_TRY_S) -> tuple[bool, str]:
    """(compile?, why): compile when the eager backbone time saved over the run's `images`
    forward passes is more than compiling costs. Never measured here: try it when the eager work
    is at least `first_try_s` (the try measures both, for the next run)."""
    if measured is not None:
        work_s = images * measured.eager_s / measured.batch
        saved = work_s * (1 - 1 / measured.speedup)
        why = (f"measured {measured.speedup:.2f}x eager after {measured.compile_s:.0f} s of "
               f"compiling: would save {saved:.0f} s of {work_s:.0f} s")
        return saved > measured.compile_s, why
    if not eager_img_per_s:
        return False, "the backbone's speed was not measured"
    work_s = images / eager_img_per_s
    if work_s >= first_try_s:
        return True, (f"not measured here yet; {images} backbone passes (~{work_s:.0f} s eager) "
                      "are enough to try")
    return False, (f"not measured here yet; {images} backbone passes (~{work_s:.0f} s eager) "
                   f"are too few to pay for a first compile (tried from {first_try_s:.0f} s)")

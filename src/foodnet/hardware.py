"""What this machine is and what runs fast on it: measured on the run's own backbone, cached.

Which precision and memory layout run a network fastest depends on the machine in ways that no
table of CPU names gets right: AVX512-BF16 without AMX made bf16 slower than fp32 on one Xeon and
twice as fast on a Zen 4 EPYC, and AVX2-only CPUs emulate it at a fraction of fp32's speed. So
`precision: auto` (and `channels_last: auto`) time the run's frozen backbone at the run's image
size in each candidate setting for a few seconds and decide from the measured ratios; the result is
cached in the user's cache folder, one entry per (device, torch version, architecture, image size),
so that every run on the machine decides the same. `compile: auto` is decided from what compiling
cost and gained on the run's own batches, measured the first time and cached the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: parallel runs may then race on the cache file, which stays valid
    fcntl = None

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what an entry holds changes: older entries are then ignored
CALIBRATION_BUDGET_S = 15.0  # wall time one calibration may take (it skips what would overrun)
CALIBRATION_FORWARD_S = 0.5  # its batch: about this long in fp32 (1-3 images of a ResNet152 on CPU)
LOW_PRECISION_MARGIN = 1.2  # mixed precision only when at least this much faster than fp32 ...
MAX_FEATURE_ERROR = 0.02  # ... and when its features stay this close to fp32's (relative L2)
NOISY_SPREAD = 1.5  # samples of one setting this far apart: say the machine was busy
SAMPLE_S = 0.05  # a timed sample repeats a fast forward until it lasts this long (timer noise)
DEFAULT_CACHE_BYTES = 32 * 2**20  # a CPU's last-level cache where the system does not say
COMPILE_FIRST_TRY_S = 300.0  # compile, unmeasured, only when the backbone's eager work is this long
FP32 = "32-true"
# Lightning's spellings of the same precisions, for looking up a measurement.
PRECISION_ALIASES = {"32": FP32, 32: FP32, "bf16": "bf16-mixed", "16": "16-mixed", 16: "16-mixed"}


# ---------------------------------------------------------------- the machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags (Linux); an empty set where /proc/cpuinfo does not exist."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def auto_num_workers() -> int:
    """Decode in parallel with every core the process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, 8)


def last_level_cache(cpu: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Bytes of the CPU's last-level cache (Linux sysfs), None where it does not say."""
    best = None
    for index in sorted(Path(cpu).glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        digits = size.rstrip("KMG")
        if kind in ("Unified", "Data") and digits.isdigit():
            if best is None or level > best[0]:
                best = (level, int(digits) * units.get(size[-1], 1))
    return best[1] if best else None


def largest_activation(module: nn.Module, image_size: int, device: torch.device) -> int:
    """Bytes of the largest tensor that one image's forward through `module` produces."""
    largest = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    was_training = module.training
    module.eval()  # BatchNorm statistics must not move
    try:
        with torch.no_grad():
            param = next(module.parameters(), None)
            module(torch.zeros(1, 3, image_size, image_size, device=device,
                               dtype=param.dtype if param is not None else torch.float32))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return largest


def pass_size(per_image_bytes: int, cache_bytes: int | None, batch_size: int) -> int | None:
    """Images per backbone pass on a CPU: as many as keep the pass's largest activation within
    the last-level cache (at least 1); None when the whole batch fits."""
    images = max(1, (cache_bytes or DEFAULT_CACHE_BYTES) // max(per_image_bytes, 1))
    return images if images < batch_size else None


def backbone_batch(option: int | str, device: torch.device, batch_size: int,
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
    if option != "auto":
        if isinstance(option, bool) or not isinstance(option, int) or option < 1:
            raise ValueError(f"backbone_batch={option!r}: use auto or a positive integer")
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


def resolve_device(accelerator: str = "auto") -> torch.device:
    """The device Lightning will pick for `trainer.accelerator`."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu" if accelerator in ("auto", "gpu") else accelerator)


def device_description(device: torch.device) -> str:
    """The device as a person reads it: 'AMD EPYC, 2 threads' or 'NVIDIA H200'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads"
    return device.type


def device_key(device: torch.device) -> str:
    """What a measurement depends on besides the network: the device, for a CPU also its flags
    (a virtual machine may call different generations just 'AMD EPYC') and its thread count."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda:{torch.cuda.get_device_name(device)}:sm{major}{minor}"
    if device.type == "cpu":
        flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
        return f"cpu:{cpu_model()}:flags-{flags}:threads-{torch.get_num_threads()}"
    return device.type


def low_precision(device: torch.device) -> str | None:
    """The mixed precision worth measuring against fp32 on this device, if any."""
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device.type == "cpu":
        return "bf16-mixed"
    return None  # MPS: fp32 (autocast there is not measured by foodnet)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast that Lightning's MixedPrecision plugin runs the forward pass in."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the cache

def cache_dir() -> Path:
    """foodnet's folder in the user's cache: $XDG_CACHE_HOME/foodnet, ~/.cache/foodnet, ..."""
    import platformdirs
    return Path(platformdirs.user_cache_dir("foodnet", appauthor=False))


class SpeedCache:
    """Measurements in one JSON file (speed.json), updated under a file lock: parallel runs and
    DDP ranks read what the first one measured."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "speed.json"

    def _read(self) -> dict:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or damaged: measure again
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict | None:
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT else None

    def put(self, key: str, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            entries[key] = {"format": CACHE_FORMAT, **entry}
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
            os.replace(partial, self.path)  # readers never see a half-written file


def measurement_key(device: torch.device, arch: str, image_size: int, *extra: object) -> str:
    return " | ".join(str(part) for part in (device_key(device), f"torch {torch.__version__}",
                                             arch, f"{image_size}px", *extra))


# ---------------------------------------------------------------- measuring

def mode_name(precision: str, channels_last: bool) -> str:
    return f"{precision} {'channels_last' if channels_last else 'contiguous'}"


@dataclass
class Calibration:
    """Images per second of the frozen backbone's forward in each (precision, layout) measured."""

    device: str
    batch: int = 1
    img_per_s: dict[str, float] = field(default_factory=dict)  # "32-true channels_last": 6.1
    spread: dict[str, float] = field(default_factory=dict)  # slowest / fastest sample
    skipped: dict[str, str] = field(default_factory=dict)  # setting: why it was not measured
    feature_error: dict[str, float] = field(default_factory=dict)  # precision: vs fp32
    seconds: float = 0.0
    complete: bool = True  # False: the budget ran out before every setting that matters ran
    load: float | None = None  # the machine's load average (1 min) when it was measured

    def rate(self, precision: str, channels_last: bool) -> float | None:
        return self.img_per_s.get(mode_name(precision, channels_last))

    def best(self, precision: str) -> tuple[bool, float] | None:
        """(channels_last, img/s) of the fastest layout measured in `precision`."""
        rates = [(cl, r) for cl in (True, False) if (r := self.rate(precision, cl)) is not None]
        return max(rates, key=lambda item: item[1]) if rates else None


def calibrate(backbone: nn.Module, image_size: int, device: torch.device | str,
              budget_s: float = CALIBRATION_BUDGET_S, max_batch: int = 64,
              batch: int | None = None,
              clock: Callable[[], float] = time.perf_counter) -> Calibration:
    """Time the backbone's forward (inference, eval mode) in fp32 and in mixed precision, each
    channels_last and contiguous: a warm-up and up to 3 timed samples each, interleaved, best of.

    channels_last goes first (usually the faster layout), so that a precision's other layout is
    skipped when it could not change the decision. A setting whose estimated time would overrun
    `budget_s` is skipped too, and then the calibration is incomplete. The budget counts from
    the end of the warm-up (the first forwards, where oneDNN or cuDNN pick their kernels: seconds
    for a big network on a busy CPU), so that fp32 channels_last is always timed. The batch is
    about CALIBRATION_FORWARD_S of fp32 forward, unless given.
    """
    device = torch.device(device)
    began = start = clock()
    low = low_precision(device)
    calibration = Calibration(device=device_description(device))
    samples: dict[str, list[float]] = {}
    estimate: dict[str, float] = {}  # seconds one sample of a setting takes
    repeats: dict[str, int] = {}  # forwards per sample
    was_training, layout_before = backbone.training, _memory_format(backbone)
    device_before = next((p.device for p in backbone.parameters()), device)
    backbone.eval().to(device)

    def forward(precision: str, channels_last: bool, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        backbone.to(memory_format=fmt)
        with torch.inference_mode(), autocast(device, precision):
            out = backbone(x.contiguous(memory_format=fmt))
        _synchronize(device)
        return out

    def sample(precision: str, channels_last: bool, x: torch.Tensor, warm_up: bool) -> None:
        name = mode_name(precision, channels_last)
        n = repeats.get(name, 1)
        t = clock()
        for _ in range(n):
            out = forward(precision, channels_last, x)
        seconds = max((clock() - t) / n, 1e-9)
        if warm_up:
            repeats[name] = int(min(50, max(1, math.ceil(SAMPLE_S / seconds))))
            if precision != FP32:
                error = (out.float() - reference).norm() / reference.norm().clamp(min=1e-12)
                calibration.feature_error[precision] = float(error)
        else:
            samples.setdefault(name, []).append(seconds)
            calibration.img_per_s[name] = x.shape[0] / min(samples[name])
            calibration.spread[name] = max(samples[name]) / min(samples[name])
        estimate[name] = seconds * repeats[name]

    def measure(precision: str, channels_last: bool, x: torch.Tensor) -> None:
        """Warm up and time one sample, unless that would overrun the budget."""
        name = mode_name(precision, channels_last)
        guess = estimate.get(mode_name(precision, not channels_last),
                             estimate.get(mode_name(FP32, channels_last), 0.0))
        if clock() - start + 2 * guess > budget_s:
            calibration.skipped[name] = f"over the {budget_s:.0f} s calibration budget"
            calibration.complete = False
            return
        sample(precision, channels_last, x, warm_up=True)
        sample(precision, channels_last, x, warm_up=False)

    try:
        generator = torch.Generator().manual_seed(0)
        one = torch.randn(1, 3, image_size, image_size, generator=generator).to(device)
        forward(FP32, True, one)  # warm-up: kernel selection, allocator
        per_image = math.inf
        for _ in range(3):
            t = clock()
            forward(FP32, True, one)
            per_image = min(per_image, clock() - t)
            if per_image > 0.1:  # a big network: another sample would not change the batch
                break
        calibration.batch = batch or int(max(1, min(max_batch,
                                                     CALIBRATION_FORWARD_S / per_image)))
        x = torch.randn(calibration.batch, 3, image_size, image_size,
                        generator=generator).to(device)
        reference = forward(FP32, True, x).float()
        start = clock()  # the budget is for the timed settings (see the docstring)

        settings = [(FP32, True), (FP32, False)]
        measure(FP32, True, x)
        measure(FP32, False, x)
        if low is not None:
            settings += [(low, True), (low, False)]
            measure(low, True, x)
            why = _cannot_win(calibration, low)
            if why:
                calibration.skipped[mode_name(low, False)] = why
                settings.remove((low, False))
            else:
                measure(low, False, x)
        for _ in range(2):  # two more samples of each, interleaved, while the budget allows
            for precision, channels_last in settings:
                name = mode_name(precision, channels_last)
                if name in samples and clock() - start + estimate[name] <= budget_s:
                    sample(precision, channels_last, x, warm_up=False)
    finally:
        backbone.to(device_before).to(memory_format=layout_before)
        backbone.train(was_training)
    calibration.seconds = clock() - began
    if hasattr(os, "getloadavg"):
        calibration.load = round(os.getloadavg()[0], 2)
    return calibration


def _memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last when the module's first 4-d weight is stored that way."""
    for param in module.parameters():
        if param.ndim == 4:
            if param.is_contiguous(memory_format=torch.channels_last) and \
                    not param.is_contiguous():
                return torch.channels_last
            break
    return torch.contiguous_format


def _cannot_win(calibration: Calibration, precision: str) -> str:
    """Why timing `precision`'s other layout could not change the decision ('' if it could): the
    layout measured runs at less than half the speed it would need to be chosen."""
    measured, fp32 = calibration.best(precision), calibration.best(FP32)
    if measured is None or fp32 is None:
        return ""
    if measured[1] * 2 < fp32[1] * LOW_PRECISION_MARGIN:
        return (f"{mode_name(precision, measured[0])} ran at {measured[1] / fp32[1]:.2f}x fp32: "
                "another layout would have to be twice as fast to change the decision")
    return ""


# ---------------------------------------------------------------- deciding

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
        margin = "" if ratio < LOW_PRECISION_MARGIN else f" in its slowest sample ({worst:.2f}x)"
        return PrecisionChoice(FP32, fp32[0], f"{low} ran at {ratio:.2f}x fp32, below the "
                                              f"{LOW_PRECISION_MARGIN}x margin{margin}")
    if error > MAX_FEATURE_ERROR:
        return PrecisionChoice(FP32, fp32[0], f"{low} ran at {ratio:.2f}x fp32 but its features "
                                              f"differ by {error:.1%} (over "
                                              f"{MAX_FEATURE_ERROR:.0%})")
    return PrecisionChoice(low, low_best[0], f"{ratio:.2f}x fp32")


@dataclass(frozen=True)
class SpeedSettings:
    """What a run uses, and why (the lines the run logs)."""

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


def choose_speed(backbone: nn.Module, image_size: int, device: torch.device | str, arch: str,
                 precision: str | int = "auto", channels_last: bool | str = "auto",
                 measure: bool = False, resumed: dict | None = None,
                 cache: SpeedCache | None = None) -> SpeedSettings:
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
        return SpeedSettings(precision, bool(channels_last), None, tuple(notes))
    cache = cache or SpeedCache()
    key = measurement_key(device, arch, image_size)
    entry = cache.get(key)
    if entry is not None:
        calibration = Calibration(**entry["calibration"])
        source = f"measured on {calibration.device}, cached in {cache.path}"
    else:
        calibration = calibrate(backbone, image_size, device)
        # Cached even when incomplete (fp32 then wins what was not measured): every run on this
        # machine must decide the same.
        cache.put(key, {"calibration": asdict(calibration)})
        source = (f"measured on {calibration.device} in {calibration.seconds:.1f} s, cached in "
                  f"{cache.path}")
    if not calibration.complete:
        over = [name for name, why in calibration.skipped.items() if "budget" in why]
        source += (f"; incomplete ({', '.join(over)} over the time budget): delete that file to "
                   "measure again")
    spread = max(calibration.spread.values(), default=1.0)
    if spread > NOISY_SPREAD:
        source += (f"; the machine was busy (load {calibration.load}, samples varied up to "
                   f"{spread:.1f}x): delete that file to measure again")
    choice = choose_precision(calibration, low_precision(device))
    if precision == "auto":
        precision = choice.precision
        notes.append(f"precision auto: {precision} ({choice.why}; {source})")
    if channels_last == "auto":
        measured = calibration.best(str(PRECISION_ALIASES.get(precision, precision)))
        channels_last = measured[0] if measured is not None else choice.channels_last
        notes.append(f"channels_last auto: {str(channels_last).lower()} "
                     f"({_layout_ratio(calibration, precision)}; {source})")
    return SpeedSettings(precision, bool(channels_last), calibration, tuple(notes))


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


# ---------------------------------------------------------------- compiling

@dataclass(frozen=True)
class CompileMeasurement:
    """What compiling the backbone cost and gained, timed on the run's own batches."""

    compile_s: float
    eager_s: float  # one batch, eager
    compiled_s: float  # a batch of the same shape, compiled
    batch: int

    @property
    def speedup(self) -> float:
        return self.eager_s / self.compiled_s


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


def compile_key(device: torch.device, arch: str, image_size: int, precision: str | int,
                channels_last: bool, batch: int) -> str:
    return measurement_key(device, arch, image_size, "compile", precision,
                           "channels_last" if channels_last else "contiguous", f"batch {batch}")


class CompiledForward:
    """A frozen module's forward through torch.compile (inductor, weights frozen as constants),
    checked against eager on the run's own batches.

    Only calls like the first full batch (`batch_size` images; shape, strides, dtype, grad,
    inference and autocast state) run compiled; others, such as an epoch's smaller last batch,
    run eager rather than compile again. The first call compiles; the second runs compiled and
    the third eager, both timed: when compiling did not make it faster, every later call runs
    eager. A compiler error logs a warning and the run goes on eager. Not an nn.Module, so the
    network's state_dict is unchanged.
    """

    def __init__(self, module: nn.Module, name: str = "backbone",
                 backend: str | Callable = "inductor", batch_size: int | None = None,
                 on_measured: Callable[[CompileMeasurement], None] | None = None):
        self.module = module
        self.name = name
        self.batch_size = batch_size  # None: whatever the first call brings
        self.backend = backend
        self.on_measured = on_measured
        self.state = "new"  # new -> compiled -> timed -> fast | eager
        self.signature: tuple | None = None
        self.compiled: Callable | None = None
        self.measurement: CompileMeasurement | None = None
        self._compile_s = self._compiled_s = 0.0

    @staticmethod
    def _signature(x: torch.Tensor) -> tuple:
        kind = x.device.type
        autocasting = torch.is_autocast_enabled(kind)
        return (tuple(x.shape), x.stride(), x.dtype, x.device, x.is_inference(),
                torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocasting,
                torch.get_autocast_dtype(kind) if autocasting else None)

    def _timed(self, fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = fn(x)
        _synchronize(x.device)
        return out, time.perf_counter() - start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == "eager" or (self.signature is not None
                                     and self._signature(x) != self.signature):
            return self.module(x)
        if self.state == "fast":
            return self.compiled(x)
        if self.state == "new":
            if self.batch_size is not None and x.shape[0] != self.batch_size:
                return self.module(x)  # wait for a full batch: the shape most calls have
            return self._compile(x)
        if self.state == "compiled":
            out, self._compiled_s = self._timed(self.compiled, x)
            self.state = "timed"
            return out
        out, eager_s = self._timed(self.module, x)  # "timed": the eager comparison
        self._decide(eager_s, int(x.shape[0]))
        return out

    def _compile(self, x: torch.Tensor) -> torch.Tensor:
        self.signature = self._signature(x)
        log.info("compile: compiling the %s (torch.compile, inductor, frozen weights) ...",
                 self.name)
        try:
            import torch._inductor.config as inductor_config

            # freezing: the weights become constants, so BatchNorm folds into the convolutions.
            with inductor_config.patch(freezing=True):
                self.compiled = torch.compile(self.module, backend=self.backend, dynamic=False)
                out, self._compile_s = self._timed(self.compiled, x)
        except Exception as err:  # whatever the compiler raises, the run goes on eager
            lines = [line for line in str(err).splitlines() if line.strip()]
            log.warning("compile: compiling the %s failed (%s: %s); it runs eager", self.name,
                        type(err).__name__, " ".join(lines[:2])[:300])
            self.state = "eager"
            return self.module(x)
        self.state = "compiled"
        return out

    def _decide(self, eager_s: float, batch: int) -> None:
        self.measurement = CompileMeasurement(
            compile_s=max(self._compile_s - self._compiled_s, 0.0), eager_s=eager_s,
            compiled_s=self._compiled_s, batch=batch)
        faster = self.measurement.speedup > 1.0
        self.state = "fast" if faster else "eager"
        log.info("compile: the %s runs %s: %.2fx eager (%.2f s vs %.2f s per batch of %d) "
                 "after %.0f s of compiling", self.name, "compiled" if faster else "eager",
                 self.measurement.speedup, self._compiled_s, eager_s, batch,
                 self.measurement.compile_s)
        if self.on_measured is not None:
            self.on_measured(self.measurement)

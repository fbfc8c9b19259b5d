"""Measuring the frozen backbone: images per second in each precision and memory layout
(`calibrate`), and the size of its largest activation.

Which precision and layout run a network fastest depends on the machine in ways that no table of
CPU names gets right: AVX512-BF16 without AMX made bf16 slower than fp32 on one Xeon and twice as
fast on a Zen 4 EPYC, and AVX2-only CPUs emulate it at a fraction of fp32's speed. So the run's own
backbone is timed at the run's image size, for a few seconds, in each candidate setting.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from foodnet.machine import device_description

CALIBRATION_BUDGET_S = 15.0  # wall time one calibration may take (it skips what would overrun)
CALIBRATION_FORWARD_S = 0.5  # its batch: about this long in fp32 (1-3 images of a ResNet152 on CPU)
# Mixed precision is chosen only when at least this much faster than fp32 (speed.decide); the
# calibration skips a layout that could not reach it.
LOW_PRECISION_MARGIN = 1.2
SAMPLE_S = 0.05  # a timed sample repeats a fast forward until it lasts this long (timer noise)
FP32 = "32-true"


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        synchronize(device)
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

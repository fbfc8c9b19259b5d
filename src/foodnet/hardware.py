"""What this machine is and what runs fast on it: precision, loader workers."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# CPU flags of the units that make bf16 convolutions/matmuls faster than fp32 in oneDNN: AMX
# tiles. AVX512-BF16 alone is not enough: on a Xeon with avx512_bf16 and no AMX, oneDNN's bf16
# convolutions ran at 0.58x the fp32 speed (89 vs 155 GFLOPS per core) and ResNet152's forward
# at 0.77x (channels_last) to 0.93x (contiguous), so autocast would make foodnet slower there
# (benchmarks/results/).
BF16_CPU_FLAGS = frozenset({"amx_bf16"})


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


def cpu_runs_bf16_fast(flags: set[str] | None = None) -> bool:
    return bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def _device_type(accelerator: str) -> str:
    """The device Lightning will pick for `accelerator` (cuda, mps, cpu or the name given)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu" if accelerator == "auto" else accelerator


def auto_precision(accelerator: str = "auto") -> str:
    """bf16-mixed where bf16 runs faster than fp32 (CUDA with bf16, CPUs with AMX), 16-mixed on
    older CUDA GPUs, else 32-true."""
    device = _device_type(accelerator)
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if device == "cpu" and cpu_runs_bf16_fast():
        return "bf16-mixed"
    # MPS and CPUs without AMX: fp32 (mixed precision not measured faster there).
    return "32-true"


def resolve_precision(precision: str | int, accelerator: str = "auto") -> str | int:
    """`auto` becomes this machine's fastest precision; any explicit value is kept as given."""
    return auto_precision(accelerator) if precision == "auto" else precision


def auto_num_workers() -> int:
    """Decode in parallel with every core the process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, 8)

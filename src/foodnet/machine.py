"""What this machine is: its device, CPU and cache, how many workers it can run, where its user
cache folder is. Facts only; what runs fast on it is measured in foodnet.speed."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from foodnet.errors import ConfigError

# torch is imported where a device is asked about: the data tools read the worker count and
# their --help answers without importing torch.
if TYPE_CHECKING:
    import torch

MAX_AUTO_WORKERS = 8  # more decoding processes than this only add memory and start-up time


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


def num_workers(option: int | str = "auto") -> int:
    """Decoding workers: `auto` is every core the process may use, at most 8; an int as given."""
    if option != "auto":
        return int(option)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, MAX_AUTO_WORKERS)


def resolve_device(accelerator: str = "auto") -> torch.device:
    """The device that Lightning picks for `trainer.accelerator` (also predict's `--device`):
    auto takes CUDA, else Apple's MPS, else the CPU."""
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if accelerator in ("gpu", "cuda", "mps"):
        raise ConfigError(f"device {accelerator}: none is available on this machine; use cpu "
                          "or auto")
    return torch.device("cpu" if accelerator == "auto" else accelerator)


def device_description(device: torch.device) -> str:
    """The device as a person reads it: 'AMD EPYC, 2 threads' or 'NVIDIA H200'."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads"
    return device.type


def device_key(device: torch.device) -> str:
    """What a measurement depends on besides the network: the device, for a CPU also its flags
    (a virtual machine may call different generations just 'AMD EPYC') and its thread count."""
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda:{torch.cuda.get_device_name(device)}:sm{major}{minor}"
    if device.type == "cpu":
        flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
        return f"cpu:{cpu_model()}:flags-{flags}:threads-{torch.get_num_threads()}"
    return device.type


def user_cache_dir() -> Path:
    """foodnet's folder in the user's cache: $XDG_CACHE_HOME/foodnet, ~/.cache/foodnet, ..."""
    import platformdirs
    return Path(platformdirs.user_cache_dir("foodnet", appauthor=False))

"""Measurements cached in the user's cache folder (speed.json), one entry per key: every run on
this machine decides the same from what the first one measured."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from foodnet.machine import device_key, user_cache_dir

try:
    import fcntl
except ImportError:  # Windows: parallel runs may then race on the cache file, which stays valid
    fcntl = None

CACHE_FORMAT = 1  # bump when what an entry holds changes: older entries are then ignored


class SpeedCache:
    """Measurements in one JSON file (speed.json), updated under a file lock: parallel runs and
    DDP ranks read what the first one measured."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else user_cache_dir() / "speed.json"

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


@dataclass(frozen=True)
class CacheEntry:
    """One entry of a SpeedCache, as plain values (a SpeedPlan carries one, and pickles)."""

    path: Path
    key: str

    def get(self) -> dict | None:
        return SpeedCache(self.path).get(self.key)

    def put(self, entry: dict) -> None:
        SpeedCache(self.path).put(self.key, entry)


def measurement_key(device: torch.device, arch: str, image_size: int, *extra: object) -> str:
    """A calibration's key: the device, torch's version, the architecture and the image size."""
    return " | ".join(str(part) for part in (device_key(device), f"torch {torch.__version__}",
                                             arch, f"{image_size}px", *extra))


def compile_key(device: torch.device, arch: str, image_size: int, precision: str | int,
                channels_last: bool, batch: int) -> str:
    """A compile measurement's key: the calibration's and the settings it compiled in."""
    return measurement_key(device, arch, image_size, "compile", precision,
                           "channels_last" if channels_last else "contiguous", f"batch {batch}")

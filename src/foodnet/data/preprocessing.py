"""Preprocessing: one record (input size, resize and crop, mean, std, interpolation) owned by
the backbone's weights, made once per run, saved in the checkpoint; the eval preset.
Train-time augmentation is a separate policy (foodnet.data.augment)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from torchvision import transforms as T

from foodnet.errors import ConfigError

CROP_MODES = ("squash", "center")  # timm's vocabulary: squash = resize to a square, no crop
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the network's input, as the backbone's weights were trained.

    crop_mode=squash resizes to image_size x image_size (the seed's eval preset, no crop);
    center resizes the shorter side to image_size / crop_pct, then crops the centre square.
    """

    image_size: int
    crop_mode: str
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def __post_init__(self) -> None:
        # Values come from YAML overrides and checkpoints: normalise, then check them.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if not isinstance(self.image_size, int) or self.image_size < 8:
            problems.append(f"image_size={self.image_size}: expected an integer >= 8")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode={self.crop_mode} must be one of {', '.join(CROP_MODES)}")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct={self.crop_pct} must be in (0, 1]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean={list(self.mean)} and std={list(self.std)} need 3 values "
                            "each (RGB), std > 0")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation} must be one of "
                            f"{', '.join(INTERPOLATIONS)}")
        if problems:
            raise ConfigError("; ".join(f"model.preprocessing.{p}" for p in problems))

    def override(self, **values: Any) -> Preprocessing:
        """A copy with the given values; None keeps the weights' own value."""
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"model.preprocessing has no key {', '.join(sorted(unknown))}; "
                              f"the keys are {', '.join(f.name for f in fields(self))}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), so a checkpoint loads with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(**values)

    def describe(self) -> str:
        """One line for the run's log."""
        if self.crop_mode == "squash":
            resize = f"resize to {self.image_size}x{self.image_size} (no crop)"
        else:
            resize = (f"resize the shorter side to {self.resize_size}, centre crop "
                      f"{self.image_size}x{self.image_size}")
        mean = ", ".join(f"{v:.3g}" for v in self.mean)
        std = ", ".join(f"{v:.3g}" for v in self.std)
        return f"{resize}, {self.interpolation}, mean ({mean}), std ({std})"

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop (crop_mode=center), as timm rounds it."""
        return math.floor(self.image_size / self.crop_pct + 1e-6)

    def _interpolation(self) -> T.InterpolationMode:
        return T.InterpolationMode(self.interpolation)

    def eval_transform(self) -> T.Compose:
        """Deterministic: resize (and crop), to tensor, normalise."""
        size, mode = self.image_size, self._interpolation()
        if self.crop_mode == "squash":
            resize = [T.Resize([size, size], interpolation=mode)]
        else:
            resize = [T.Resize(self.resize_size, interpolation=mode), T.CenterCrop(size)]
        return T.Compose([*resize, T.ToTensor(), T.Normalize(list(self.mean), list(self.std))])

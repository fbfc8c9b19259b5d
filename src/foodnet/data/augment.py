"""Train-time augmentation policies, chosen by the `augment` config group (conf/augment/).

A policy turns the run's Preprocessing (what the weights expect) into the train transform:
its random augmentation, then resizing, to tensor and normalising as the weights were trained.
Like torchvision's references/classification/presets.py, a policy is a small class; its
`to_dict()` goes into the checkpoint next to the preprocessing record. Policies are plain
picklable values: the loader workers receive the transform they build.

Every policy also takes the options that apply to any of them: random erasing after normalising
(`erasing`, a probability) and batch mixing (`mix`: MixUp, CutMix or both, with `mix_alpha`),
which BatchMix applies in the train loader's collate function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torchvision import transforms as T
from torchvision.transforms import v2

from foodnet.data.preprocessing import Preprocessing
from foodnet.data.sampling import seeded_rngs
from foodnet.errors import ConfigError

# augment.mix: MixUp, CutMix, or one of the two drawn per batch (torchvision's RandomChoice).
MIX_KINDS = ("mixup", "cutmix", "both")


@dataclass(frozen=True)
class Augmentation:
    """A train-time policy (a frozen dataclass): `transform(preprocessing)` gives the train
    transform; its fields are its parameters. The options are off here (no erasing, no mixing)
    for a policy built in code; a run's come from conf/augment/_options.yaml."""

    name: ClassVar[str]
    # False for a policy that draws nothing at random: views of an image would all be equal.
    random: ClassVar[bool] = True
    erasing: float = 0.0
    mix: str | None = None
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.erasing <= 1.0:
            raise ConfigError(f"augment.erasing={self.erasing} must be a probability in [0, 1]")
        if self.mix is not None and self.mix not in MIX_KINDS:
            raise ConfigError(f"augment.mix={self.mix} must be one of {', '.join(MIX_KINDS)} "
                              "or null")
        if self.mix_alpha <= 0:
            raise ConfigError(f"augment.mix_alpha={self.mix_alpha} must be positive (1.0: "
                              "torchvision's default for MixUp and CutMix)")

    def erasing_ops(self) -> list:
        """Random erasing on the normalised tensor, as torchvision's and timm's presets place it."""
        return [v2.RandomErasing(p=self.erasing)] if self.erasing > 0 else []

    def batch_mix(self, num_classes: int, collate: Callable) -> BatchMix | None:
        """The train loader's collate function with this policy's mixing; None without mixing."""
        if self.mix is None:
            return None
        return BatchMix(self.mix, self.mix_alpha, num_classes, collate)

    def transform(self, preprocessing: Preprocessing) -> Callable:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain values (name first), so a checkpoint loads with weights_only=True."""
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class NoAugment(Augmentation):
    """No augmentation: training sees the eval transform."""

    name: ClassVar[str] = "none"
    random: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.erasing:
            raise ConfigError(f"augment.erasing={self.erasing} with augment=none: erasing is an "
                              "option of a policy that augments; use augment=light (or seed, "
                              "trivial, randaugment) with it, or augment.erasing=0")

    def transform(self, preprocessing: Preprocessing) -> Callable:
        return preprocessing.eval_transform()


@dataclass(frozen=True)
class SeedAugment(Augmentation):
    """The seed's recipe (its ResNet152 food-classification blog), at the weights' input size.

    Resize to image_size * 300/256 (the seed's 300 before its 256 crop), rotate, centre crop to
    image_size, flip, jitter colours, sometimes grey, then to tensor and normalise.
    """

    name: ClassVar[str] = "seed"
    resize_ratio: float = 300 / 256
    rotation: float = 45
    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    grayscale: float = 0.1

    def transform(self, preprocessing: Preprocessing) -> Callable:
        size = preprocessing.image_size
        resize = round(size * self.resize_ratio)
        # squash resizes to a square as the seed did; center keeps the aspect ratio.
        return T.Compose([
            T.Resize([resize, resize] if preprocessing.crop_mode == "squash" else resize,
                     interpolation=T.InterpolationMode(preprocessing.interpolation)),
            T.RandomRotation(self.rotation),
            T.CenterCrop(size),
            T.RandomHorizontalFlip(p=self.hflip),
            T.RandomVerticalFlip(p=self.vflip),
            T.ColorJitter(brightness=self.brightness, contrast=self.contrast,
                          saturation=self.saturation, hue=self.hue),
            T.RandomGrayscale(p=self.grayscale),
            T.ToTensor(),
            T.Normalize(list(preprocessing.mean), list(preprocessing.std)),
            *self.erasing_ops(),
        ])


@dataclass(frozen=True, kw_only=True)
class CropFlipAugment(Augmentation):
    """`light`: a random resized crop and a horizontal flip, as torchvision's and timm's train
    presets start (the crop replaces the eval resize).

    `extra_ops` adds a policy after them (TrivialAugmentWide, RandAugment). `on_tensors`: the ops
    run on uint8 tensors (torchvision transforms v2) where that measured faster than on PIL
    images: for the crop and flip alone (docs/training.md has the figures)."""

    name: ClassVar[str] = "light"
    on_tensors: ClassVar[bool] = True
    # No defaults here: conf/augment/<name>.yaml holds them (keyword-only, so none can be left out).
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))

    def extra_ops(self) -> list:
        return []

    def transform(self, preprocessing: Preprocessing) -> Callable:
        mode = v2.InterpolationMode(preprocessing.interpolation)
        ops = [v2.RandomResizedCrop(preprocessing.image_size, scale=self.scale, ratio=self.ratio,
                                    interpolation=mode, antialias=True),
               v2.RandomHorizontalFlip(p=self.hflip), *self.extra_ops()]
        to_tensor = [v2.PILToTensor()]
        steps = [*to_tensor, *ops] if self.on_tensors else [*ops, *to_tensor]
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(preprocessing.mean), list(preprocessing.std)),
                           *self.erasing_ops()])

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        return {**values, "scale": list(self.scale), "ratio": list(self.ratio)}


@dataclass(frozen=True, kw_only=True)
class TrivialAugment(CropFlipAugment):
    """`trivial`: crop and flip, then TrivialAugmentWide (one random op at a random strength)."""

    name: ClassVar[str] = "trivial"
    on_tensors: ClassVar[bool] = False  # measured: as fast on PIL images as on uint8 tensors
    num_magnitude_bins: int

    def extra_ops(self) -> list:
        return [v2.TrivialAugmentWide(num_magnitude_bins=self.num_magnitude_bins)]


@dataclass(frozen=True, kw_only=True)
class RandAugment(CropFlipAugment):
    """`randaugment`: crop and flip, then RandAugment (num_ops random ops at one strength)."""

    name: ClassVar[str] = "randaugment"
    on_tensors: ClassVar[bool] = False  # measured: faster on PIL images than on uint8 tensors
    num_ops: int
    magnitude: int

    def extra_ops(self) -> list:
        return [v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude)]


class BatchMix:
    """MixUp and/or CutMix on a collated batch, in the loader's collate function as torchvision's
    references/classification do: labels become soft targets (N, num_classes).

    Items arrive as (image, label, seed) from SeededSamples(with_seed=True); the mix of a batch is
    drawn from its samples' seeds, so like the per-image augmentation it depends on (seed, epoch)
    only and a resumed run mixes its batches the same way. Items that are not tuples (bad images)
    pass through to `collate` untouched.
    """

    def __init__(self, kind: str, alpha: float, num_classes: int, collate: Callable):
        mixers = {"mixup": [v2.MixUp(alpha=alpha, num_classes=num_classes)],
                  "cutmix": [v2.CutMix(alpha=alpha, num_classes=num_classes)]}
        mixers["both"] = mixers["mixup"] + mixers["cutmix"]
        self.mix = v2.RandomChoice(mixers[kind])
        self.collate = collate

    def __call__(self, items: list):
        seeds = [item[2] for item in items if isinstance(item, tuple)]
        results = self.collate([item[:2] if isinstance(item, tuple) else item for item in items])
        images, labels, *rest = results
        if not seeds:
            return results
        with seeded_rngs(sum(seeds) % 2**62):
            images, labels = self.mix(images, labels)
        return (images, labels, *rest)

"""Train-time augmentation policies, chosen by the `augment` config group (conf/augment/).

A policy turns the run's Preprocessing (what the weights expect) into the train transform:
its random augmentation, then resizing, to tensor and normalising as the weights were trained.
Like torchvision's references/classification/presets.py, a policy is a small class; its
`to_dict()` goes into the checkpoint next to the preprocessing record. Policies are plain
picklable values: the loader workers receive the transform they build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torchvision import transforms as T

from foodnet.data.preprocessing import Preprocessing


class Augmentation:
    """A train-time policy (a frozen dataclass): `transform(preprocessing)` gives the train
    transform; its fields are its parameters."""

    name: ClassVar[str]
    # False for a policy that draws nothing at random: views of an image would all be equal.
    random: ClassVar[bool] = True

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
        ])

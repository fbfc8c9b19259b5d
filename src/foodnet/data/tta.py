"""Test-time augmentation: each image as a few deterministic views of the eval preset, the
model's probabilities averaged over them (evaluate, predict and serve share this).

none: the eval transform alone (one view). flip: it and its horizontal mirror (2 views).
five: torchvision's FiveCrop (the centre and the four corners) at the input size, over the image
resized as the eval preset would but to image_size / crop_pct, and at least 8/7 of image_size
(weights that use no crop, crop_pct=1, would otherwise give five identical views).
"""

from __future__ import annotations

import math

import torch
from torchvision import transforms as T

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError

TTA_MODES = ("none", "flip", "five")
# timm's usual crop_pct: the margin five's corner crops get when the weights crop none.
_FIVE_CROP_PCT = 0.875


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode}: expected one of {', '.join(TTA_MODES)}")
    return mode


def tta_transform(preprocessing: Preprocessing, mode: str) -> Views:
    """PIL image -> (views, C, H, W), normalised as the weights expect."""
    return Views(preprocessing, check_tta(mode))


class Views:
    """The views of one image (a class, not a closure: loader workers may pickle it)."""

    def __init__(self, preprocessing: Preprocessing, mode: str):
        self.mode = mode
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(list(preprocessing.mean),
                                                              list(preprocessing.std))])
        if mode != "five":
            self.single = preprocessing.eval_transform()
            return
        size = preprocessing.image_size
        resize = math.floor(size / min(preprocessing.crop_pct, _FIVE_CROP_PCT) + 1e-6)
        shape = [resize, resize] if preprocessing.crop_mode == "squash" else resize
        self.crops = T.Compose([T.Resize(shape, interpolation=T.InterpolationMode(
            preprocessing.interpolation)), T.FiveCrop(size)])

    def __call__(self, image) -> torch.Tensor:
        if self.mode == "none":
            return self.single(image).unsqueeze(0)
        if self.mode == "flip":
            # Normalisation is per channel: mirroring the normalised tensor mirrors the image.
            tensor = self.single(image)
            return torch.stack([tensor, tensor.flip(-1)])
        corners_then_centre = self.crops(image)
        # The centre first, as the eval preset's own view.
        views = [corners_then_centre[4], *corners_then_centre[:4]]
        return torch.stack([self.to_tensor(view) for view in views])


def average_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """(N, views, C) probabilities -> (N, C), their mean over the views (still summing to 1)."""
    return probs.mean(dim=1)

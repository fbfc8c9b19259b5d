"""The transfer model: a pretrained backbone with a new Linear head, its backbone maybe frozen."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError
from foodnet.models.sources import create_backbone


class TransferNet(nn.Module):
    """A pretrained backbone (pooled features out) followed by a new Linear head.

    `preprocessing` is what the backbone's weights expect (train.py may override parts of it; the
    run's own record is saved in the checkpoint).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, arch: str,
                 preprocessing: Preprocessing | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.preprocessing = preprocessing
        # What runs the frozen backbone, when not the module itself: a compiled forward
        # (hardware.CompiledForward). A plain callable, not a submodule: the state_dict is the same.
        self.frozen_forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Images per pass of the frozen backbone (None: the whole batch). Smaller passes keep its
        # activations small (memory) and, on a CPU, in cache (foodnet.hardware.backbone_batch).
        self.backbone_batch: int | None = None

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # A frozen backbone needs no autograd graph: skipping it saves memory and time.
        if self.backbone_frozen:
            with torch.no_grad():
                return self.frozen_features(x)
        return self.backbone(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's features, `backbone_batch` images at a time (the same values:
        it runs in eval mode, where every image is computed on its own)."""
        run = self.frozen_forward or self.backbone
        if self.backbone_batch is None or x.shape[0] <= self.backbone_batch:
            return run(x)
        return torch.cat([run(chunk) for chunk in x.split(self.backbone_batch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(arch: str = "resnet152", num_classes: int = 20, weights: str | None = "DEFAULT",
                 freeze: bool = True) -> TransferNet:
    """Build `arch` with `weights`, replace its head by a Linear(num_classes), maybe freeze."""
    if num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes} must be positive")
    backbone = create_backbone(arch, weights)
    model = TransferNet(backbone=backbone.net, head=nn.Linear(backbone.num_features, num_classes),
                        arch=arch, preprocessing=backbone.preprocessing)
    set_backbone_trainable(model, not freeze)
    return model


def set_backbone_trainable(model: TransferNet, trainable: bool) -> None:
    for param in model.backbone.parameters():
        param.requires_grad = trainable

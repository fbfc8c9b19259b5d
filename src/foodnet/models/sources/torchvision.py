"""torchvision: `model.arch=resnet152` (any torchvision classification model name). The fallback
source: it takes every name no other source takes, and says the choices for an unknown one."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError, WeightsError
from foodnet.models.sources import registry
from foodnet.models.sources.base import OFFLINE_BACKBONE, Backbone, BackboneSource
from foodnet.models.weights import (
    DEFAULT,
    as_path,
    file_name,
    is_none,
    load_state_dict,
    load_weights_file,
)

# Where torchvision classifiers keep their final Linear layer.
HEAD_NAMES = ("fc", "classifier", "heads", "head")
# Families whose top-level children are their stages in forward order (ResNet: conv1, bn1,
# layer1 .. layer4). Others nest their stages differently.
STAGED = ("resnet", "resnext", "wide_resnet")


def resolve_weights(arch: str, weights: str | None):
    """Map model.weights to a torchvision weights enum, a local file Path, or None."""
    if is_none(weights):
        return None
    path = as_path(weights)
    if path is not None:
        return path
    text = str(weights)
    enum = models.get_model_weights(arch)
    prefix, _, name = text.rpartition(".")  # "ResNet152_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"
    if prefix and prefix != enum.__name__:
        names = ", ".join(f"{enum.__name__}.{member}" for member in enum.__members__)
        raise ConfigError(f"model.weights={text} are not weights of model.arch={arch}; use "
                          f"one of {names}, a .pth file, or null")
    try:
        return enum[name]
    except KeyError:
        choices = ", ".join([DEFAULT, *enum.__members__])
        raise WeightsError(f"model.weights={text} is not a weights name of {arch}; "
                           f"choose one of {choices}, a .pth file path, or null") from None


def download_help(weights) -> str:
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"could not download {weights} from {weights.url}. Ways out: {OFFLINE_BACKBONE}, "
            f"or place {filename} in "
            f"{cache}/ (copy it from a machine with internet), or pass "
            "model.weights=/path/to/weights.pth (a state_dict for this arch), or "
            "model.weights=null finetune=full to train the whole network from random "
            "initialisation (with the default finetune=freeze a random backbone stays random "
            "and only the head learns)")


def weights_preprocessing(weights) -> Preprocessing:
    """From weights.transforms(): torchvision's eval preset (shorter side resized, centre crop)."""
    preset = weights.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return Preprocessing(image_size=crop, crop_mode="center", crop_pct=crop / resize,
                         mean=tuple(preset.mean), std=tuple(preset.std),
                         interpolation=preset.interpolation.value)


def load_classifier(arch: str, weights: str | None):
    """(the whole torchvision classifier with its weights, the weights enum whose metadata
    describes its preprocessing: the named one, else the arch's DEFAULT, the name of the weights
    loaded: `ResNet152_Weights.IMAGENET1K_V2`, a file, or None)."""
    resolved = resolve_weights(arch, weights)
    default = models.get_model_weights(arch).DEFAULT
    if isinstance(resolved, Path) or resolved is None:
        net = models.get_model(arch, weights=None)
        if resolved is None:
            return net, default, None
        head = tuple(name for name in HEAD_NAMES if hasattr(net, name))
        load_weights_file(net, load_state_dict(resolved), resolved, arch, head)
        return net, default, file_name(resolved)
    try:
        # str() of a weights enum member is its full name, DEFAULT resolved.
        return models.get_model(arch, weights=resolved), resolved, str(resolved)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise WeightsError(download_help(resolved)) from err


def head_slot(net: nn.Module) -> tuple[nn.Module, str]:
    """Find the final Linear layer of a torchvision classifier: (parent module, attribute)."""
    for parent_name in HEAD_NAMES:
        module = getattr(net, parent_name, None)
        if isinstance(module, nn.Linear):
            return net, parent_name
        if isinstance(module, nn.Sequential):
            for index in reversed(range(len(module))):
                if isinstance(module[index], nn.Linear):
                    return module, str(index)
    raise ConfigError(f"cannot find the classification head of {type(net).__name__}: "
                      "supported are models whose head is fc, classifier, heads or head")


class TorchvisionSource(BackboneSource):
    name = "torchvision"

    def matches(self, arch: str) -> bool:
        return True  # the fallback: check() refuses a name torchvision does not have

    def check(self, arch: str) -> None:
        known = models.list_models(module=models)
        if arch not in known:
            others = ", or ".join(source.choices for source in registry.SOURCES)
            raise ConfigError(f"unknown model.arch={arch!r}; torchvision classification models "
                              f"are: {', '.join(sorted(known))}" + (f"; or {others}" if others
                                                                    else ""))

    def check_weights(self, arch: str, weights: str) -> None:
        resolve_weights(arch, weights)

    def create(self, arch: str, weights: str | None) -> Backbone:
        net, meta_weights, loaded = load_classifier(arch, weights)
        parent, attr = head_slot(net)
        old_head = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
        if attr.isdigit():
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())
        return Backbone(net, old_head.in_features, weights_preprocessing(meta_weights), loaded)

    def stages(self, arch: str, net: nn.Module) -> list[list[nn.Module]]:
        if not arch.startswith(STAGED):
            raise ConfigError(
                f"finetune=gradual knows the stages of torchvision "
                f"{', '.join(f + '*' for f in STAGED)}, of every timm/<name> model "
                f"and of efficientnet_lite0, not model.arch={arch}; use finetune=full or "
                "finetune=freeze")
        return [[child] for child in net.children() if any(True for _ in child.parameters())]


TORCHVISION = TorchvisionSource()

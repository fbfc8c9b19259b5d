"""The registry of backbone sources: `model.arch` -> the source that builds it."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from foodnet.errors import ConfigError
from foodnet.models.sources.base import Backbone, BackboneSource
from foodnet.models.weights import is_none

S = TypeVar("S", bound=BackboneSource)

# Asked in registration order; the fallbacks after every other source, so that a source
# registered later is still asked before the one that takes any name.
SOURCES: list[BackboneSource] = []
FALLBACKS: list[BackboneSource] = []


def register(source: S, *, fallback: bool = False) -> S:
    """Make `source` known to create_backbone and the checks; returns it."""
    (FALLBACKS if fallback else SOURCES).append(source)
    return source


def get_source(arch: str) -> BackboneSource:
    for source in (*SOURCES, *FALLBACKS):
        if source.matches(arch):
            return source
    raise ConfigError(f"unknown model.arch={arch!r}: no backbone source takes it")


def check_arch(arch: str) -> None:
    get_source(arch).check(arch)


def check_weights(arch: str, weights: str | None) -> None:
    """That model.weights names weights of this arch, before anything is built or downloaded."""
    if not is_none(weights):
        get_source(arch).check_weights(arch, weights)


def create_backbone(arch: str, weights: str | None) -> Backbone:
    """The backbone named by `arch` with `weights` (DEFAULT, a name or tag, a file, or None)."""
    source = get_source(arch)
    source.check(arch)
    return source.create(arch, weights)


def backbone_stages(arch: str, net: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages in forward order, each a list of modules (for gradual unfreezing)."""
    return get_source(arch).stages(arch, net)

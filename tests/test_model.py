import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models

from foodnet.errors import WeightsError
from foodnet.models.sources.torchvision import resolve_weights
from foodnet.models.transfer import create_model


def test_head_is_sized_from_the_old_head_and_backbone_frozen():
    net = create_model("resnet18", num_classes=7, weights=None, freeze=True)
    assert net.head.in_features == models.resnet18().fc.in_features == 512
    assert net.head.out_features == 7
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_freeze_false_trains_everything():
    net = create_model("resnet18", num_classes=3, weights=None, freeze=False)
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_0", "vit_b_16"])
def test_other_head_layouts(arch):
    if arch == "squeezenet1_0":  # its head is a Conv2d, not a Linear: refused clearly
        with pytest.raises(ValueError, match="cannot find the classification head"):
            create_model(arch, num_classes=3, weights=None)
        return
    net = create_model(arch, num_classes=3, weights=None)
    assert net.head.out_features == 3


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="unknown model.arch='resnet_9000'.*resnet152"):
        create_model("resnet_9000", weights=None)


def test_weights_names_resolve():
    assert resolve_weights("resnet152", "DEFAULT") is models.ResNet152_Weights.DEFAULT
    assert resolve_weights("resnet152", "IMAGENET1K_V1") is \
        models.ResNet152_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet152", "ResNet152_Weights.IMAGENET1K_V2") is \
        models.ResNet152_Weights.IMAGENET1K_V2
    assert resolve_weights("resnet152", None) is None
    with pytest.raises(WeightsError, match="not a weights name of resnet152.*IMAGENET1K_V2"):
        resolve_weights("resnet152", "IMAGENET22K")


def test_local_pth_state_dict_loads(tmp_path):
    reference = models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = create_model("resnet18", num_classes=5, weights=str(path), freeze=True)
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(net.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_pth_that_does_not_fit_the_arch_names_the_file(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=rf"{path}: weights do not fit resnet34"):
        create_model("resnet34", weights=str(path))


def test_missing_or_foreign_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="file not found"):
        create_model("resnet18", weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=rf"{junk}: not a loadable state_dict"):
        create_model("resnet18", weights=str(junk))


def test_failed_download_says_the_way_out(monkeypatch, _offline_torch_home):
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", weights="DEFAULT")
    message = str(err.value)
    filename = Path(models.ResNet18_Weights.DEFAULT.url).name
    assert filename in message
    assert str(Path(_offline_torch_home) / "hub" / "checkpoints") in message
    assert "model.weights=/path/to/weights.pth" in message
    assert "model.weights=null" in message


def test_weights_placed_in_the_hub_cache_load_offline(monkeypatch, _offline_torch_home):
    """Following the message's advice works: a file in the hub cache loads with weights=DEFAULT."""
    reference = models.resnet18(weights=None)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / Path(models.ResNet18_Weights.DEFAULT.url).name)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("tried to download"))
    net = create_model("resnet18", num_classes=4, weights="DEFAULT")
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)
    assert net.weights == "ResNet18_Weights.IMAGENET1K_V1"  # DEFAULT, named for the model card

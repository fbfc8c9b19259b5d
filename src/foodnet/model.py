"""Build a torchvision classifier by name, load its weights, give it a new head, freeze it."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision import models


class WeightsError(RuntimeError):
    """Pretrained weights cannot be resolved or loaded; the message says the way out."""


class TransferNet(nn.Module):
    """A pretrained backbone (pooled features out) followed by a new Linear head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, arch: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # A frozen backbone needs no autograd graph: skipping it saves memory and time.
        if self.backbone_frozen:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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
    raise ValueError(f"cannot find the classification head of {type(net).__name__}: "
                     "supported are models whose head is fc, classifier, heads or head")


def available_archs() -> list[str]:
    return sorted(models.list_models(module=models))


def resolve_weights(arch: str, weights: str | None):
    """Map model.weights to a torchvision weights enum, a local file Path, or None."""
    if weights is None or str(weights).lower() in ("null", "none", ""):
        return None
    text = str(weights)
    if text.endswith((".pth", ".pt", ".bin")) or "/" in text or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights={text}: file not found")
        return path
    enum = models.get_model_weights(arch)
    name = text.split(".")[-1]  # accept "ResNet152_Weights.IMAGENET1K_V2" and "IMAGENET1K_V2"
    try:
        return enum[name]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise WeightsError(f"model.weights={text} is not a weights name of {arch}; "
                           f"choose one of {choices}, a .pth file path, or null") from None


def _download_help(weights) -> str:
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"could not download {weights} from {weights.url}. Ways out: place {filename} in "
            f"{cache}/ (copy it from a machine with internet), or pass "
            "model.weights=/path/to/weights.pth (a state_dict for this arch), or "
            "model.weights=null to start from random initialisation")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or truncated files
        raise WeightsError(f"{path}: not a loadable state_dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def create_model(arch: str = "resnet152", num_classes: int = 20, weights: str | None = "DEFAULT",
                 freeze: bool = True) -> TransferNet:
    """Build `arch` with `weights`, replace its head by a Linear(num_classes), maybe freeze."""
    if arch not in available_archs():
        raise ValueError(f"unknown model.arch={arch!r}; torchvision classification models are: "
                         f"{', '.join(available_archs())}")
    if num_classes < 1:
        raise ValueError(f"model.num_classes={num_classes} must be positive")
    resolved = resolve_weights(arch, weights)
    if isinstance(resolved, Path) or resolved is None:
        net = models.get_model(arch, weights=None)
        if resolved is not None:
            try:
                net.load_state_dict(_load_state_dict(resolved))
            except RuntimeError as err:
                raise WeightsError(f"{resolved}: weights do not fit {arch} ({err})") from err
    else:
        try:
            net = models.get_model(arch, weights=resolved)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise WeightsError(_download_help(resolved)) from err

    parent, attr = _head_slot(net)
    old_head = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    head = nn.Linear(old_head.in_features, num_classes)
    if attr.isdigit():
        parent[int(attr)] = nn.Identity()
    else:
        setattr(parent, attr, nn.Identity())
    model = TransferNet(backbone=net, head=head, arch=arch)
    set_backbone_trainable(model, not freeze)
    return model


def set_backbone_trainable(model: TransferNet, trainable: bool) -> None:
    for param in model.backbone.parameters():
        param.requires_grad = trainable

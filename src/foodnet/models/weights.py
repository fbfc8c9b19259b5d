"""model.weights: a torchvision weights name, a local state_dict file, or none; download errors
become a message that says the way out."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import models

from foodnet.errors import WeightsError


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


def download_help(weights) -> str:
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"could not download {weights} from {weights.url}. Ways out: place {filename} in "
            f"{cache}/ (copy it from a machine with internet), or pass "
            "model.weights=/path/to/weights.pth (a state_dict for this arch), or "
            "model.weights=null finetune=full to train the whole network from random "
            "initialisation (with the default finetune=freeze a random backbone stays random "
            "and only the head learns)")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or truncated files
        raise WeightsError(f"{path}: not a loadable state_dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state

"""model.weights, whatever the source: DEFAULT (the source's pretrained weights), a weights name
or tag, a local file, or none; and loading a local file strictly. Each source's own weights
(names, downloads, preprocessing) live in models/sources/."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from foodnet.errors import WeightsError

log = logging.getLogger(__name__)
DEFAULT = "DEFAULT"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def is_none(weights: str | None) -> bool:
    return weights is None or str(weights).lower() in ("null", "none", "")


def as_path(weights: str) -> Path | None:
    """A local weights file named by model.weights, or None when it names weights by name."""
    text = str(weights)
    if text.endswith(WEIGHT_FILE_SUFFIXES) or "/" in text or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights={text}: file not found")
        return path
    return None


def file_name(path: Path) -> str:
    """A weights file as the model card names it: its absolute path (the run's folder is not
    where it was started from)."""
    return str(path.resolve())


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth/.pt/.bin (torch.load, weights_only) or .safetensors file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise several types for foreign files
        raise WeightsError(f"{path}: not a loadable state_dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


FOODNET_BACKBONE = "net.backbone."  # the backbone's keys in a foodnet checkpoint's state_dict


def load_weights_file(net: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str,
                      head: tuple[str, ...] = ()) -> None:
    """Load `state` (read from `path`) into `net`, every key present and fitting: weights that
    half load would train on noise silently.

    `state` is the architecture's own (the whole classifier or the backbone alone), or a foodnet
    checkpoint's, whose backbone is loaded (a new head is trained on it). `head` names the
    modules of `net` that a foodnet checkpoint's backbone does not hold (a torchvision
    classifier's own head, replaced later).
    """
    backbone = {k.removeprefix(FOODNET_BACKBONE): v for k, v in state.items()
                if k.startswith(FOODNET_BACKBONE)}
    from_checkpoint = bool(backbone)
    try:
        missing, unexpected = net.load_state_dict(backbone or state, strict=False)
    except RuntimeError as err:  # a shape that does not fit
        raise WeightsError(f"{path}: weights do not fit {arch} ({_first_lines(err)})") from None
    if from_checkpoint:
        missing = [k for k in missing if not k.startswith(tuple(h + "." for h in head))]
    if missing or unexpected:
        what = ("a foodnet checkpoint whose backbone does" if from_checkpoint
                else "weights do")
        raise WeightsError(
            f"{path}: {what} not fit {arch} ({len(missing)} missing keys"
            f"{_examples(missing)}, {len(unexpected)} unexpected{_examples(unexpected)}); "
            "set model.arch to the weights' architecture")
    if from_checkpoint:
        log.info("model.weights=%s: a foodnet checkpoint; its backbone is loaded under a new "
                 "head (to continue that run instead, use ckpt_path=)", path)


def _examples(keys: list[str]) -> str:
    return f", e.g. {', '.join(keys[:2])}" if keys else ""


def _first_lines(err: Exception, limit: int = 3) -> str:
    """torch's load_state_dict error lists every key (kilobytes): the first few lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:limit])
    text = text if len(text) <= 400 else text[:400] + " ..."
    return text + (f" ... ({len(lines) - limit} more lines)" if len(lines) > limit else "")

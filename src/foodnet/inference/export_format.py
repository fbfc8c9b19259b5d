"""The export sidecar: MODEL.json next to an exported model records the preprocessing it expects
and its input/output names (written by foodnet.export, read by every backend)."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

from foodnet.errors import ModelFileError
from foodnet.models.checkpoint import ModelInfo

EXPORT_FORMATS = ("onnx", "pt2")
# What an export sidecar must record: ModelInfo's fields without a default (temperature: 1.0).
INFO_KEYS = tuple(f.name for f in fields(ModelInfo) if f.default is MISSING)


def sidecar_path(model: str | Path) -> Path:
    """Where an exported model's preprocessing is recorded: the model's file name + '.json'."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def read_sidecar(model: str | Path) -> dict:
    path = sidecar_path(model)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path}: cannot read the export's preprocessing ({err})") from None
    missing = {"format", *INFO_KEYS} - set(meta) if isinstance(meta, dict) else {"everything"}
    if missing:
        raise ModelFileError(f"{path}: not a foodnet export sidecar (missing {sorted(missing)}); "
                             "re-export with foodnet export")
    if meta["format"] not in EXPORT_FORMATS:
        raise ModelFileError(f"{path}: format {meta['format']!r} is not one of "
                             f"{', '.join(EXPORT_FORMATS)}; re-export with foodnet.export")
    return meta


def info_from_sidecar(meta: dict, source: str | Path = "the export sidecar") -> ModelInfo:
    try:
        return ModelInfo.from_dict(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{source}: unreadable preprocessing record ({err}); re-export "
                             "with foodnet export") from None

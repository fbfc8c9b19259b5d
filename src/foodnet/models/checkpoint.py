"""Load a foodnet checkpoint safely (weights_only=True) into a TransferNet and its metadata."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import CheckpointError
from foodnet.models.transfer import TransferNet, create_model


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint says about its network and the preprocessing it expects."""

    arch: str
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    # Probabilities are softmax(logits / temperature) (reports/calibration.py, fitted by
    # training); a record without one was not calibrated: 1.0.
    temperature: float = 1.0

    def to_dict(self) -> dict:
        """Plain values, for the export sidecar."""
        return {"arch": self.arch, "num_classes": self.num_classes,
                "class_names": list(self.class_names),
                "preprocessing": self.preprocessing.to_dict(), "temperature": self.temperature}

    @classmethod
    def from_dict(cls, values: dict) -> ModelInfo:
        return cls(arch=values["arch"], num_classes=int(values["num_classes"]),
                   class_names=list(values["class_names"]),
                   preprocessing=Preprocessing.from_dict(values["preprocessing"]),
                   temperature=_temperature(values))


def _temperature(values: dict) -> float:
    temperature = float(values.get("temperature", 1.0))
    if not temperature > 0:  # also NaN
        raise ValueError(f"temperature {temperature} is not positive")
    return temperature


def saved_preprocessing(hparams: dict, source: str | Path) -> Preprocessing:
    """The preprocessing a checkpoint records (foodnet.train saves it with every checkpoint)."""
    if hparams.get("preprocessing"):
        return Preprocessing.from_dict(hparams["preprocessing"])
    raise CheckpointError(f"{source}: records no preprocessing (image size, mean, std), so what "
                          "the network expects is unknown; save checkpoints with "
                          "FoodClassifier(preprocessing=...), as foodnet.train does")


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True: tensors and plain values only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; anything else (text, an image, a cut-off download)
        # would otherwise surface as a misleading "weights only" unpickling refusal.
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or foreign "
                              "(not a torch.save archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path}: refused: the file holds pickled Python objects, which could run code "
                "when loaded. foodnet checkpoints store plain values only; re-save it with "
                "plain hyperparameters if you trust its origin") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or foreign "
                              f"({err})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint \
            or "arch" not in (checkpoint.get("hyper_parameters") or {}):
        raise CheckpointError(f"{path}: not a foodnet checkpoint (no state_dict and arch)")
    return checkpoint


def model_info(checkpoint: dict, source: str | Path = "the checkpoint") -> ModelInfo:
    hp = checkpoint["hyper_parameters"]
    num_classes = int(hp["num_classes"])
    names = hp.get("class_names") or [str(i) for i in range(num_classes)]
    try:
        temperature = _temperature(hp)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}; set a positive one, or drop it (1.0: "
                              "uncalibrated)") from None
    return ModelInfo(arch=hp["arch"], num_classes=num_classes, class_names=list(names),
                     preprocessing=saved_preprocessing(hp, source), temperature=temperature)


def load_model(path: str | Path) -> tuple[TransferNet, ModelInfo]:
    """Rebuild the trained network from a checkpoint, in eval mode."""
    checkpoint = read_checkpoint(path)
    info = model_info(checkpoint, path)
    net = create_model(info.arch, info.num_classes, weights=None, freeze=True)
    state = {key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()
             if key.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {info.arch} ({err})") from None
    return net.eval(), info

"""Run a trained model on image files: open a checkpoint or an export with the preprocessing it
expects, collect images from files, folders and lists, predict class probabilities in batches."""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from foodnet.checkpoint import ModelInfo, load_model
from foodnet.images import ImageLoadError, load_rgb
from foodnet.transforms import eval_transform

EXPORT_FORMATS = ("onnx", "torchscript")
INFO_KEYS = tuple(f.name for f in fields(ModelInfo))  # what an export sidecar must record


class ModelFileError(RuntimeError):
    """A model file or its preprocessing sidecar is missing or unreadable; names the file."""


class InputError(ValueError):
    """An INPUT names no images (an empty folder, an empty or missing list)."""


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
                             "re-export with python -m foodnet.export")
    if meta["format"] not in EXPORT_FORMATS:
        raise ModelFileError(f"{path}: format {meta['format']!r} is not one of "
                             f"{', '.join(EXPORT_FORMATS)}; re-export with foodnet.export")
    return meta


def info_from_sidecar(meta: dict) -> ModelInfo:
    return ModelInfo(**{key: meta[key] for key in INFO_KEYS})


def require_image_size(info: ModelInfo, source: str | Path) -> int:
    if not info.image_size:
        raise ModelFileError(f"{source}: records no image_size, so its preprocessing is unknown; "
                             "save checkpoints with FoodClassifier(image_size=...), as "
                             "foodnet.train does")
    return int(info.image_size)


class Classifier(ABC):
    """A trained model: a normalised NCHW float batch in, class probabilities (N, C) out."""

    def __init__(self, info: ModelInfo, source: Path):
        self.info = info
        self.source = source
        self.transform = eval_transform(require_image_size(info, source), info.mean, info.std)

    @abstractmethod
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchClassifier(Classifier):
    """A checkpoint's network (logits, softmax applied here) or a TorchScript export (probs)."""

    def __init__(self, module: nn.Module, info: ModelInfo, source: Path, outputs_probs: bool,
                 device: torch.device):
        super().__init__(info, source)
        self.module = module.to(device).eval()
        self.outputs_probs = outputs_probs
        self.device = device

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch.to(self.device)).float()
        return (out if self.outputs_probs else out.softmax(dim=1)).cpu()


class OnnxClassifier(Classifier):
    """An ONNX export run by onnxruntime; the graph ends in softmax."""

    def __init__(self, path: Path, meta: dict, device: torch.device):
        super().__init__(info_from_sidecar(meta), path)
        import onnxruntime as ort  # optional dependency (foodnet[export]): only ONNX needs it

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own types for foreign/truncated files
            raise ModelFileError(f"{path}: not a loadable ONNX model ({err})") from None
        self.input_name = meta.get("input_name") or self.session.get_inputs()[0].name

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        (probs,) = self.session.run(None, {self.input_name: batch.numpy()})
        return torch.from_numpy(probs)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(device)


def open_classifier(path: str | Path, device: str = "auto") -> Classifier:
    """A checkpoint (.ckpt), or an export identified by its sidecar (path + '.json')."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    torch_device = resolve_device(device)
    if sidecar_path(path).is_file():
        meta = read_sidecar(path)
        if meta["format"] == "onnx":
            return OnnxClassifier(path, meta, torch_device)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in PyTorch (ONNX is the recommended export) but works.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location=torch_device)
        except Exception as err:  # torch.jit raises RuntimeError or ValueError for foreign files
            raise ModelFileError(f"{path}: not a loadable TorchScript model ({err})") from None
        return TorchClassifier(module, info_from_sidecar(meta), path, outputs_probs=True,
                               device=torch_device)
    if path.suffix.lower() in (".onnx", ".pt", ".ts"):
        raise ModelFileError(f"{path}: no {sidecar_path(path).name} next to it, so its "
                             "preprocessing is unknown; python -m foodnet.export writes both")
    net, info = load_model(path)  # CheckpointError names the file
    return TorchClassifier(net, info, path, outputs_probs=False, device=torch_device)


def read_image_list(path: Path) -> list[Path]:
    """A list of images: 'image_path' or manifest 'image_path label' lines (label ignored)."""
    if not path.is_file():
        raise InputError(f"{path}: image list not found")
    images = []
    for text in path.read_text(encoding="utf-8-sig").splitlines():
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.rsplit(maxsplit=1)
        # A trailing integer is a training label; otherwise the whole line is the path.
        raw = parts[0] if len(parts) == 2 and parts[1].isdigit() else stripped
        image = Path(raw.strip())
        images.append(image if image.is_absolute() else path.parent / image)
    if not images:
        raise InputError(f"{path}: image list has no paths")
    return images


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, image extensions only) and .txt lists, keeping input order."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise InputError(f"{item}: folder holds no images ({' '.join(IMG_EXTENSIONS)})")
            images += found
        elif item.suffix.lower() == ".txt":
            images += read_image_list(item)
        else:
            images.append(item)  # a missing or undecodable file is reported per image
    return images


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities, or why it could not be read."""

    path: Path
    probs: torch.Tensor | None
    error: str | None = None


def predict_images(classifier: Classifier, paths: Sequence[Path],
                   batch_size: int) -> Iterator[Prediction]:
    """Predict in input order; an unreadable image yields its error and the batch goes on."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        results: list[Prediction | None] = [None] * len(chunk)
        tensors, slots = [], []
        for slot, path in enumerate(chunk):
            try:
                tensors.append(classifier.transform(load_rgb(path)))
                slots.append(slot)
            except ImageLoadError as err:
                results[slot] = Prediction(path, None, str(err))
        if tensors:
            probs = classifier.probabilities(torch.stack(tensors))
            for slot, row in zip(slots, probs, strict=True):
                results[slot] = Prediction(chunk[slot], row)
        yield from results

"""Run a trained model on images: open a checkpoint or an export with the preprocessing it expects,
predict class probabilities in batches."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foodnet.data.images import load_rgb
from foodnet.data.tta import average_probabilities, tta_transform
from foodnet.errors import ImageLoadError, ModelFileError
from foodnet.inference.export_format import (
    EXPORT_FORMATS,
    info_from_sidecar,
    read_sidecar,
    sidecar_path,
)
from foodnet.machine import num_workers as worker_count
from foodnet.machine import resolve_device
from foodnet.models.checkpoint import ModelInfo, load_model
from foodnet.speed.decide import cached_layout


class Classifier(ABC):
    """A trained model: a normalised NCHW float batch in, class probabilities (N, C) out; with
    test-time augmentation (tta, foodnet.data.tta) each image is (views, C, H, W), the batch
    N x views x C x H x W, and its probabilities the mean over its views."""

    def __init__(self, info: ModelInfo, source: Path, tta: str = "none"):
        self.info = info
        self.source = source
        self.tta = tta
        # The preprocessing recorded with the model (what it saw in training), as views.
        self.transform = tta_transform(info.preprocessing, tta)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() == 4:
            return self._probabilities(batch)
        count, views = batch.shape[:2]
        probs = self._probabilities(batch.flatten(0, 1))
        return average_probabilities(probs.view(count, views, -1))

    @abstractmethod
    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchClassifier(Classifier):
    """A checkpoint's network (logits: softmax(logits / its temperature) applied here) or a
    torch.export program (probabilities, the temperature already in the graph)."""

    def __init__(self, module: nn.Module, info: ModelInfo, source: Path, outputs_probs: bool,
                 device: torch.device, channels_last: bool = False, tta: str = "none"):
        super().__init__(info, source, tta)
        # An exported program is traced in eval mode and refuses .eval(); a network needs it.
        self.module = module if isinstance(module, torch.fx.GraphModule) \
            else module.to(device).eval()
        self.outputs_probs = outputs_probs
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.module.to(memory_format=self.memory_format)

    @torch.inference_mode()
    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        batch = batch.contiguous(memory_format=self.memory_format)
        out = self.module(batch).float()
        return (out if self.outputs_probs else (out / self.info.temperature).softmax(dim=1)).cpu()


class OnnxClassifier(Classifier):
    """An ONNX export run by onnxruntime; the graph ends in softmax(logits / temperature)."""

    def __init__(self, path: Path, meta: dict, device: torch.device, tta: str = "none"):
        super().__init__(info_from_sidecar(meta, sidecar_path(path)), path, tta)
        import onnxruntime as ort  # optional dependency (foodnet[export]): only ONNX needs it

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own types for foreign/truncated files
            raise ModelFileError(f"{path}: not a loadable ONNX model ({err})") from None
        self.input_name = meta.get("input_name") or self.session.get_inputs()[0].name

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        (probs,) = self.session.run(None, {self.input_name: batch.numpy()})
        return torch.from_numpy(probs)


def open_classifier(path: str | Path, device: str = "auto", tta: str = "none") -> Classifier:
    """A checkpoint (.ckpt), or an export identified by its sidecar (path + '.json'); tta: the
    test-time augmentation (foodnet.data.tta) its probabilities average over."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    torch_device = resolve_device(device)
    if sidecar_path(path).is_file():
        meta = read_sidecar(path)
        if meta["format"] == "onnx":
            return OnnxClassifier(path, meta, torch_device, tta)
        try:
            program = torch.export.load(str(path))
        except Exception as err:  # torch.export raises several types for foreign/truncated files
            raise ModelFileError(f"{path}: not a loadable torch.export program ({err})") from None
        if torch_device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, torch_device)
        return TorchClassifier(program.module(), info_from_sidecar(meta, sidecar_path(path)),
                               path, outputs_probs=True, device=torch_device, tta=tta)
    if path.suffix.lower().lstrip(".") in EXPORT_FORMATS:
        raise ModelFileError(f"{path}: no {sidecar_path(path).name} next to it, so its "
                             "preprocessing is unknown; foodnet export writes both")
    net, info = load_model(path)  # CheckpointError names the file
    # The layout a training run measured faster on this machine (foodnet.speed), else the
    # default.
    channels_last = bool(cached_layout(torch_device, info.arch, info.preprocessing.image_size))
    return TorchClassifier(net, info, path, outputs_probs=False, device=torch_device,
                           channels_last=channels_last, tta=tta)


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities, or why it could not be read."""

    path: Path
    probs: torch.Tensor | None
    error: str | None = None


class ImageFiles(Dataset):
    """Images by path, decoded and transformed (in loader workers); an unreadable one is its
    error message instead of a tensor, so that one bad file never stops a batch."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_rgb(self.paths[index])), None
        except ImageLoadError as err:
            return index, None, str(err)


def collate_images(items: list) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """(indices of the decoded images, their batch, {index: error} of the others)."""
    good = [(index, tensor) for index, tensor, _ in items if tensor is not None]
    errors = {index: error for index, tensor, error in items if tensor is None}
    batch = torch.stack([tensor for _, tensor in good]) if good else None
    return [index for index, _ in good], batch, errors


def predict_images(classifier: Classifier, paths: Sequence[Path], batch_size: int,
                   num_workers: int | str = "auto") -> Iterator[Prediction]:
    """Predict in input order, in batches; decoding runs in `num_workers` loader processes
    (auto: one per usable core) while the model runs. An unreadable image yields its error and
    the batch goes on."""
    batches = math.ceil(len(paths) / batch_size)
    workers = worker_count(num_workers)
    # One batch has nothing to overlap with: starting workers would only cost time.
    workers = min(workers, batches) if batches > 1 else 0
    loader = DataLoader(ImageFiles(paths, classifier.transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate_images,
                        pin_memory=torch.cuda.is_available())
    for indices, batch, errors in loader:
        probs = dict(zip(indices, classifier.probabilities(batch), strict=True)) \
            if batch is not None else {}
        for index in sorted([*indices, *errors]):
            if index in errors:
                yield Prediction(paths[index], None, errors[index])
            else:
                yield Prediction(paths[index], probs[index])


def prediction_record(prediction: Prediction, class_names: Sequence[str], topk: int,
                      name: str | None = None, min_confidence: float = 0.0) -> dict:
    """The JSON record of one image, as predict and serve write it: {"path", "predictions":
    [{"label", "class", "prob"}] most probable first, top `topk` (capped at the class count),
    "unsure": whether the top probability is below `min_confidence`}, or "error" (and no
    predictions) for an unreadable image. `name` replaces the path."""
    record: dict = {"path": name if name is not None else str(prediction.path),
                    "predictions": []}
    if prediction.error is not None:
        record["error"] = prediction.error
        return record
    probs, labels = prediction.probs.topk(min(topk, len(class_names)))
    record["predictions"] = [{"label": label, "class": class_names[label], "prob": prob}
                             for prob, label in zip(probs.tolist(), labels.tolist(), strict=True)]
    # The top-k stay: an unsure answer still shows what the model leans to.
    record["unsure"] = record["predictions"][0]["prob"] < min_confidence
    return record

"""TensorBoard dashboards: speed scalars, an augmented-sample grid, a confusion matrix per
validation epoch, and the run's hyperparameters in the HPARAMS tab.

The figures are drawn on plain matplotlib Figures and rendered with the Agg canvas, never through
pyplot, so logging them neither needs a display nor changes the backend of a notebook that trains
in-process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from foodnet.transforms import IMAGENET_MEAN, IMAGENET_STD

# Above this many classes the per-cell counts would be unreadable, so only colours are drawn.
MAX_ANNOTATED_CLASSES = 30


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def logged_step(trainer: L.Trainer) -> int:
    """The step Lightning gives metrics logged now: validation runs inside the epoch's last batch,
    before that batch counts, so epoch-end scalars sit at global_step - 1. Images and the
    hparams metric use the same step to line up with the curves."""
    return max(trainer.global_step - 1, 0)


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a figure with the Agg canvas into an HxWx3 uint8 array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def denormalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo transforms.Normalize on an NCHW batch: NHWC floats in [0, 1], ready for imshow."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid_figure(images: np.ndarray | Sequence, titles: Sequence[str],
                      columns: int | None = None, cell_inches: float = 1.8) -> Figure:
    """A grid of images (HWC arrays or PIL images), each titled, e.g. with its class name."""
    count = len(titles)
    columns = columns or math.ceil(math.sqrt(count))
    rows = max(1, math.ceil(count / columns))
    title_lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    figure = Figure(figsize=(columns * cell_inches, rows * (cell_inches + 0.2 * title_lines)),
                    dpi=100)
    for index in range(rows * columns):
        ax = figure.add_subplot(rows, columns, index + 1)
        ax.axis("off")
        if index < count:
            ax.imshow(np.asarray(images[index]))
            ax.set_title(titles[index], fontsize=8)
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str],
                            title: str = "confusion matrix") -> Figure:
    """Rows are true classes, columns predictions; colour is the row fraction, text the count."""
    counts = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix)
    n = counts.shape[0]
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.35 * n, 40)  # inches: room for the names, capped for 1000-class problems
    figure = Figure(figsize=(side, side * 0.9), dpi=100)
    ax = figure.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fontsize = 8 if n <= MAX_ANNOTATED_CLASSES else 5
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= MAX_ANNOTATED_CLASSES:
        for row in range(n):
            for col in range(n):
                if counts[row, col]:
                    ax.text(col, row, str(int(counts[row, col])), ha="center", va="center",
                            fontsize=7, color="white" if fractions[row, col] > 0.5 else "black")
    figure.tight_layout()
    return figure


def _class_names(pl_module: L.LightningModule, num_classes: int) -> list[str]:
    names = getattr(pl_module, "class_names", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


class SpeedMonitor(L.Callback):
    """Log training images/s and the wall time of each epoch (training plus validation).

    Lightning's ThroughputMonitor reports a sliding window per step; a per-epoch figure is what
    one compares across runs and sweeps.
    """

    def on_train_start(self, trainer, pl_module):
        # A run resumed mid-epoch continues that epoch without on_train_epoch_start.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += len(batch[1])
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        train_seconds = max(self._last_batch_end - self._epoch_start, 1e-9)
        pl_module.log("speed/train_images_per_sec", self._images / train_seconds)
        pl_module.log("speed/epoch_seconds", time.perf_counter() - self._epoch_start)


class AugmentedSamples(L.Callback):
    """Log the first training batch, as the network sees it after augmentation, once per fit."""

    def __init__(self, max_images: int = 16, tag: str = "train/augmented_samples"):
        self.max_images = max_images
        self.tag = tag
        self._logged = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._logged or not trainer.is_global_zero:
            return
        self._logged = True
        loggers = tensorboard_loggers(trainer)
        if not loggers:
            return
        x, y = batch[0][: self.max_images], batch[1][: self.max_images]
        hparams = pl_module.hparams  # the normalisation the data was given, saved by the module
        images = denormalize(x, hparams.get("mean", IMAGENET_MEAN),
                             hparams.get("std", IMAGENET_STD))
        names = _class_names(pl_module, int(hparams.get("num_classes", int(y.max()) + 1)))
        figure = image_grid_figure(images, [names[int(label)] for label in y])
        array = figure_to_array(figure)
        for logger in loggers:
            logger.experiment.add_image(self.tag, array, logged_step(trainer), dataformats="HWC")


class ConfusionMatrixImage(L.Callback):
    """Log the validation confusion matrix, class names on both axes, after every validation epoch.

    Reads the logits that FoodClassifier.validation_step returns, so nothing is computed twice.
    """

    def __init__(self, tag: str = "val/confusion_matrix"):
        self.tag = tag
        self.matrix: MulticlassConfusionMatrix | None = None

    def on_validation_epoch_start(self, trainer, pl_module):
        if self.matrix is None:
            num_classes = int(pl_module.hparams["num_classes"])
            self.matrix = MulticlassConfusionMatrix(num_classes=num_classes)
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if not isinstance(outputs, dict) or "logits" not in outputs:
            raise TypeError("ConfusionMatrixImage needs validation_step to return "
                            "{'logits': ..., 'target': ...}")
        self.matrix.update(outputs["logits"].detach(), outputs["target"])

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        matrix = self.matrix.compute()  # on every rank: torchmetrics syncs across processes
        loggers = tensorboard_loggers(trainer)
        if not trainer.is_global_zero or not loggers:
            return
        accuracy = float(matrix.diag().sum() / matrix.sum().clamp(min=1))
        names = _class_names(pl_module, matrix.shape[0])
        figure = confusion_matrix_figure(
            matrix, names, f"validation, epoch {trainer.current_epoch + 1} (acc {accuracy:.3f})")
        array = figure_to_array(figure)
        for logger in loggers:
            logger.experiment.add_image(self.tag, array, logged_step(trainer), dataformats="HWC")


class HyperparamsLogger(L.Callback):
    """Fill TensorBoard's HPARAMS tab: the run's hyperparameters with the final `metric`.

    Logged when training ends, at the step of the last validation, so the metric's curve gains no
    new point and the table shows the final value. `params` are plain values (Hydra interpolates
    them from the config, see conf/callbacks/default.yaml).
    """

    def __init__(self, params: dict[str, Any], metric: str = "val/acc_best"):
        self.params = dict(params)
        self.metric = metric

    def on_train_end(self, trainer, pl_module):
        loggers = tensorboard_loggers(trainer)
        if not loggers:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            rank_zero_warn(f"HyperparamsLogger: {self.metric} was never logged (no validation?), "
                           "so the HPARAMS tab has no metric for this run")
            return
        for logger in loggers:
            logger.log_hyperparams(self.params, {self.metric: float(value)},
                                   step=logged_step(trainer))

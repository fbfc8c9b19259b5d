"""TensorBoard dashboards: speed scalars, an augmented-sample grid, a confusion matrix per
validation epoch (the best epoch's also to MLflow), and the run's hyperparameters in the HPARAMS
tab.

The figures are drawn on plain matplotlib Figures and rendered with the Agg canvas, never through
pyplot, so logging them neither needs a display nor changes the backend of a notebook that trains
in-process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from foodnet.reports.figures import confusion_matrix_figure, figure_to_array, image_grid_figure
from foodnet.reports.metrics import VAL_ACC_BEST
from foodnet.training.tracking import mlflow_loggers

log = logging.getLogger(__name__)


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def logged_step(trainer: L.Trainer) -> int:
    """The step Lightning gives metrics logged now: validation runs inside the epoch's last batch,
    before that batch counts, so epoch-end scalars sit at global_step - 1. Images and the
    hparams metric use the same step to line up with the curves."""
    return max(trainer.global_step - 1, 0)


def denormalize(images: torch.Tensor, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """Undo transforms.Normalize on an NCHW batch: NHWC floats in [0, 1], ready for imshow."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()


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
        # Under DDP: the images of every process per second, and the slowest process's epoch.
        pl_module.log("speed/train_images_per_sec", self._images / train_seconds,
                      sync_dist=True, reduce_fx="sum")
        pl_module.log("speed/epoch_seconds", time.perf_counter() - self._epoch_start,
                      sync_dist=True, reduce_fx="max")


def _title(target: torch.Tensor, names: list[str]) -> str:
    """A label's class name; a soft target's (augment.mix) two largest shares, e.g. `cat 0.7 +
    dog 0.3`."""
    if target.ndim == 0:
        return names[int(target)]
    shares, classes = target.topk(min(2, target.numel()))
    return " + ".join(f"{names[int(c)]} {float(s):.2f}" for s, c in zip(shares, classes,
                                                                         strict=True) if s > 0)


class AugmentedSamples(L.Callback):
    """Log the first training batch, as the network sees it after augmentation, once per fit.

    A run on cached backbone features (cache_features=true) trains on feature vectors, not
    images: there is nothing to show, which the log says once.
    """

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
        if x.ndim != 4:  # (N, features): the frozen backbone's output, served from the cache
            log.info("%s: not logged, this run trains the head on cached backbone features, "
                     "not on images", self.tag)
            return
        hparams = pl_module.hparams  # the preprocessing the data was given, saved by the module
        preprocessing = hparams.get("preprocessing") or {}
        images = denormalize(x, preprocessing.get("mean", (0.0,) * 3),
                             preprocessing.get("std", (1.0,) * 3))
        names = _class_names(pl_module, int(hparams.get("num_classes", y.shape[-1])))
        figure = image_grid_figure(images, [_title(target, names) for target in y])
        array = figure_to_array(figure)
        for logger in loggers:
            logger.experiment.add_image(self.tag, array, logged_step(trainer), dataformats="HWC")


class ConfusionMatrixImage(L.Callback):
    """Log the validation confusion matrix, class names on both axes, after every validation epoch
    to TensorBoard; to MLflow, once the fit ends, the figure of the epoch with the best val/acc
    (the best checkpoint's) as the artifact `{tag}.png`.

    Reads the logits that FoodClassifier.validation_step returns, so nothing is computed twice.
    """

    def __init__(self, tag: str = "val/confusion_matrix"):
        self.tag = tag
        self.matrix: MulticlassConfusionMatrix | None = None
        self.best: tuple[float, Figure] | None = None  # (val accuracy, figure) of the best epoch

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
        accuracy = float(matrix.diag().sum() / matrix.sum().clamp(min=1))
        # Strictly better, as ModelCheckpoint(mode="max") decides which epoch is the best.
        improved = self.best is None or accuracy > self.best[0]
        keep = improved and bool(mlflow_loggers(trainer.loggers))
        if not trainer.is_global_zero or not (loggers or keep):
            return
        names = _class_names(pl_module, matrix.shape[0])
        figure = confusion_matrix_figure(
            matrix, names, f"validation, epoch {trainer.current_epoch + 1} (acc {accuracy:.3f})")
        if keep:
            self.best = (accuracy, figure)
        if loggers:
            array = figure_to_array(figure)
            for logger in loggers:
                logger.experiment.add_image(self.tag, array, logged_step(trainer),
                                            dataformats="HWC")

    def on_fit_end(self, trainer, pl_module):
        if self.best is None or not trainer.is_global_zero:
            return
        for logger in mlflow_loggers(trainer.loggers):
            logger.experiment.log_figure(logger.run_id, self.best[1], f"{self.tag}.png")


class HyperparamsLogger(L.Callback):
    """Fill TensorBoard's HPARAMS tab: the run's hyperparameters with the final `metric`.

    Logged when training ends, at the step of the last validation, so the metric's curve gains no
    new point and the table shows the final value. `params` are plain values (Hydra interpolates
    them from the config, see conf/callbacks/default.yaml).
    """

    def __init__(self, params: dict[str, Any], metric: str = VAL_ACC_BEST):
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
        # The input size the run actually used (the weights' own unless the config overrode it)
        # and its augmentation policy: from the records the checkpoint keeps.
        preprocessing = pl_module.hparams.get("preprocessing") or {}
        augment = pl_module.hparams.get("augment") or {}
        params = {**self.params, "image_size": preprocessing.get("image_size"),
                  "augment": augment.get("name"),
                  "finetune": (pl_module.hparams.get("finetune") or {}).get("name")}
        for logger in loggers:
            logger.log_hyperparams(params, {self.metric: float(value)},
                                   step=logged_step(trainer))

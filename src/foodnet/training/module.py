"""The LightningModule: cross-entropy on the transfer model, torchmetrics, an optimizer over
trainable parameters and an optional learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from foodnet.data.augment import Augmentation
from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError
from foodnet.models.transfer import TransferNet
from foodnet.reports.calibration import Calibration, calibrate
from foodnet.reports.metrics import (
    TEMPERATURE,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_ACC_BEST,
    VAL_ECE,
    VAL_ECE_RAW,
    VAL_LOSS,
    classification_metrics,
    per_class_accuracy,
)
from foodnet.speed.frozen import FrozenBackbone
from foodnet.speed.plan import SpeedPlan
from foodnet.training.finetune import FinetuneStrategy, Freeze, Full
from foodnet.training.schedulers import INTERVALS

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# (optimizer, number of scheduler steps in the run) -> scheduler; see foodnet.schedulers.
SchedulerFactory = Callable[[torch.optim.Optimizer, int], LRScheduler]


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n_samples / (num_classes * count) per class, as scikit-learn's "balanced"; 0 for a class
    with no sample (it never is a target, so its weight never counts)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long),
                            minlength=num_classes).double()
    if counts.numel() > num_classes:
        raise ConfigError(f"labels go up to {counts.numel() - 1}, beyond {num_classes} classes")
    weights = counts.sum() / (num_classes * counts)
    return torch.where(counts > 0, weights, 0.0).tolist()


SPEED_KEY = "speed"  # the checkpoint's record of the run's precision and memory layout
CALIBRATION_KEY = "calibration"  # the checkpoint's ECE before/after its temperature, on val


class FoodClassifier(L.LightningModule):
    """Trains a TransferNet; frozen parts stay in eval mode so BatchNorm statistics never drift."""

    def __init__(self, net: TransferNet, optimizer: OptimizerFactory = torch.optim.Adam,
                 class_names: list[str] | None = None, preprocessing: Preprocessing | None = None,
                 augment: Augmentation | None = None,
                 scheduler: SchedulerFactory | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                 speed: SpeedPlan | None = None, finetune: FinetuneStrategy | None = None,
                 calibrate: bool = False, ema: float | None = None):
        super().__init__()
        self.net = net
        # How this run computes (speed.plan); the Trainer applies its precision.
        self.speed = speed or SpeedPlan()
        # NHWC layout: oneDNN (CPU) and tensor cores (CUDA) run convolutions faster in it.
        if self.speed.channels_last:
            self.net.to(memory_format=torch.channels_last)
        # Runs the backbone while it is frozen: a plain object, so the state_dict is the net's.
        self.frozen_backbone = FrozenBackbone(net.backbone, self.speed,
                                              name=f"{net.arch} backbone")
        self.optimizer_factory = optimizer
        # The learning rate found by the range test (train.py, tune.lr_find); None: the factory's.
        self.lr: float | None = None
        # How the run trains the network (what is frozen, and for how long): recorded in the
        # checkpoint; features are reused only when it keeps the backbone frozen throughout.
        self.finetune = finetune or (Freeze() if net.backbone_frozen else Full())
        if scheduler_interval not in INTERVALS:
            raise ConfigError(f"scheduler.interval={scheduler_interval} must be one of "
                              f"{', '.join(INTERVALS)}")
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.class_names = list(class_names) if class_names else None
        # The run's preprocessing record (default: what the backbone's weights expect).
        self.preprocessing = preprocessing or net.preprocessing
        # Plain values only, so checkpoints load with weights_only=True; they are what
        # evaluate/predict/export need to rebuild the network and its preprocessing, and the
        # record of how it was trained (weights: what the backbone started from, DEFAULT resolved
        # by its source; augment: the train-time policy, None when not given).
        # Not sent to the loggers: a run's params there are its composed config
        # (foodnet.training.tracking).
        self.save_hyperparameters({
            "arch": net.arch, "num_classes": net.num_classes, "class_names": self.class_names,
            "weights": net.weights,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "augment": augment.to_dict() if augment is not None else None,
            "finetune": self.finetune.to_dict(),
            # The decay of the weights' moving average the checkpoint holds (ema=true), else None.
            "ema": ema,
            # Divides the logits before softmax (reports/calibration.py); 1.0: not calibrated.
            TEMPERATURE: 1.0},
            logger=False)
        # Fit the temperature on every validation epoch's logits, so that each checkpoint
        # carries the one that fits its own weights.
        self.calibrate = calibrate
        self._val_logits: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.calibration: Calibration | None = None  # the last validation epoch's fit
        num_classes = net.num_classes
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing} must be in [0, 1)")
        self.label_smoothing = label_smoothing
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if weights.shape != (num_classes,) or (weights < 0).any():
                raise ConfigError(f"model.class_weights has {weights.numel()} values; it needs "
                                  f"{num_classes} non-negative ones (or balanced, or null)")
        # Not persistent: checkpoints stay loadable whatever the loss options were.
        self.register_buffer("class_weights", weights, persistent=False)
        # val/test loss is plain cross-entropy, comparable across runs whatever the train loss.
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_metrics = classification_metrics(num_classes, "val")
        self.test_metrics = classification_metrics(num_classes, "test")
        self.test_confusion = MulticlassConfusionMatrix(num_classes=num_classes)
        self.test_per_class_acc: dict[str, float | None] = {}
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best so far
        self.train()  # Lightning restores per-module modes around validation: start them right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from images (N, C, H, W), or from pooled backbone features (N, F)."""
        if x.ndim == 2:
            # training/features.py served the frozen backbone's output (finetune=freeze only):
            # the head runs on the features the backbone would give, so the logits are the same.
            if not self.net.backbone_frozen:  # a bug in the caller, not a user's mistake
                raise RuntimeError("got precomputed backbone features, but the backbone is "
                                   "trainable now: features are only valid for a frozen backbone")
            return self.net.head(x.to(self.net.head.weight.dtype))
        if self.net.backbone_frozen:
            return self.net.head(self.frozen_backbone(x))
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def train(self, mode: bool = True) -> FoodClassifier:
        """Frozen submodules (no trainable parameter) stay in eval mode while the rest trains."""
        super().train(mode)
        if mode:
            for module in self.net.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def on_train_epoch_start(self):
        # Runs after the callbacks' hook, so parts a finetuning callback just (un)froze switch mode.
        self.train()

    def _shared_step(self, batch):
        x, y = batch
        logits = self(x)
        return self.loss_fn(logits, y), logits, y

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        # y is (N,) labels, or (N, classes) soft targets under augment.mix (MixUp/CutMix):
        # cross_entropy takes both, and accuracy counts the class with the larger share.
        loss = F.cross_entropy(logits, y, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), y.argmax(dim=1) if y.ndim == 2 else y)
        self.log(TRAIN_LOSS, self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, y = self._shared_step(batch)
        self.val_loss(loss, weight=y.numel())
        self.log(VAL_LOSS, self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self._log_scores(self.val_metrics, logits, y, prog_bar=VAL_ACC)
        if self.calibrate:
            self._val_logits.append((logits.detach().float(), y))
        # For callbacks (the confusion-matrix dashboard) so they need no second forward pass.
        return {"logits": logits.detach(), "target": y}

    def on_validation_epoch_start(self):
        self._val_logits.clear()

    def on_validation_epoch_end(self):
        # The sanity check must not count towards val/acc_best, nor fit a temperature.
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_metrics[VAL_ACC].compute())
        # A tensor, not the metric (logging the metric would reset the best at each epoch's end):
        # every process holds the same value, so syncing it is a no-op that Lightning asks for.
        self.log(VAL_ACC_BEST, self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        # Every process takes part in the gather, also one that got no validation batch.
        if self.calibrate and (self._val_logits or self.trainer.world_size > 1):
            self._fit_temperature()

    def _gather_uneven(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's rows, also when their counts differ (the validation set is not padded
        to a multiple of the world size, so that each sample counts once): all_gather needs one
        shape, so rows are padded to the largest count, then trimmed."""
        counts = self.all_gather(torch.tensor(tensor.shape[0], device=tensor.device)).flatten()
        pad = int(counts.max()) - tensor.shape[0]
        padded = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))]) if pad else tensor
        gathered = self.all_gather(padded)
        return torch.cat([gathered[rank, :int(n)] for rank, n in enumerate(counts)])

    def _fit_temperature(self) -> None:
        """Temperature scaling on this epoch's validation logits (all ranks': each then fits
        the same T), logged as ECE before and after."""
        if self._val_logits:
            logits, labels = (torch.cat(parts) for parts in zip(*self._val_logits, strict=True))
        else:
            logits = torch.zeros(0, self.net.num_classes, device=self.device)
            labels = torch.zeros(0, dtype=torch.long, device=self.device)
        self._val_logits.clear()
        if self.trainer.world_size > 1:
            logits, labels = self._gather_uneven(logits), self._gather_uneven(labels)
        if labels.numel() == 0:
            return
        self.calibration = calibrate(logits, labels)
        self.hparams[TEMPERATURE] = self.calibration.temperature
        # Every process fitted on the same gathered logits: syncing is a no-op Lightning asks for.
        self.log(VAL_ECE_RAW, self.calibration.ece_raw, sync_dist=True)
        self.log(VAL_ECE, self.calibration.ece, sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss, logits, y = self._shared_step(batch)
        self.test_loss(loss, weight=y.numel())
        self.test_confusion(logits, y)
        self.log(TEST_LOSS, self.test_loss, on_step=False, on_epoch=True)
        self._log_scores(self.test_metrics, logits, y, prog_bar=None)

    def _log_scores(self, scores, logits: torch.Tensor, y: torch.Tensor,
                    prog_bar: str | None) -> None:
        """Update the split's scores; Lightning computes and syncs them at the epoch's end."""
        scores.update(logits, y)
        for name, score in scores.items():
            self.log(name, score, on_step=False, on_epoch=True, prog_bar=name == prog_bar)

    def on_test_epoch_end(self):
        # Per-class accuracy (recall) by class name; None for a class without test images.
        confusion = self.test_confusion.compute().cpu()
        names = self.class_names or [str(i) for i in range(len(confusion))]
        self.test_per_class_acc = per_class_accuracy(confusion, names)
        self.test_confusion.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A resumed run keeps the precision and layout it started with (train.py reads them
        # back), whatever `auto` would measure now: the same numerics as an uninterrupted run.
        checkpoint[SPEED_KEY] = {"precision": str(self.trainer.precision),
                                 "channels_last": self.speed.channels_last}
        if self.calibration is not None:
            checkpoint[CALIBRATION_KEY] = {VAL_ECE_RAW: self.calibration.ece_raw,
                                           VAL_ECE: self.calibration.ece}

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("no trainable parameters: the whole model is frozen")
        optimizer = self.optimizer_factory(trainable, **({} if self.lr is None else
                                                          {"lr": self.lr}))
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step":
            total = self.trainer.estimated_stepping_batches  # inf for a run without an end
        else:
            total = self.trainer.max_epochs or -1  # -1 for a run without an end
        scheduler = self.scheduler_factory(optimizer, int(total) if math.isfinite(total) else -1)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

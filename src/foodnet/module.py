"""The LightningModule: cross-entropy on the transfer model, torchmetrics, an optimizer over
trainable parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from foodnet.model import TransferNet
from foodnet.transforms import IMAGENET_MEAN, IMAGENET_STD

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class FoodClassifier(L.LightningModule):
    """Trains a TransferNet; frozen parts stay in eval mode so BatchNorm statistics never drift."""

    def __init__(self, net: TransferNet, optimizer: OptimizerFactory = torch.optim.Adam,
                 class_names: list[str] | None = None, image_size: int | None = None,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 channels_last: bool = False):
        super().__init__()
        self.net = net
        # NHWC layout: oneDNN (CPU) and tensor cores (CUDA) run convolutions faster in it.
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer_factory = optimizer
        self.class_names = list(class_names) if class_names else None
        # Plain values only, so checkpoints load with weights_only=True; they are what
        # evaluate/predict/export need to rebuild the network and its preprocessing.
        self.save_hyperparameters({"arch": net.arch, "num_classes": net.num_classes,
                                   "class_names": self.class_names, "image_size": image_size,
                                   "mean": list(mean), "std": list(std)})
        self.loss_fn = nn.CrossEntropyLoss()
        num_classes = net.num_classes
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.train()  # Lightning restores per-module modes around validation: start them right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from images (N, C, H, W), or from pooled backbone features (N, F)."""
        if x.ndim == 2:
            # foodnet.features served the frozen backbone's output: only the head runs, on the
            # same features the backbone would give, so the logits are those of self.net(images).
            if not self.net.backbone_frozen:
                raise RuntimeError("got precomputed backbone features, but the backbone is "
                                   "trainable now: features are only valid for a frozen backbone")
            return self.net.head(x.to(self.net.head.weight.dtype))
        if self.channels_last:
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
        loss, logits, y = self._shared_step(batch)
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, y = self._shared_step(batch)
        self.val_loss(loss, weight=y.numel())
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        # The sanity check must not count towards val/acc_best.
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        loss, logits, y = self._shared_step(batch)
        self.test_loss(loss, weight=y.numel())
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameters: the whole model is frozen")
        return self.optimizer_factory(trainable)

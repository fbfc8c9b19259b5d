"""Fine-tuning strategies (the `finetune` config group): freeze (the seed), full, and gradual
unfreezing as a callback. Each is an object; nothing outside them compares strategy names."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from foodnet.errors import ConfigError
from foodnet.models.sources import backbone_stages as stages_of
from foodnet.models.transfer import TransferNet, set_backbone_trainable

# Param-group keys that hold learning rates (torch's schedulers add initial_lr, max_lr, min_lr).
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")

log = logging.getLogger(__name__)


def backbone_stages(net: TransferNet) -> list[list[nn.Module]]:
    """The backbone's stages in forward order (each backbone source knows its own)."""
    return stages_of(net.arch, net.backbone)


class GradualUnfreezing(BaseFinetuning):
    """Train the head, then also the last backbone stage, then the whole backbone.

    Each newly unfrozen part gets its own optimizer param group, scheduled like the head's at
    `backbone_lr_factor` times its learning rate. With train_bn=False the BatchNorm layers of
    unfrozen stages keep their pretrained statistics and affine parameters (they stay frozen and
    in eval mode); with train_bn=True they train like the rest of the stage.

    Under DDP the parts unfrozen after DDP wrapped the model are not in its gradient reducer
    (Lightning issue #20340): their gradients are averaged across processes here, before each
    optimizer step, so that every process keeps the same weights.
    """

    def __init__(self, unfreeze_last_at: int, unfreeze_all_at: int | None,
                 backbone_lr_factor: float, train_bn: bool):
        super().__init__()
        if unfreeze_last_at < 0:
            raise ConfigError(f"finetune.unfreeze_last_at={unfreeze_last_at} must be an epoch >= 0")
        if unfreeze_all_at is not None and unfreeze_all_at <= unfreeze_last_at:
            raise ConfigError(f"finetune.unfreeze_all_at={unfreeze_all_at} must come after "
                              f"finetune.unfreeze_last_at={unfreeze_last_at} (or be null: never)")
        if backbone_lr_factor <= 0:
            raise ConfigError(f"finetune.backbone_lr_factor={backbone_lr_factor} must be positive")
        self.unfreeze_last_at = unfreeze_last_at
        self.unfreeze_all_at = unfreeze_all_at
        self.backbone_lr_factor = backbone_lr_factor
        self.train_bn = train_bn
        self._unfrozen: dict[int, nn.Parameter] = {}  # by id: what DDP's reducer never saw

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Only fitting starts from a frozen backbone: trainer.test() after fit must not re-freeze.
        if stage == "fit":
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        backbone_stages(pl_module.net)  # an unsupported arch fails before the first epoch
        # Not BaseFinetuning.freeze(): it also sets BatchNorm track_running_stats=False, which
        # makes a BN layer use batch statistics whenever it is in train mode.
        for param in pl_module.net.backbone.parameters():
            param.requires_grad = False

    def finetune_function(self, pl_module: L.LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        # ">=", not "==": after resuming from a checkpoint, parts unfrozen in earlier epochs must
        # train again (their param groups come back from the checkpoint, requires_grad does not).
        stages = backbone_stages(pl_module.net)
        if epoch >= self.unfreeze_last_at:
            self._unfreeze(stages[-1], pl_module, optimizer, epoch)
        if self.unfreeze_all_at is not None and epoch >= self.unfreeze_all_at:
            # The whole backbone: also parameters outside the stages (a ViT's position embedding).
            self._unfreeze([pl_module.net.backbone], pl_module, optimizer, epoch)

    def _unfreeze(self, modules: list[nn.Module], pl_module: L.LightningModule,
                  optimizer: Optimizer, epoch: int) -> None:
        self.make_trainable(modules)
        if not self.train_bn:
            # No trainable parameter left: FoodClassifier.train() keeps these layers in eval mode.
            for module in self.flatten_modules(modules):
                if isinstance(module, _BatchNorm):
                    module.requires_grad_(False)
        # Identity, not BaseFinetuning.filter_on_optimizer, whose torch.equal() comparison drops
        # parameters whose values equal one already added (e.g. freshly initialised BN weights).
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = list(self.filter_params(modules, train_bn=self.train_bn))
        self._unfrozen.update((id(p), p) for p in trainable)
        params = [p for p in trainable if id(p) not in known]
        if params:
            add_scaled_param_group(optimizer, params, self.backbone_lr_factor,
                                   [c.scheduler for c in pl_module.trainer.lr_scheduler_configs])
            # Epochs counted from 1, as the epoch lines count them.
            log.info("epoch %d: unfroze %s (%s parameters) at lr %.3g (%gx the head's)",
                     epoch + 1, module_names(pl_module.net, modules),
                     f"{sum(p.numel() for p in params):,}", optimizer.param_groups[-1]["lr"],
                     self.backbone_lr_factor)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Optimizer) -> None:
        if isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1:
            average_gradients([p for p in self._unfrozen.values() if p.grad is not None],
                              trainer.world_size)


def module_names(net: nn.Module, modules: list[nn.Module], most: int = 4) -> str:
    """The modules' names inside `net`, the first and last of a long list."""
    names_by_id = {id(module): name for name, module in net.named_modules()}
    names = [names_by_id.get(id(module), type(module).__name__) for module in modules]
    if len(names) > most:
        return f"{names[0]} ... {names[-1]} ({len(names)} modules)"
    return ", ".join(names)


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients of `params` (one flat buffer) and divide by the world size."""
    if not params:
        return
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world_size
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)


def add_scaled_param_group(optimizer: Optimizer, params: list[nn.Parameter], factor: float,
                           schedulers: Iterable) -> None:
    """Add params as a group that copies group 0's settings at factor x its learning rates.

    Schedulers created before the group existed learn its base lr too, so they drive it at the
    same ratio as the head (torch's schedulers only know the groups present when they were built).
    """
    head = optimizer.param_groups[0]
    group = {key: value * factor if key in LR_KEYS else value
             for key, value in head.items() if key != "params"}
    optimizer.add_param_group({**group, "params": params})
    for scheduler in schedulers:
        # SequentialLR and ChainedScheduler keep their parts in _schedulers.
        for part in [scheduler, *getattr(scheduler, "_schedulers", [])]:
            base_lrs = getattr(part, "base_lrs", None)
            if base_lrs is not None and len(base_lrs) < len(optimizer.param_groups):
                base_lrs.append(base_lrs[0] * factor)


class FinetuneStrategy:
    """What a fine-tuning strategy decides, and the only place that decides it: which parameters
    train at the start, the callback that changes that during the run, and whether the backbone
    stays frozen for the whole run (then its features can be computed once and reused)."""

    name: str = ""
    backbone_frozen_throughout: bool = False

    def prepare(self, net: TransferNet) -> None:
        """Set which parameters of a freshly built network train from the first epoch."""
        set_backbone_trainable(net, True)

    def callback(self) -> L.Callback | None:
        """The callback that changes what trains during the run, if any."""
        return None

    def to_dict(self) -> dict:
        """Plain values for the checkpoint and the model card: the name and the options."""
        return {"name": self.name}


class Freeze(FinetuneStrategy):
    """The seed: the backbone stays frozen (and in eval mode) for the whole run; the head trains."""

    name = "freeze"
    backbone_frozen_throughout = True

    def prepare(self, net: TransferNet) -> None:
        set_backbone_trainable(net, False)


class Full(FinetuneStrategy):
    """Everything trains from the first epoch."""

    name = "full"


class Gradual(FinetuneStrategy):
    """The head first, then also the last backbone stage, then the whole backbone
    (GradualUnfreezing freezes the backbone itself before training starts)."""

    name = "gradual"

    def __init__(self, unfreeze_last_at: int, unfreeze_all_at: int | None,
                 backbone_lr_factor: float, train_bn: bool):
        self.unfreezing = GradualUnfreezing(unfreeze_last_at, unfreeze_all_at,
                                            backbone_lr_factor, train_bn)

    def callback(self) -> GradualUnfreezing:
        return self.unfreezing

    def to_dict(self) -> dict:
        u = self.unfreezing
        return {"name": self.name, "unfreeze_last_at": u.unfreeze_last_at,
                "unfreeze_all_at": u.unfreeze_all_at,
                "backbone_lr_factor": u.backbone_lr_factor, "train_bn": u.train_bn}

"""finetune=freeze|gradual|full: the gradual schedule, its BatchNorm handling, resuming, config."""

import logging
from functools import partial

import lightning as L
import pytest
import torch
from helpers import compose_train, tiny_overrides
from hydra.errors import ConfigCompositionException
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from foodnet.models.transfer import create_model
from foodnet.train import build
from foodnet.training.finetune import Freeze, Full, Gradual, GradualUnfreezing
from foodnet.training.module import FoodClassifier
from foodnet.training.schedulers import cosine_with_warmup, one_cycle, step_decay

LR = 1e-2
FACTOR = 0.1


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 16, 16, generator=g) * 3 + 1  # far from BN's init stats (0, 1)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (16,), generator=g)), batch_size=8)


def _module(scheduler=None, interval="step"):
    net = create_model("resnet18", num_classes=3, weights=None, freeze=False)
    return FoodClassifier(net, optimizer=partial(torch.optim.Adam, lr=LR), scheduler=scheduler,
                          scheduler_interval=interval)


class Recorder(L.Callback):
    """At every batch start (after all epoch-start hooks) note the param groups and modes."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        backbone = pl_module.net.backbone
        groups = trainer.optimizers[0].param_groups
        self.batches.append({
            "epoch": trainer.current_epoch,
            "groups": [{id(p) for p in g["params"]} for g in groups],
            "lrs": [g["lr"] for g in groups],
            "trainable": {name for name, p in backbone.named_parameters() if p.requires_grad},
            "bn_training": {name for name, m in backbone.named_modules()
                            if isinstance(m, torch.nn.BatchNorm2d) and m.training},
            "state": {id(p) for p in trainer.optimizers[0].state},
        })

    def first_of(self, epoch):
        return next(b for b in self.batches if b["epoch"] == epoch)


class StopAfter(L.Callback):
    """Interrupt the run after `epoch`, as a crash would (last.ckpt holds that epoch)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _fit(module, callbacks, epochs, ckpt_path=None):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader(),
                ckpt_path=ckpt_path)
    return trainer


def _ids(module):
    return {id(p) for p in module.parameters()}


def _names(net, prefix):
    return {n for n, _ in net.backbone.named_parameters() if n.startswith(prefix)}


def _bn_names(net, prefix=""):
    return {n for n, m in net.backbone.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and n.startswith(prefix)}


def _params_of(net, prefix, bn: bool):
    bn_modules = {id(m) for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    out = set()
    for name, module in net.backbone.named_modules():
        if name.startswith(prefix) and (id(module) in bn_modules) == bn:
            out |= {id(p) for p in module.parameters(recurse=False)}
    return out


def test_gradual_unfreezes_layer4_then_the_rest_at_the_configured_epochs(caplog):
    # 6 steps, the warmup spans 3: the schedule switches to cosine after layer4 joined (step 2).
    module = _module(scheduler=partial(cosine_with_warmup, warmup_ratio=0.5,
                                       warmup_start_factor=0.1))
    net = module.net
    bn4_before = net.backbone.layer4[0].bn1.running_mean.clone()
    bnaff_before = net.backbone.layer4[0].bn1.weight.detach().clone()
    conv3_before = net.backbone.layer3[0].conv1.weight.detach().clone()
    recorder = Recorder()
    with caplog.at_level(logging.INFO, logger="foodnet.training.finetune"):
        _fit(module, [GradualUnfreezing(unfreeze_last_at=1, unfreeze_all_at=2,
                                        backbone_lr_factor=FACTOR, train_bn=False), recorder], 3)

    head = {id(p) for p in net.head.parameters()}
    not_bn = {n for n in _names(net, "") if not any(n.startswith(b + ".") for b in _bn_names(net))}
    e0, e1, e2 = (recorder.first_of(epoch) for epoch in range(3))
    # Epoch 0: the head alone trains; every BatchNorm of the frozen backbone is in eval mode.
    assert e0["groups"] == [head] and e0["trainable"] == set() and e0["bn_training"] == set()
    # Epoch 1: layer4 (without its BatchNorm layers) joins as a second group at 0.1 x the head lr.
    assert len(e1["groups"]) == 2 and e1["groups"][1] == _params_of(net, "layer4", bn=False)
    assert e1["trainable"] == {n for n in not_bn if n.startswith("layer4.")}
    assert e1["bn_training"] == set(), "train_bn=false keeps unfrozen BatchNorm in eval mode"
    # Epoch 2: the rest of the backbone joins as a third group.
    assert len(e2["groups"]) == 3 and e2["groups"][2] == (
        _params_of(net, "", bn=False) - _params_of(net, "layer4", bn=False))
    assert e2["trainable"] == not_bn and e2["bn_training"] == set()
    assert set().union(*e2["groups"]) <= _ids(module)
    # Every batch after an unfreeze: each backbone group at FACTOR x the (scheduled) head lr.
    for batch in recorder.batches:
        for lr in batch["lrs"][1:]:
            assert lr == pytest.approx(FACTOR * batch["lrs"][0], rel=1e-9)
    assert len({round(b["lrs"][0], 12) for b in recorder.batches}) == len(recorder.batches)
    # BatchNorm of unfrozen stages kept its statistics and affine; the convolutions trained.
    # One line per unfreeze, epochs counted from 1 as the epoch lines count them, with the
    # size and the lr of the new group (the head's scheduled lr then, times FACTOR).
    sizes = {id(p): p.numel() for p in module.parameters()}
    numbers = [(f"{sum(sizes[i] for i in e1['groups'][1]):,}", f"{e1['lrs'][1]:.3g}"),
               (f"{sum(sizes[i] for i in e2['groups'][2]):,}", f"{e2['lrs'][2]:.3g}")]
    assert [r.getMessage() for r in caplog.records if r.name == "foodnet.training.finetune"] == [
        f"epoch 2: unfroze backbone.layer4 ({numbers[0][0]} parameters) at lr {numbers[0][1]} "
        "(0.1x the head's)",
        f"epoch 3: unfroze backbone ({numbers[1][0]} parameters) at lr {numbers[1][1]} "
        "(0.1x the head's)"]
    assert torch.equal(net.backbone.layer4[0].bn1.running_mean, bn4_before)
    assert torch.equal(net.backbone.layer4[0].bn1.weight, bnaff_before)
    assert not torch.equal(net.backbone.layer3[0].conv1.weight, conv3_before)


def test_gradual_with_train_bn_trains_batchnorm_and_never_unfreezes_the_rest():
    module = _module()
    net = module.net
    bn4_before = net.backbone.layer4[0].bn1.running_mean.clone()
    layer3_before = {k: v.clone() for k, v in net.backbone.layer3.state_dict().items()}
    recorder = Recorder()
    _fit(module, [GradualUnfreezing(unfreeze_last_at=1, unfreeze_all_at=None,
                                    backbone_lr_factor=FACTOR, train_bn=True), recorder], 2)
    e1 = recorder.first_of(1)
    assert e1["groups"][1] == {id(p) for p in net.backbone.layer4.parameters()}
    assert e1["trainable"] == _names(net, "layer4.")
    assert e1["bn_training"] == _bn_names(net, "layer4.")
    assert not torch.equal(net.backbone.layer4[0].bn1.running_mean, bn4_before)
    for key, value in net.backbone.layer3.state_dict().items():
        assert torch.equal(value, layer3_before[key]), f"layer3.{key} changed"


@pytest.mark.parametrize("scheduler", [
    partial(step_decay, step_size=1, gamma=0.5),
    partial(one_cycle, pct_start=0.3, div_factor=10.0, final_div_factor=100.0),
], ids=["step", "onecycle"])
def test_unfrozen_groups_follow_the_schedule_at_the_lr_factor(scheduler):
    recorder = Recorder()
    _fit(_module(scheduler=scheduler, interval="step"),
         [GradualUnfreezing(1, None, FACTOR, train_bn=False), recorder], 2)
    later = [b for b in recorder.batches if b["epoch"] == 1]
    assert len(later[0]["lrs"]) == 2
    assert later[0]["lrs"][0] != later[-1]["lrs"][0], "the head lr must follow the schedule"
    for batch in later:
        assert batch["lrs"][1] == pytest.approx(FACTOR * batch["lrs"][0], rel=1e-9)


def test_resume_after_the_unfreeze_restores_frozen_state_groups_and_optimizer(tmp_path):
    def callbacks(recorder):
        return [GradualUnfreezing(1, 3, FACTOR, train_bn=False), recorder,
                ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)]

    schedule = partial(cosine_with_warmup, warmup_ratio=0.0, warmup_start_factor=1.0)
    first = Recorder()
    # A 3-epoch run interrupted after epoch 1 (layer4 was unfrozen at epoch 1).
    _fit(_module(schedule), [*callbacks(first), StopAfter(1)], 3)
    assert max(b["epoch"] for b in first.batches) == 1
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert len(saved["optimizer_states"][0]["param_groups"]) == 2

    module = _module(schedule)
    second = Recorder()
    _fit(module, callbacks(second), 3, ckpt_path=tmp_path / "last.ckpt")
    resumed = second.batches[0]
    assert resumed["epoch"] == 2 and {b["epoch"] for b in second.batches} == {2}
    net = module.net
    assert resumed["groups"] == [{id(p) for p in net.head.parameters()},
                                 _params_of(net, "layer4", bn=False)]
    assert resumed["trainable"] == {n for n in _names(net, "layer4.")
                                    if not any(n.startswith(b + ".") for b in _bn_names(net))}
    assert resumed["bn_training"] == set()
    # Adam's moments of layer4 came back from the checkpoint (they exist before the first step).
    assert _params_of(net, "layer4", bn=False) <= resumed["state"]
    # The resumed schedule continues (does not restart) and drives the layer4 group too.
    last_before = first.batches[-1]["lrs"][0]
    assert resumed["lrs"][0] < last_before
    assert resumed["lrs"][1] == pytest.approx(FACTOR * resumed["lrs"][0], rel=1e-9)


def test_unsupported_arch_and_bad_schedule_fail_clearly():
    net = create_model("mobilenet_v3_small", num_classes=3, weights=None, freeze=False)
    with pytest.raises(ValueError, match="not model.arch=mobilenet_v3_small.*finetune=full"):
        GradualUnfreezing(1, 2, FACTOR, False).freeze_before_training(FoodClassifier(net))
    with pytest.raises(ValueError, match="unfreeze_all_at=1 must come after.*unfreeze_last_at=2"):
        GradualUnfreezing(2, 1, FACTOR, False)
    with pytest.raises(ValueError, match="backbone_lr_factor=0"):
        GradualUnfreezing(1, 2, 0, False)


def test_the_strategy_alone_decides_what_trains(tiny_data, tmp_path):
    for strategy, trains_backbone, reusable in ((Freeze(), False, True), (Full(), True, False)):
        net = create_model("resnet18", num_classes=3, weights=None, freeze=not trains_backbone)
        strategy.prepare(net)
        assert any(p.requires_grad for p in net.backbone.parameters()) is trains_backbone
        assert strategy.callback() is None
        assert strategy.backbone_frozen_throughout is reusable
    gradual = Gradual(unfreeze_last_at=1, unfreeze_all_at=None, backbone_lr_factor=0.5,
                      train_bn=True)
    assert isinstance(gradual.callback(), GradualUnfreezing)
    assert gradual.callback().backbone_lr_factor == 0.5
    # Its callback freezes, then unfreezes in steps: the features change during the run.
    assert not gradual.backbone_frozen_throughout
    assert gradual.to_dict() == {"name": "gradual", "unfreeze_last_at": 1, "unfreeze_all_at": None,
                                 "backbone_lr_factor": 0.5, "train_bn": True}
    with pytest.raises(ConfigCompositionException, match="finetune/partial"):
        compose_train(tiny_overrides(tiny_data, finetune="partial"))
    with pytest.raises(ConfigCompositionException, match="train_bn"):
        compose_train(tiny_overrides(tiny_data, finetune="full", **{"finetune.train_bn": "true"}))
    # No second key can contradict it: model.freeze does not exist.
    with pytest.raises(ConfigCompositionException, match="model.freeze"):
        compose_train(tiny_overrides(tiny_data, **{"model.freeze": "false"}))
    for strategy, trains_backbone in (("freeze", False), ("full", True), ("gradual", True)):
        cfg = compose_train(tiny_overrides(tiny_data, finetune=strategy), run_dir=tmp_path)
        _, module, _ = build(cfg)
        assert any(p.requires_grad for p in module.net.backbone.parameters()) is trains_backbone



def test_finetune_choices_in_the_real_config(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data), run_dir=tmp_path)
    assert cfg.finetune._target_.endswith(".Freeze")
    _, module, trainer = build(cfg)
    assert module.net.backbone_frozen
    assert not any(isinstance(c, GradualUnfreezing) for c in trainer.callbacks)

    cfg = compose_train(tiny_overrides(tiny_data, finetune="full"), run_dir=tmp_path)
    _, module, trainer = build(cfg)
    assert all(p.requires_grad for p in module.parameters())

    cfg = compose_train(tiny_overrides(tiny_data, finetune="gradual",
                                       **{"finetune.unfreeze_all_at": "null"}), run_dir=tmp_path)
    _, module, trainer = build(cfg)
    [callback] = [c for c in trainer.callbacks if isinstance(c, GradualUnfreezing)]
    assert (callback.unfreeze_last_at, callback.unfreeze_all_at) == (2, None)
    assert (callback.backbone_lr_factor, callback.train_bn) == (0.1, False)


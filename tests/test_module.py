import copy
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from foodnet.models.transfer import create_model
from foodnet.training.module import FoodClassifier


def _loader(n=24, size=32, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g) * 3 + 1  # far from BN's init stats (0, 1)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _fit(module, epochs=1):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return trainer


def _bn_buffers(net):
    return {k: v.clone() for k, v in net.backbone.state_dict().items()
            if "running" in k or "num_batches" in k}


def test_frozen_backbone_batchnorm_statistics_do_not_drift():
    net = create_model("resnet18", num_classes=3, weights=None, freeze=True)
    before_bn = _bn_buffers(net)
    before_backbone = copy.deepcopy(net.backbone.state_dict())
    before_head = net.head.weight.detach().clone()
    module = FoodClassifier(net)
    _fit(module)
    after_bn = _bn_buffers(net)
    assert before_bn.keys() == after_bn.keys() and len(before_bn) > 0
    for key in before_bn:
        assert torch.equal(before_bn[key], after_bn[key]), key
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(before_backbone[key], value), key
    assert not torch.equal(before_head, net.head.weight), "the head must have trained"


def test_train_mode_keeps_frozen_parts_in_eval():
    module = FoodClassifier(create_model("resnet18", num_classes=3, weights=None, freeze=True))
    module.train()
    assert module.training and module.net.head.training
    assert not module.net.backbone.training
    assert not any(m.training for m in module.net.backbone.modules())


def test_unfrozen_batchnorm_does_update():
    """The control for the test above: with freeze=false the same run moves BN statistics."""
    net = create_model("resnet18", num_classes=3, weights=None, freeze=False)
    before = _bn_buffers(net)
    _fit(FoodClassifier(net))
    after = _bn_buffers(net)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_optimizer_holds_only_the_head_when_frozen():
    net = create_model("resnet18", num_classes=3, weights=None, freeze=True)
    module = FoodClassifier(net, optimizer=partial(torch.optim.Adam, lr=1e-3))
    optimizer = module.configure_optimizers()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in net.head.parameters()}
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert isinstance(optimizer, torch.optim.Adam)


def test_optimizer_holds_everything_when_unfrozen():
    net = create_model("resnet18", num_classes=3, weights=None, freeze=False)
    optimizer = FoodClassifier(net).configure_optimizers()
    count = sum(len(g["params"]) for g in optimizer.param_groups)
    assert count == len(list(net.parameters()))


def test_metrics_are_logged_with_split_keys():
    module = FoodClassifier(create_model("resnet18", num_classes=3, weights=None))
    trainer = _fit(module, epochs=2)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/f1_macro",
                "val/acc_best"):
        assert key in trainer.callback_metrics, key
    # The last epoch's val/acc is the final weights' accuracy on the val loader, counted by hand.
    module.eval()
    with torch.no_grad():
        right = sum(int((module.net(x).argmax(dim=1) == y).sum()) for x, y in _loader())
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(right / 24, abs=1e-6)
    metrics = trainer.callback_metrics
    assert float(metrics["val/acc_best"]) >= float(metrics["val/acc"])

"""Training options: LR schedules, weight decay, label smoothing, class weights, gradient clipping,
early stopping, and the top-5 / macro-F1 / per-class metrics."""

import json
import math
from functools import partial

import lightning as L
import pytest
import torch
from helpers import checkpoint_scores, compose_train, tiny_overrides
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from foodnet.models.transfer import TransferNet
from foodnet.train import build, train
from foodnet.training.module import FoodClassifier, balanced_class_weights
from foodnet.training.schedulers import cosine_with_warmup, one_cycle, step_decay


def _lrs(make_scheduler, steps, lr=1.0):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_step_decay_multiplies_by_gamma_every_step_size():
    lrs = _lrs(lambda opt: step_decay(opt, total=8, step_size=3, gamma=0.1), 8)
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1)
    with pytest.warns(UserWarning, match="step_size=8 but the run has only 8 .* never decays"):
        step_decay(optimizer, 8, 8, 0.1)
    with pytest.raises(ValueError, match="step_size=0 must be at least 1"):
        step_decay(optimizer, 8, 0, 0.1)


def test_cosine_warms_up_linearly_then_decays_to_zero():
    total, warmup = 20, 4  # warmup_ratio 0.2
    lrs = _lrs(lambda opt: cosine_with_warmup(opt, total, 0.2, 0.01), total)
    assert lrs[:warmup + 1] == pytest.approx([0.01, 0.2575, 0.505, 0.7525, 1.0])
    expected = [0.5 * (1 + math.cos(math.pi * k / (total - warmup)))
                for k in range(total - warmup)]
    assert lrs[warmup:] == pytest.approx(expected)
    assert _lrs(lambda opt: cosine_with_warmup(opt, 4, 0.0, 0.01), 4) == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    with pytest.raises(ValueError, match="finite run length.*trainer.max_epochs"):
        cosine_with_warmup(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1), -1, 0.1, 0.1)


def test_one_cycle_rises_to_the_configured_lr_then_anneals():
    lrs = _lrs(lambda opt: one_cycle(opt, 12, pct_start=0.5, div_factor=10.0,
                                     final_div_factor=100.0), 12, lr=2.0)
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(2.0) and peak == 5
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=True))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))
    assert lrs[-1] == pytest.approx(0.2 / 100)


@pytest.mark.parametrize("choice", ["none", "step", "cosine", "onecycle"])
def test_scheduler_configs_build_their_schedule(choice):
    cfg = compose_train([f"scheduler={choice}"])
    factory = instantiate(cfg.scheduler.schedule)
    if choice == "none":
        assert factory is None and cfg.scheduler.interval == "epoch"
        return
    lrs = _lrs(lambda opt: factory(opt, 20), 20)
    assert lrs[-1] < max(lrs) and len(set(lrs)) > 2


class _Logits(nn.Module):
    """Identity 'backbone' with no parameters: the inputs are the logits."""

    def forward(self, x):
        return x


def _identity_net(num_classes):
    head = nn.Linear(num_classes, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.eye(num_classes))
        head.bias.zero_()
    return TransferNet(_Logits(), head, arch="identity")


def _trainer(**kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


class _Record(L.Callback):
    """Note the head lr at every batch start and the loss every training step returned."""

    def __init__(self):
        self.lrs, self.losses = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_lightning_steps_the_schedule_per_batch_or_per_epoch():
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 4, generator=g),
                                    torch.randint(0, 4, (12,), generator=g)), batch_size=4)
    record = _Record()
    seen = record.lrs
    per_step = FoodClassifier(_identity_net(4), optimizer=partial(torch.optim.SGD, lr=1.0),
                              scheduler=partial(cosine_with_warmup, warmup_ratio=0.0,
                                                warmup_start_factor=1.0),
                              scheduler_interval="step")
    _trainer(max_epochs=2, callbacks=[record]).fit(per_step, data)
    # 2 epochs x 3 batches: the cosine spans the 6 optimizer steps Lightning estimated.
    assert seen == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])

    seen.clear()
    per_epoch = FoodClassifier(_identity_net(4), optimizer=partial(torch.optim.SGD, lr=1.0),
                               scheduler=partial(step_decay, step_size=1, gamma=0.5),
                               scheduler_interval="epoch")
    _trainer(max_epochs=3, callbacks=[record]).fit(per_epoch, data)
    assert seen == pytest.approx([1.0] * 3 + [0.5] * 3 + [0.25] * 3)


def test_label_smoothing_and_class_weights_shape_the_train_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1, 0])
    logp = logits.log_softmax(dim=1)
    nll = -logp[torch.arange(3), y]

    def loss_of(**options):
        """The loss of one real training step on these logits."""
        record = _Record()
        module = FoodClassifier(_identity_net(3), **options)
        _trainer(max_epochs=1, callbacks=[record]).fit(
            module, DataLoader(TensorDataset(logits, y), batch_size=3))
        return record.losses[0]

    assert loss_of() == pytest.approx(float(nll.mean()))
    eps = 0.3  # (1 - eps) x NLL of the target + eps x the mean NLL over all classes
    smoothed = (1 - eps) * nll + eps * (-logp.mean(dim=1))
    assert loss_of(label_smoothing=eps) == pytest.approx(float(smoothed.mean()))
    w = torch.tensor([0.5, 2.0, 1.0])
    assert loss_of(class_weights=w.tolist()) == pytest.approx(
        float((w[y] * nll).sum() / w[y].sum()))
    with pytest.raises(ValueError, match="class_weights has 2 values; it needs 3"):
        FoodClassifier(_identity_net(3), class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="label_smoothing=1.0 must be in"):
        FoodClassifier(_identity_net(3), label_smoothing=1.0)


def test_balanced_class_weights_from_the_train_manifest(tiny_data, tmp_path):
    assert balanced_class_weights([0, 0, 0, 1], 3) == pytest.approx([4 / 9, 4 / 3, 0.0])
    # Keep 4 images of class 0 and 1 of every other class: 23 samples, 20 classes.
    kept, count = [], {}
    for line in tiny_data["train"].read_text().splitlines():
        path, label = line.rsplit(maxsplit=1)
        count[label] = count.get(label, 0) + 1
        if label == "0" or count[label] == 1:
            kept.append(f"{tiny_data['train'].parent / path} {label}")
    manifest = tmp_path / "imbalanced.txt"
    manifest.write_text("\n".join(kept) + "\n")
    cfg = compose_train(tiny_overrides(tiny_data, **{"data.train_manifest": manifest,
                                                     "model.class_weights": "balanced"}),
                        run_dir=tmp_path)
    _, module, _ = build(cfg)
    expected = [23 / (20 * 4)] + [23 / 20] * 19
    assert module.class_weights.tolist() == pytest.approx(expected)
    cfg = compose_train(tiny_overrides(tiny_data, **{"model.class_weights": "inverse"}),
                        run_dir=tmp_path)
    with pytest.raises(ValueError, match="class_weights=inverse is unknown"):
        build(cfg)


def test_weight_decay_reaches_the_optimizer(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data), run_dir=tmp_path)
    assert cfg.model.optimizer.weight_decay == 0.0 and cfg.scheduler.schedule is None
    cfg = compose_train(tiny_overrides(tiny_data, **{"model.optimizer.weight_decay": 0.05,
                                                     "model.optimizer._target_":
                                                         "torch.optim.AdamW"}), run_dir=tmp_path)
    optimizer = build(cfg)[1].configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05


def test_top5_f1_and_per_class_accuracy_match_a_hand_count():
    # 6 classes; the inputs are the logits. Classes 4 and 5 have no sample.
    logits = torch.tensor([
        [9, 8, 7, 6, 5, 0],   # y=0: top-1 right
        [9, 8, 7, 6, 5, 0],   # y=1: top-1 wrong (0), in the top 5
        [0, 1, 2, 3, 4, 9],   # y=0: wrong (5), not in the top 5
        [0, 9, 0, 0, 0, 0],   # y=1: right
        [0, 0, 9, 0, 0, 0],   # y=2: right
        [0, 0, 0, 1, 9, -1],  # y=3: wrong (4), in the top 5 (4, 3, then the three zeros)
    ], dtype=torch.float32)
    y = torch.tensor([0, 1, 0, 1, 2, 3])
    names = [f"c{i}" for i in range(6)]
    module = FoodClassifier(_identity_net(6), class_names=names)
    data = DataLoader(TensorDataset(logits, y), batch_size=4)
    result = _trainer().test(module, data, verbose=False)[0]
    assert result["test/acc"] == pytest.approx(3 / 6)
    assert result["test/acc_top5"] == pytest.approx(5 / 6)
    # Per class: tp / fp / fn -> F1 = 2tp / (2tp + fp + fn)
    # c0: tp1 fp1 fn1 -> 0.5; c1: tp1 fp0 fn1 -> 2/3; c2: tp1 -> 1; c3: tp0 fn1 -> 0;
    # c4: fp1 -> 0; c5: fp1 -> 0. Each was a target or a prediction: all six count.
    assert result["test/f1_macro"] == pytest.approx((0.5 + 2 / 3 + 1 + 0 + 0 + 0) / 6)
    assert module.test_per_class_acc == {"c0": 0.5, "c1": 0.5, "c2": 1.0, "c3": 0.0,
                                         "c4": None, "c5": None}
    # With 3 classes top-5 is clamped to top-3: always right.
    small = FoodClassifier(_identity_net(3))
    three = DataLoader(TensorDataset(logits[:, :3], torch.tensor([2, 2, 1, 0, 0, 1])))
    assert _trainer().test(small, three, verbose=False)[0]["test/acc_top5"] == 1.0
    validated = _trainer().validate(small, three, verbose=False)[0]
    assert {"val/acc", "val/acc_top5", "val/f1_macro"} <= set(validated)


class _RecordingSGD(torch.optim.SGD):
    """SGD that notes the total gradient norm it is asked to apply."""

    norms: list[float] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        super().step()
        return loss


def test_gradient_clipping_caps_the_norm_the_optimizer_sees(tiny_data, tmp_path):
    cfg = compose_train([*tiny_overrides(tiny_data, **{
        "trainer.gradient_clip_val": 0.01, "+trainer.limit_train_batches": 2,
        "+trainer.limit_val_batches": 1}), "~logger", "~callbacks"], run_dir=tmp_path)
    datamodule, module, trainer = build(cfg)
    module.optimizer_factory = partial(_RecordingSGD, lr=0.1)
    before = []
    unclipped = L.Callback()
    unclipped.on_before_optimizer_step = lambda tr, pl, opt: before.append(float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                              for p in pl.parameters() if p.grad is not None]))))
    trainer.callbacks.append(unclipped)
    _RecordingSGD.norms = []
    trainer.fit(module, datamodule=datamodule)
    assert len(before) == len(_RecordingSGD.norms) == 2
    assert all(b > 0.01 for b in before), before  # the control: the raw gradients are larger
    assert all(n <= 0.01 * (1 + 1e-4) for n in _RecordingSGD.norms), _RecordingSGD.norms


def test_early_stopping_on_stalled_val_acc_and_metrics_json(tiny_data, tmp_path):
    # A vanishing lr (0 is refused) with a frozen backbone: val/acc never improves, so patience 1
    # stops after epoch 2.
    cfg = compose_train([*tiny_overrides(tiny_data, **{
        "callbacks": "early_stopping", "callbacks.early_stopping.patience": 1,
        "model.optimizer.lr": 1e-12, "trainer.max_epochs": 5,
        "data.test_manifest": tiny_data["test"]}), "~logger"], run_dir=tmp_path)
    assert cfg.callbacks.early_stopping.monitor == "val/acc"
    metrics = train(cfg)
    assert metrics["epochs"] == 2
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["epochs"] == 2
    expected = checkpoint_scores(written["best_checkpoint"], tiny_data["test"])
    for name in ("acc", "acc_top5", "f1_macro"):
        assert written[f"test/{name}"] == pytest.approx(expected[name], abs=1e-6), name
    per_class = written["test/per_class_acc"]
    assert list(per_class) == [line.strip() for line in
                               tiny_data["classes"].read_text().splitlines()]
    # 2 test images per class: each class accuracy is 0, 0.5 or 1, and they average to test_acc.
    assert set(per_class.values()) <= {0.0, 0.5, 1.0}
    assert sum(per_class.values()) / len(per_class) == pytest.approx(written["test/acc"])


def test_demo_experiment_is_the_seed_recipe_on_the_pretrained_lite0():
    cfg = compose_train(["experiment=demo"])
    assert (cfg.model.arch, cfg.model.weights) == ("efficientnet_lite0", "DEFAULT")
    assert cfg.finetune._target_.endswith(".Freeze") and "freeze" not in cfg.model.net
    assert cfg.scheduler.schedule is None  # the seed's constant learning rate
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.cache_features is True

"""Speed decided by measurement: the calibration, its decisions, the cache, explicit values win,
channels_last, compiling the frozen backbone."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import compose_train, seed_preprocessing, tiny_overrides
from torch import nn

from foodnet import machine
from foodnet.models.transfer import TransferNet, create_model
from foodnet.speed import decide, measure
from foodnet.speed.cache import SpeedCache
from foodnet.speed.compile import CompiledForward, CompileMeasurement
from foodnet.speed.frozen import FrozenBackbone
from foodnet.speed.measure import FP32, Calibration
from foodnet.speed.plan import SpeedPlan, resolve_speed
from foodnet.train import build
from foodnet.training.features import extract_features
from foodnet.training.module import FoodClassifier

CPU = torch.device("cpu")
BF16 = "bf16-mixed"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostedNet(nn.Module):
    """A stand-in for a machine's speed: each forward advances a fake clock by the seconds per
    image that `costs` gives its (precision, layout), so the calibration's decisions are tested
    on known timings."""

    def __init__(self, clock: FakeClock, costs: dict[tuple[str, bool], float]):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)  # a 4-d weight, whose layout the calibration switches
        self.clock, self.costs, self.calls = clock, costs, []

    def forward(self, x):
        precision = BF16 if torch.is_autocast_enabled("cpu") else FP32
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and \
            not x.is_contiguous()
        self.calls.append((precision, channels_last))
        self.clock.now += self.costs[(precision, channels_last)] * x.shape[0]
        return self.conv(x).mean(dim=(2, 3))


def costed(fp32_cl=0.125, fp32=0.175, bf16_cl=0.0625, bf16=0.0875) -> CostedNet:
    return CostedNet(FakeClock(), {(FP32, True): fp32_cl, (FP32, False): fp32,
                                   (BF16, True): bf16_cl, (BF16, False): bf16})


def calibrate(net: CostedNet, budget_s: float = 15.0) -> Calibration:
    return measure.calibrate(net, 8, CPU, budget_s=budget_s, clock=net.clock)


def test_calibration_measures_every_setting_and_picks_a_clearly_faster_bf16():
    net = costed()  # bf16 at 2x fp32, channels_last 1.4x contiguous
    calibration = calibrate(net)
    assert calibration.complete and not calibration.skipped
    assert calibration.batch == 4  # 0.5 s of fp32 forward at 0.125 s per image
    assert calibration.rate(FP32, True) == pytest.approx(8.0)
    assert calibration.rate(FP32, False) == pytest.approx(1 / 0.175)
    assert calibration.rate(BF16, True) == pytest.approx(16.0)
    choice = decide.choose_precision(calibration, BF16)
    assert (choice.precision, choice.channels_last, choice.why) == (BF16, True, "2.00x fp32")
    assert calibration.seconds <= 15.0
    # warm-up + 3 timed samples of each setting, interleaved (the last rounds alternate)
    assert net.calls[-4:] == [(FP32, True), (FP32, False), (BF16, True), (BF16, False)]


def test_bf16_far_slower_is_not_chosen_and_its_other_layout_not_even_timed():
    calibration = calibrate(costed(bf16_cl=0.8, bf16=6.0))  # an AVX2-only CPU emulating bf16
    choice = decide.choose_precision(calibration, BF16)
    assert choice.precision == FP32 and choice.channels_last
    assert "bf16-mixed ran at 0.16x fp32, below the 1.2x margin" in choice.why
    assert "twice as fast to change the decision" in calibration.skipped[f"{BF16} contiguous"]
    assert calibration.complete  # nothing that matters was left out


def test_a_setting_that_would_overrun_the_budget_is_skipped_and_the_result_incomplete():
    calibration = calibrate(costed(fp32_cl=0.5, fp32=0.6, bf16_cl=0.2), budget_s=2.5)
    assert calibration.rate(FP32, True) is not None
    assert "budget" in calibration.skipped[f"{BF16} channels_last"]
    assert not calibration.complete
    assert decide.choose_precision(calibration, BF16).precision == FP32


def test_a_slow_warm_up_does_not_use_up_the_budget():
    """The first forward of a big network on a busy CPU can take longer than the whole budget
    (kernel selection): the timed settings still get theirs, and the decision is made."""
    net = costed()
    forward = net.forward

    def first_call_slow(x):
        if not net.calls:
            net.clock.now += 20.0
        return forward(x)

    net.forward = first_call_slow
    calibration = calibrate(net)
    assert calibration.rate(FP32, True) is not None and calibration.rate(BF16, True) is not None
    assert calibration.complete and calibration.seconds > 20.0
    assert decide.choose_precision(calibration, BF16).precision == BF16


@pytest.mark.parametrize(("rates", "spread", "error", "expected", "why"), [
    ({"32-true channels_last": 10, f"{BF16} channels_last": 11}, 1.0, 0.0, FP32,
     "1.10x fp32, below the 1.2x margin"),
    ({"32-true channels_last": 10, f"{BF16} channels_last": 15}, 1.0, 0.0, BF16, "1.50x fp32"),
    # a busy machine: bf16's slowest sample is no faster than fp32's fastest by the margin
    # (the number named first is the one compared with the margin)
    ({"32-true channels_last": 10, f"{BF16} channels_last": 15}, 1.4, 0.0, FP32,
     "ran at 1.07x fp32 in its slowest sample (1.50x at best), below the 1.2x margin"),
    ({"32-true channels_last": 10, f"{BF16} channels_last": 20}, 1.0, 0.05, FP32,
     "features differ by 5.0%"),
    ({"32-true channels_last": 10, "32-true contiguous": 12}, 1.0, 0.0, FP32, "not measured"),
])
def test_precision_decision_on_fake_timings(rates, spread, error, expected, why):
    calibration = Calibration(device="test", img_per_s=rates,
                              spread={f"{BF16} channels_last": spread},
                              feature_error={BF16: error})
    choice = decide.choose_precision(calibration, BF16)
    assert choice.precision == expected and why in choice.why
    if "32-true contiguous" in rates:
        assert choice.channels_last is False  # the faster layout measured
    assert decide.choose_precision(calibration, None).precision == FP32  # fp32-only devices


def test_decisions_are_cached_per_device_arch_and_size_and_explicit_values_win(tmp_path,
                                                                             monkeypatch):
    calls = []
    real = decide.calibrate

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, clock=net.clock, **kwargs)

    monkeypatch.setattr(decide, "calibrate", counting)
    net = costed()
    cache = SpeedCache(tmp_path / "speed.json")
    first = decide.choose_precision_and_layout(net, 8, CPU, "costed", cache=cache)
    assert (first.precision, first.channels_last) == (BF16, True) and calls == [8]
    assert "precision auto: bf16-mixed (2.00x fp32; measured on" in first.notes[0]
    assert "channels_last auto: true (channels_last 1.40x contiguous in bf16-mixed" in \
        first.notes[1]
    # The second run reads the cache, even if the machine would measure otherwise now.
    net.costs[(BF16, True)] = net.costs[(BF16, False)] = 1.0
    again = decide.choose_precision_and_layout(net, 8, CPU, "costed", cache=cache)
    assert (again.precision, again.channels_last) == (BF16, True) and calls == [8]
    assert f"from the cache {cache.path}, measured there on" in again.notes[0]
    assert "measured on" not in again.notes[0]
    entries = json.loads(cache.path.read_text())
    (key,) = entries
    assert "costed" in key and "8px" in key and f"torch {torch.__version__}" in key
    assert machine.cpu_model() in key

    other_size = decide.choose_precision_and_layout(net, 16, CPU, "costed", cache=cache)
    assert other_size.precision == FP32 and calls == [8, 16]  # measured anew: bf16 slow now

    explicit = decide.choose_precision_and_layout(net, 8, CPU, "costed", precision=FP32,
                                                  channels_last=False, cache=cache)
    assert (explicit.precision, explicit.channels_last, explicit.notes) == (FP32, False, ())
    resumed = decide.choose_precision_and_layout(
        net, 16, CPU, "costed", cache=cache, resumed={"precision": BF16, "channels_last": False})
    assert (resumed.precision, resumed.channels_last) == (BF16, False)
    assert resumed.notes[:2] == (
        "precision auto: bf16-mixed, kept from the checkpoint being resumed",
        "channels_last auto: false, kept from the checkpoint being resumed")


def test_an_incomplete_calibration_keeps_fp32_and_is_cached_all_the_same(tmp_path,
                                                                         monkeypatch):
    net = costed(fp32_cl=3.0, fp32=3.0, bf16_cl=1.0, bf16=1.0)  # bf16 would overrun 15 s
    real = decide.calibrate
    monkeypatch.setattr(decide, "calibrate",
                        lambda *args, **kwargs: real(*args, clock=net.clock, **kwargs))
    cache = SpeedCache(tmp_path / "speed.json")
    settings = decide.choose_precision_and_layout(net, 8, CPU, "costed", cache=cache)
    assert settings.precision == FP32
    assert "bf16-mixed not measured: over the 15 s calibration budget" in settings.notes[0]
    assert settings.notes[-1] == (
        "speed: the measurement is incomplete (bf16-mixed channels_last, bf16-mixed contiguous "
        f"over the time budget): delete {cache.path} to measure again")
    # Cached: the next run decides the same, even where it would have had time to measure.
    net.costs.update({key: 0.01 for key in net.costs})
    assert decide.choose_precision_and_layout(net, 8, CPU, "costed", cache=cache).precision == FP32


def test_a_busy_measurement_is_said_once_and_a_cached_decision_says_where_it_came_from(
        tmp_path, monkeypatch):
    busy = Calibration(device="test CPU", img_per_s={"32-true channels_last": 10.0,
                                                     f"{BF16} channels_last": 17.8},
                       spread={f"{BF16} channels_last": 1.648}, seconds=3.0, load=1.6)
    calm = Calibration(device="test CPU", img_per_s=busy.img_per_s, seconds=3.0, load=0.1)
    cache = SpeedCache(tmp_path / "speed.json")
    for calibration, name in ((busy, "busy"), (calm, "calm")):
        monkeypatch.setattr(decide, "calibrate", lambda *args, c=calibration, **kwargs: c)
        measured = decide.choose_precision_and_layout(costed(), 8, CPU, name, cache=cache)
        cached = decide.choose_precision_and_layout(costed(), 8, CPU, name, cache=cache)
        doubts = [note for note in measured.notes if "machine was busy" in note]
        if calibration is busy:
            assert doubts == ["speed: the machine was busy while measuring (load 1.6, samples "
                              f"varied up to 1.6x): delete {cache.path} to measure again"]
        else:  # the control: a calm measurement has no such line
            assert doubts == []
        assert len(measured.notes) == 2 + len(doubts)
        assert "measured on test CPU in 3.0 s" in measured.notes[0]
        # From the cache: no second telling of the busy machine, and the source is named.
        assert len(cached.notes) == 2
        assert not any("machine was busy" in note for note in cached.notes)
        assert all(f"from the cache {cache.path}, measured there on test CPU" in note
                   for note in cached.notes)
    busy_choice = decide.choose_precision(busy, BF16)
    assert busy_choice.why == ("bf16-mixed ran at 1.08x fp32 in its slowest sample (1.78x at "
                               "best), below the 1.2x margin")


def test_the_default_cache_is_in_the_users_cache_folder(_user_cache):
    assert SpeedCache().path == _user_cache / "foodnet" / "speed.json"


def test_train_config_measures_once_and_logs_its_decision(tiny_data, tmp_path, caplog,
                                                         monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing measured yet
    # tiny runs pin precision, layout and compile: this one asks for auto, as train.yaml does
    cfg = compose_train(tiny_overrides(tiny_data, **{"trainer.precision": "auto",
                                                     "channels_last": "auto", "compile": "auto"}),
                        run_dir=tmp_path)
    assert cfg.trainer.precision == "auto" and cfg.channels_last == "auto"
    assert cfg.compile == "auto"
    with caplog.at_level(logging.INFO):
        _, module, trainer = build(cfg)
        _, _, again = build(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision auto")]
    assert len(lines) == 2 and "measured on" in lines[0] and "from the cache" in lines[1]
    assert str(trainer.precision) == str(again.precision)
    assert str(trainer.precision) in lines[0]
    compile_lines = [r.getMessage() for r in caplog.records
                     if r.getMessage().startswith("compile auto")]
    assert compile_lines[0].startswith("compile auto: off (not measured here yet; 120 backbone "
                                       "passes")
    assert not module.speed.compiled and module.frozen_backbone.forward is module.net.backbone
    explicit = compose_train(tiny_overrides(tiny_data, **{"trainer.precision": "bf16-mixed",
                                                          "channels_last": "false",
                                                          "compile": "false"}),
                             run_dir=tmp_path)
    _, module, trainer = build(explicit)
    assert trainer.precision == "bf16-mixed" and not module.speed.channels_last


def test_channels_last_module_gives_the_same_logits(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data, channels_last="true"), run_dir=tmp_path)
    _, module, _ = build(cfg)
    conv = module.net.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = FoodClassifier(create_model("resnet18", num_classes=20, weights=None))
    plain.load_state_dict(module.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- compile

def tiny_backbone() -> nn.Module:
    """Small enough to compile in seconds; BatchNorm with real statistics, which freezing folds."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    for param in net.parameters():
        param.requires_grad = False
    return net


@pytest.mark.parametrize(("images", "measured", "expected", "why"), [
    (1000, None, False, "too few to pay for a first compile"),
    (40000, None, True, "enough to try"),
    # measured: 1.5x at 10 s per 64 images eager, 60 s to compile
    (64 * 10, CompileMeasurement(60, 10.0, 10 / 1.5, 64), False, "would save 33 s of 100 s"),
    (64 * 100, CompileMeasurement(60, 10.0, 10 / 1.5, 64), True, "would save 333 s of 1000 s"),
    (64 * 100, CompileMeasurement(60, 10.0, 12.0, 64), False, "0.83x eager"),
])
def test_compile_decision_on_fake_measurements(images, measured, expected, why):
    chosen, reason = decide.compile_pays_back(images, eager_img_per_s=100.0, measured=measured)
    assert chosen is expected and why in reason


def test_compiled_backbone_gives_the_eager_features_and_records_what_it_gained(tiny_data,
                                                                               tmp_path):
    from foodnet.data import FoodDataModule

    backbone = tiny_backbone()
    net = TransferNet(backbone, nn.Linear(16, 20), arch="tiny")
    cache = SpeedCache(tmp_path / "speed.json")
    plan = resolve_speed(backbone, arch="tiny", image_size=32, device=CPU, batch_size=16,
                         precision=FP32, channels_last=False, compile=True, images=80,
                         cache=cache)
    assert plan.compiled and plan.compile_batch == 16
    frozen = FrozenBackbone(backbone, plan)
    compiled = frozen.forward
    assert isinstance(compiled, CompiledForward)
    with torch.no_grad():  # a smaller batch first (a small validation set): eager, no compile
        small = torch.randn(5, 3, 32, 32)
        assert torch.equal(compiled(small), backbone(small)) and compiled.state == "new"
    loader = FoodDataModule(tiny_data["train"], tiny_data["val"], classes=tiny_data["classes"],
                            preprocessing=seed_preprocessing(32), batch_size=16,
                            num_workers=0).image_loader(
        "train", augmented=False)
    eager, labels = extract_features(backbone, loader)
    fast, fast_labels = extract_features(backbone, loader, forward=frozen)
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert torch.equal(fast_labels, labels) and fast.shape == (80, 16)
    # 5 batches of 16: compiled, timed compiled, timed eager, then the faster one
    assert compiled.state in ("fast", "eager") and compiled.measurement.batch == 16
    assert compiled.measurement.compile_s > 0
    (entry,) = json.loads(cache.path.read_text()).values()
    assert entry["measurement"]["batch"] == 16
    # the head on them, in training (grad on, no_grad inside): the same compiled graph
    x = next(iter(loader))[0]
    signature = compiled.signature
    torch.testing.assert_close(net.head(frozen(x)), net(x), atol=1e-4, rtol=1e-4)
    assert compiled.signature == signature
    # another batch shape runs eager instead of compiling again
    with torch.no_grad():
        torch.testing.assert_close(compiled(x[:5]), backbone(x[:5]))


@pytest.mark.parametrize("per_image, cache, batch, expected", [
    (4 * 2**20, 32 * 2**20, 64, 8),  # a ResNet152 at 256 px: 8 images fill a 32 MiB cache
    (4 * 2**20, 32 * 2**20, 8, None),  # the batch fits: one pass
    (2**18, 32 * 2**20, 64, None),  # a small network on small images: the whole batch
    (64 * 2**20, 32 * 2**20, 64, 1),  # bigger than the cache: one image at a time
    (4 * 2**20, None, 64, 8),  # cache size unknown: 32 MiB assumed
])
def test_pass_size_keeps_the_largest_activation_in_cache(per_image, cache, batch, expected):
    assert decide.pass_size(per_image, cache, batch) == expected


def test_backbone_batch_measures_on_cpu_takes_the_whole_batch_on_gpu_and_explicit_wins():
    backbone = tiny_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()
    # conv1: 8 channels x 16 x 16 floats per image, the largest of tiny_backbone at 16 px
    assert measure.largest_activation(backbone, 16, CPU) == 8 * 16 * 16 * 4
    assert backbone.training  # its mode is kept, and BatchNorm statistics did not move
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    size, why = decide.choose_backbone_batch("auto", CPU, 10_000, backbone, 16)
    assert size == decide.pass_size(8 * 16 * 16 * 4, machine.last_level_cache(), 10_000)
    assert "largest activation" in why
    assert decide.choose_backbone_batch("auto", torch.device("cuda"), 64, backbone, 16)[0] is None
    assert decide.choose_backbone_batch(16, torch.device("cuda"), 64)[0] == 16
    assert decide.choose_backbone_batch(64, CPU, 64)[0] is None


def test_a_frozen_backbone_runs_in_passes_of_backbone_batch_with_the_same_features():
    backbone = tiny_backbone()
    net = TransferNet(backbone, nn.Linear(16, 20), arch="tiny")
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        whole = net(x)
    passes = []
    module = FoodClassifier(net, speed=SpeedPlan(backbone_batch=3)).eval()
    frozen = module.frozen_backbone
    frozen.forward = lambda chunk: passes.append(len(chunk)) or backbone(chunk)
    torch.testing.assert_close(module(x), whole, atol=1e-6, rtol=1e-5)
    assert passes == [3, 3, 1]
    passes.clear()
    features, _ = extract_features(backbone, [(x, torch.zeros(7))], forward=frozen)
    assert passes == [3, 3, 1]
    torch.testing.assert_close(net.head(features), whole, atol=1e-6, rtol=1e-5)
    # The runner is no submodule: a compiled plan leaves the state_dict as it was.
    compiled = FoodClassifier(net, speed=SpeedPlan(compiled=True, compile_batch=4))
    assert isinstance(compiled.frozen_backbone.forward, CompiledForward)
    assert compiled.state_dict().keys() == FoodClassifier(net).state_dict().keys()


def test_train_sets_the_backbone_batch_and_compiles_for_its_passes(tiny_data, tmp_path, caplog):
    cfg = compose_train(tiny_overrides(tiny_data, compile="true", backbone_batch=4),
                        run_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        _, module, _ = build(cfg)
    assert cfg.data.batch_size == 16
    assert module.speed.backbone_batch == 4 and module.frozen_backbone.forward.batch_size == 4
    assert "backbone batch: 4 images per pass (backbone_batch=4)" in caplog.text
    caplog.clear()
    auto = compose_train(tiny_overrides(tiny_data), run_dir=tmp_path)
    assert auto.backbone_batch == "auto"
    with caplog.at_level(logging.INFO):
        speed = build(auto)[1].speed
    # resnet18 at 32 px: 64 x 16 x 16 floats per image at most, 16 fit in any cache
    assert speed.backbone_batch is None
    assert "backbone batch: the whole batch per pass (auto: its largest activation" in caplog.text


def test_a_compile_failure_warns_and_runs_eager(caplog):
    backbone = tiny_backbone()

    def broken_compiler(graph, example_inputs):
        raise RuntimeError("this compiler cannot compile anything")

    compiled = CompiledForward(backbone, backend=broken_compiler)
    x = torch.randn(4, 3, 16, 16)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = compiled(x)
        again = compiled(x)
    assert compiled.state == "eager"
    assert "compiling the backbone failed" in caplog.text
    assert "this compiler cannot compile anything" in caplog.text
    with torch.no_grad():
        assert torch.equal(out, backbone(x)) and torch.equal(again, out)


def test_compile_true_with_a_trainable_backbone_is_a_config_error():
    from foodnet.errors import ConfigError

    backbone = tiny_backbone()
    for param in backbone.parameters():
        param.requires_grad = True

    def plan(compile):
        return resolve_speed(backbone, arch="tiny", image_size=16, device=CPU, batch_size=4,
                             precision=FP32, channels_last=False, compile=compile, images=10)

    with pytest.raises(ConfigError, match="compile=true compiles the frozen backbone"):
        plan(True)
    assert not plan("auto").compiled
    with pytest.raises(ConfigError, match="compile='sometimes'"):
        plan("sometimes")


def test_bf16_and_fp32_training_of_the_head_reach_the_same_accuracy(tiny_data, tmp_path):
    """What choosing bf16 would change: the head trained on the same small set in each precision
    (cached features, 40 epochs) ends at the same accuracy, far above chance (0.05)."""
    from foodnet.train import train

    accuracy = {}
    for precision in (FP32, BF16):
        overrides = tiny_overrides(tiny_data, **{
            "trainer.precision": precision, "cache_features": "true",
            "cache_dir": tmp_path / "cache", "trainer.max_epochs": 40, "augment": "none",
            "model.optimizer.lr": 0.01, "data.batch_size": 80})
        metrics = train(compose_train([*overrides, "~logger"], run_dir=tmp_path / precision))
        checkpoint = torch.load(metrics["last_checkpoint"], weights_only=True)
        assert checkpoint["speed"]["precision"] == precision
        accuracy[precision] = metrics["val/acc_best"]
    dtypes = {torch.load(path, weights_only=True)["features"].dtype
              for path in (tmp_path / "cache").glob("train-*.pt")}
    assert dtypes == {torch.float32, torch.bfloat16}  # each trained on its own features
    assert accuracy[FP32] >= 0.3 and accuracy[BF16] >= 0.3, accuracy
    assert abs(accuracy[FP32] - accuracy[BF16]) <= 0.1, accuracy

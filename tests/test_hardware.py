"""Fast defaults: precision picked for the hardware, explicit settings win, channels_last."""

import pytest
import torch
from conftest import compose_train, tiny_overrides
from hydra.utils import instantiate

from foodnet import hardware
from foodnet.models.transfer import create_model
from foodnet.train import build
from foodnet.training.module import FoodClassifier

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f {extra}
bugs\t\t: spectre_v1
"""


@pytest.mark.parametrize(("extra", "fast"), [("avx512_bf16 amx_bf16 amx_tile", True),
                                             ("avx512_bf16", False), ("", False)])
def test_bf16_counts_as_fast_only_with_amx(tmp_path, extra, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    flags = hardware.cpu_flags(cpuinfo)
    assert "avx2" in flags and "spectre_v1" not in flags
    assert hardware.cpu_runs_bf16_fast(flags) is fast
    assert hardware.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(("cuda", "cuda_bf16", "cpu_bf16", "accelerator", "expected"), [
    (True, True, False, "auto", "bf16-mixed"),
    (True, False, True, "auto", "16-mixed"),
    (True, False, True, "gpu", "16-mixed"),
    (True, True, True, "cpu", "bf16-mixed"),   # cpu asked for: the CPU decides
    (True, True, False, "cpu", "32-true"),
    (False, False, True, "auto", "bf16-mixed"),
    (False, False, False, "auto", "32-true"),
])
def test_auto_precision(monkeypatch, cuda, cuda_bf16, cpu_bf16, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_runs_bf16_fast", lambda flags=None: cpu_bf16)
    assert hardware.auto_precision(accelerator) == expected
    assert hardware.resolve_precision("auto", accelerator) == expected
    assert hardware.resolve_precision("32-true", accelerator) == "32-true"


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_config_precision_auto_and_explicit_override(tiny_data, tmp_path, monkeypatch, cpu_bf16):
    monkeypatch.setattr(hardware, "cpu_runs_bf16_fast", lambda flags=None: cpu_bf16)
    cfg = compose_train(tiny_overrides(tiny_data), run_dir=tmp_path)
    assert cfg.trainer.precision == "auto" and cfg.channels_last is True
    trainer = instantiate(cfg.trainer)
    assert trainer.precision == ("bf16-mixed" if cpu_bf16 else "32-true")
    cfg = compose_train(tiny_overrides(tiny_data, **{"trainer.precision": "32-true"}),
                        run_dir=tmp_path)
    assert instantiate(cfg.trainer).precision == "32-true"


def test_channels_last_module_gives_the_same_logits(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data), run_dir=tmp_path)
    _, module, _ = build(cfg)
    conv = module.net.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = FoodClassifier(create_model("resnet18", num_classes=20, weights=None))
    plain.load_state_dict(module.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-4)


def test_auto_num_workers_uses_the_usable_cores(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert hardware.auto_num_workers() == 3
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)
    assert hardware.auto_num_workers() == 8

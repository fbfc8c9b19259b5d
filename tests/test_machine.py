"""Facts about this machine: worker count, CPU flags and cache, the device."""

from __future__ import annotations

import pytest
import torch

from foodnet import machine
from foodnet.errors import ConfigError


def test_auto_num_workers_uses_the_usable_cores_and_an_int_is_kept(monkeypatch):
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert machine.num_workers("auto") == 3
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(64)),
                        raising=False)
    assert machine.num_workers("auto") == 8
    assert machine.num_workers(12) == 12 and machine.num_workers("0") == 0


def test_cpu_flags_and_model_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2\n")
    assert machine.cpu_flags(cpuinfo) == {"fpu", "avx2"}
    assert machine.cpu_flags(tmp_path / "missing") == set()


def test_last_level_cache_reads_sysfs(tmp_path):
    for name, level, kind, size in [("index0", 1, "Data", "32K"), ("index1", 1, "Instruction",
                                    "32K"), ("index2", 2, "Unified", "512K"),
                                   ("index3", 3, "Unified", "32768K")]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert machine.last_level_cache(tmp_path) == 32 * 2**20
    assert machine.last_level_cache(tmp_path / "missing") is None


def test_resolve_device_takes_cuda_then_mps_then_cpu_and_refuses_a_missing_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert machine.resolve_device("auto") == torch.device("cpu")
    assert machine.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device cuda: none is available"):
        machine.resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert machine.resolve_device("auto") == torch.device("mps")
    assert machine.resolve_device("gpu") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert machine.resolve_device("auto") == torch.device("cuda")
    assert machine.resolve_device("cuda") == torch.device("cuda")

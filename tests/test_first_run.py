"""A new user's first hour: the README's first training run offline, and a folder named like the
package in the working directory."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import subprocess_env

from foodnet.data.demo import make_demo_dataset

# No network for certain, also on a machine that has it: every download goes to a closed port.
_OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "HF_HUB_OFFLINE": "1"}


def _train(*overrides, cwd):
    # TORCH_HOME is an empty folder (conftest): the default ResNet152's weights are not there.
    return subprocess.run([sys.executable, "-m", "foodnet.train", *overrides], cwd=cwd,
                          env={**subprocess_env(), **_OFFLINE}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # two subprocess runs that build ResNet152: ~40 s
def test_default_model_offline_names_the_offline_backbone_and_leaves_no_run_folder(tmp_path):
    make_demo_dataset(tmp_path / "data", per_class={"train": 1, "val": 1, "test": 1}, size=32)
    # The README's "Train on your photos" command, as written.
    result = _train("trainer.max_epochs=20", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: could not download ResNet152_Weights"), error
    assert "Ways out: model=efficientnet_lite0 " in error
    assert "Traceback" not in result.stderr
    assert "run dir: " in result.stdout  # the run had its folder ...
    assert not (tmp_path / "outputs").exists()  # ... and took it with it

    # The control: a folder that holds a run (a resumed run's checkpoints) stays.
    run_dir = tmp_path / "earlier"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    result = _train("ckpt_path=last", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "last.ckpt" in result.stderr.splitlines()[-1]
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"not a checkpoint"
    assert (run_dir / "train.log").is_file() and (run_dir / ".hydra").is_dir()

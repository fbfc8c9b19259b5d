"""A wheel built from this repository is a working foodnet outside the checkout.

What this proves: the wheel holds the package, its configs (conf/ as foodnet/conf) and the
`foodnet` console script; installed alone into a fresh venv it trains the demo from an empty
folder and writes its outputs there; a user's own config folder joins with `--config-dir`; the
wheel's declared dependencies are satisfied by the installed versions.

What it does not prove: that pip can download those dependencies. Installing torch afresh costs
minutes and gigabytes, so the fresh venv sees the dependencies of the venv running the tests
through a .pth file (their site-packages only: the checkout's editable foodnet is not on that
path), and the wheel is installed with --no-deps --no-index. The build itself runs offline too
(--no-build-isolation: the setuptools of this venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import checkpoint_scores

REPO = Path(__file__).resolve().parents[1]
# Not the user's checkout state: runs, data, caches and venvs stay out of the build copy.
TOP_LEVEL_SKIP = {".git", ".venv", "build", "dist", "outputs", "multirun", "data",
                  "lightning_logs", "notebooks", "benchmarks", "tests"}


def skip(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if (top and n in TOP_LEVEL_SKIP) or n == "__pycache__"
            or n.endswith((".egg-info", "_cache"))}


# A user's config folder: a tiny experiment on top of the demo (1 epoch, 2 batches, 32px).
TINY_EXPERIMENT = """\
# @package _global_
defaults:
  - demo
model:
  preprocessing:
    image_size: 32
data:
  batch_size: 8
  num_workers: 0
trainer:
  max_epochs: 1
  accelerator: cpu
  limit_train_batches: 2
  limit_val_batches: 2
  limit_test_batches: 2
  enable_progress_bar: false
  enable_model_summary: false
  precision: 32-true   # pinned like every tiny run: the same numbers on every CPU
channels_last: false
compile: false
"""

CHECK_REQUIREMENTS = """
import sys
from importlib.metadata import distribution, version
from packaging.requirements import Requirement
bad = []
for line in distribution("foodnet").requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra
    if not req.specifier.contains(version(req.name), prereleases=True):
        bad.append(f"{req}: installed {version(req.name)}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def run(cmd, cwd, env, timeout=600):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=skip)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist",
         source], cwd=root, env=env)
    (wheel,) = (root / "dist").glob("foodnet-*.whl")

    fresh = root / "venv"
    venv.create(fresh, with_pip=False)
    (site,) = fresh.glob("lib/python*/site-packages")
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_deps.pth").write_text("\n".join(deps) + "\n")
    run([*pip, "--python", fresh / "bin" / "python", "install", "--no-deps", "--no-index",
         wheel], cwd=root, env=env)
    return fresh / "bin"


def test_the_wheel_holds_the_configs_and_the_command(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([installed / "python", "-c", "import foodnet, foodnet.config as c; "
                 "print(foodnet.__file__); print(c.CONFIG_DIR)"], cwd=tmp_path, env=env)
    package_file, config_dir = where.stdout.split()
    assert Path(package_file).is_relative_to(installed.parent), package_file
    assert config_dir == str(Path(package_file).parent / "conf")
    assert (Path(config_dir) / "train.yaml").is_file()
    assert (Path(config_dir) / "experiment" / "demo.yaml").is_file()
    static = Path(package_file).parent / "inference" / "static"  # the page of foodnet serve
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "style.css"}
    run([installed / "python", "-c", CHECK_REQUIREMENTS], cwd=tmp_path, env=env)
    help_text = run([installed / "foodnet", "--help"], cwd=tmp_path, env=env).stdout
    for command in ("train", "evaluate", "predict", "export", "data", "sweep", "serve"):
        assert f"\n  {command} " in help_text
    assert run([installed / "foodnet", "--version"], cwd=tmp_path, env=env).stdout.strip() \
        == "foodnet 0.1.0"


@pytest.mark.slow
def test_the_demo_trains_from_an_empty_folder_with_a_user_config_dir(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")  # offline: nothing to download
    work = tmp_path / "empty"
    work.mkdir()
    run([installed / "python", "-m", "foodnet.data", "demo", "--out", "d"], cwd=work, env=env)
    (work / "myconf" / "experiment").mkdir(parents=True)
    (work / "myconf" / "experiment" / "tiny.yaml").write_text(TINY_EXPERIMENT)
    manifests = [f"data.{split}_manifest=d/{split}.txt" for split in ("train", "val", "test")]
    run([installed / "foodnet", "train", "--config-dir", "myconf", "experiment=tiny",
         *manifests, "data.classes=d/classes.txt", "hydra.run.dir=outputs/tiny"],
        cwd=work, env=env)
    metrics = json.loads((work / "outputs" / "tiny" / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    # limit_test_batches 2 at batch_size 8: the test set's first 16 images, counted by hand.
    assert metrics["test/acc"] == pytest.approx(checkpoint_scores(
        work / metrics["best_checkpoint"], work / "d" / "test.txt", first=16)["acc"], abs=1e-6)
    assert list((work / "outputs" / "tiny" / "checkpoints").glob("*.ckpt"))
    assert (work / "outputs" / "tiny" / "train.log").is_file()
    # The control: without --config-dir the user's experiment does not exist.
    result = subprocess.run([installed / "foodnet", "train", "experiment=tiny"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "tiny" in result.stderr

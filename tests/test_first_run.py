"""A new user's first hour: the README's first training run offline, and a folder named like the
package in the working directory."""

from __future__ import annotations

import json
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


def test_a_failed_run_in_the_working_directory_itself_keeps_that_folder(tmp_path):
    """hydra.run.dir=. makes the user's own folder the run folder: a mistake must not remove it,
    even when it held nothing before the run."""
    work = tmp_path / "work"
    work.mkdir()
    result = _train("model=efficientnet_lite0", "hydra.run.dir=.", cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data/train.txt" in result.stderr.splitlines()[-1]  # no manifests there: a user error
    assert work.is_dir() and (work / "train.log").is_file()


# What an editable install does (setuptools' finder, asked only after every sys.path folder):
# foodnet from this checkout's src/, in this process and in every process it starts.
_EDITABLE_FINDER = '''
import sys
from importlib.machinery import PathFinder


class EditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return PathFinder.find_spec(name, [{src!r}]) if name == "foodnet" else None


sys.meta_path.insert(sys.meta_path.index(PathFinder) + 1, EditableFinder)
'''


@pytest.fixture
def clone_named_foodnet(tmp_path):
    """(the folder that holds a clone named foodnet/ with its foodnet/data/ demo data, the
    `foodnet` console script, its environment): where `python -m foodnet...` finds the clone."""
    from helpers import REPO

    site, bin_dir, work = tmp_path / "site", tmp_path / "bin", tmp_path / "work"
    for folder in (site, bin_dir, work):
        folder.mkdir()
    (site / "sitecustomize.py").write_text(_EDITABLE_FINDER.format(src=str(REPO / "src")))
    (bin_dir / "foodnet").write_text("import sys\nfrom foodnet.cli import main\n"
                                     "sys.exit(main())\n")  # what pip writes, run as a script
    make_demo_dataset(work / "foodnet" / "data", per_class={"train": 2, "val": 1, "test": 1},
                      size=32)
    env = {**subprocess_env(), "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return work, [sys.executable, str(bin_dir / "foodnet")], env


def test_a_foodnet_folder_in_the_working_directory_traps_python_m(clone_named_foodnet):
    work, foodnet, env = clone_named_foodnet
    check = ["data", "check", "--quick", "foodnet/data/train.txt"]
    trapped = subprocess.run([sys.executable, "-m", "foodnet.data", *check[1:]], cwd=work,
                             env=env, capture_output=True, text=True, timeout=120)
    assert "No module named foodnet.data.__main__" in trapped.stderr  # the trap is real
    result = subprocess.run([*foodnet, *check], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 error(s), 0 warning(s) in 1 manifest(s)" in result.stdout


@pytest.mark.slow  # a two-process DDP run: ~20 s
def test_ddp_from_a_folder_that_holds_a_foodnet_folder(clone_named_foodnet):
    """DDP's other rank is started as `python -m foodnet.train` in the same folder; it must
    import the installed foodnet, not the namespace package ./foodnet/ (it used to fail with
    "No module named 'foodnet.data.preprocessing'", and the run was killed)."""
    from helpers import tiny_overrides

    work, foodnet, env = clone_named_foodnet
    data = {split: work / "foodnet" / "data" / f"{split}.txt"
            for split in ("train", "val", "classes")}
    result = subprocess.run([*foodnet, "train", "trainer=ddp",
                             *tiny_overrides(data, **{"data.batch_size": 8}),
                             "hydra.run.dir=run"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No module named" not in result.stderr
    assert json.loads((work / "run" / "metrics.json").read_text())["status"] == "completed"

"""The README's quick start runs as written: its `foodnet ...` commands, read from README.md,
with tiny sizes appended to `train` and the placeholders (`<time>`, your photos) filled in."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, checkpoint_scores, eval_overrides, subprocess_env, tiny_overrides

FOODNET = Path(sys.executable).with_name("foodnet")
# The README's model (experiment=demo: the pretrained EfficientNet-Lite0), a tiny run of it.
TINY = tiny_overrides(**{"model.arch": None, "model.weights": None,
                         "+trainer.limit_train_batches": 2, "+trainer.limit_val_batches": 2,
                         "hydra.run.dir": "outputs/train/run"})


def block_after(heading: str) -> list[list[str]]:
    """The `foodnet ...` commands of the first bash block after a README line."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(heading):], re.S).group(1)
    return [shlex.split(line.split("#")[0]) for line in block.splitlines()
            if line.startswith("foodnet ")]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(FOODNET), *argv[1:]], cwd=cwd, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_quick_start_and_then(tmp_path):
    quick_start = block_after("**Without make**")
    assert [c[:2] for c in quick_start] == [["foodnet", "data"], ["foodnet", "train"]]
    run(quick_start[0], tmp_path)
    assert (tmp_path / "data" / "demo" / "train.txt").is_file()
    run(quick_start[1] + TINY, tmp_path)
    metrics = json.loads((tmp_path / "outputs/train/run/metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] == pytest.approx(checkpoint_scores(
        tmp_path / metrics["best_checkpoint"], tmp_path / "data/demo/test.txt")["acc"], abs=1e-6)

    then = block_after("## Then")
    assert [c[1] for c in then] == ["evaluate", "predict", "export"]
    fill = {"outputs/train/<time>/": "outputs/train/run/", "data/test.txt": "data/demo/test.txt",
            "photos/": "data/demo/images/test/", "dinner.jpg": "data/demo/images/val/"}
    for command in then:
        argv = []
        for arg in command:
            for placeholder, value in fill.items():
                arg = arg.replace(placeholder, value)
            argv.append(arg)
        if argv[1] == "evaluate":
            argv += eval_overrides(**{"hydra.run.dir": "outputs/eval/run"})
        result = run(argv, tmp_path)
        if argv[1] == "predict":
            assert len(json.loads(result.stdout)) == 600  # 300 test + 300 val images
    report = json.loads((tmp_path / "outputs/eval/run/report.json").read_text())
    assert report["counts"]["images"] == 300
    assert (tmp_path / "food.onnx").is_file() and (tmp_path / "food.onnx.json").is_file()

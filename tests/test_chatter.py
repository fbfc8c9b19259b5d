"""verbose=false (the default) keeps library chatter off the console in real subprocess runs:
evaluate, and a run that compiles its backbone; verbose=true shows Lightning's lines, once each."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import eval_overrides, subprocess_env, tiny_overrides

# What Lightning and torch print unasked: device lines, tips, torch's CUDA_HOME guess on a
# machine without a GPU (printed when torch.compile loads its C++ extension helpers).
CHATTER = ("GPU available", "TPU available", "💡 Tip", "litlogger", "litmodels",
           "No CUDA runtime is found")


def run(args: list[str], cwd) -> str:
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_evaluate_is_quiet_unless_verbose(tiny_data, tiny_checkpoint, tmp_path):
    args = ["-m", "foodnet.evaluate", *eval_overrides(ckpt_path=tiny_checkpoint,
                                                      **{"data.test_manifest": tiny_data["test"]})]
    quiet = run([*args, f"hydra.run.dir={tmp_path / 'quiet'}"], tmp_path)
    assert "test/acc " in quiet  # it ran
    assert [line for line in CHATTER if line in quiet] == []
    # The control: the same run with verbose=true shows Lightning's lines, each once (not also
    # through Lightning's own console handler, as "INFO: GPU available ...").
    loud = run([*args, "verbose=true", f"hydra.run.dir={tmp_path / 'loud'}"], tmp_path)
    assert loud.count("GPU available: False") == 1, loud
    assert loud.count("TPU available") == 1
    assert "INFO: " not in loud
    # The eval log holds what the console showed.
    assert "GPU available: False" in (tmp_path / "loud" / "evaluate.log").read_text()


@pytest.mark.slow
def test_a_compiled_run_is_quiet(tiny_data, tmp_path):
    args = ["-m", "foodnet.train", *tiny_overrides(tiny_data, compile="true"),
            "finetune=freeze", f"hydra.run.dir={tmp_path / 'run'}"]
    output = run(args, tmp_path)
    assert "compile: compiling the resnet18 backbone" in output  # it did compile
    assert [line for line in CHATTER if line in output] == []

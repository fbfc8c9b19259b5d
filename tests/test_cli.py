"""`foodnet COMMAND ...` is `python -m foodnet.COMMAND ...`; `foodnet --help` imports nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import subprocess_env

from foodnet import cli

FOODNET = Path(sys.executable).with_name("foodnet")  # the console script of this venv


def run(*cmd, cwd=None):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_one_line_and_imports_nothing():
    probe = ("import sys, foodnet.cli as c; c.main(['--help']); "
             "print(sorted(m for m in ('torch', 'hydra', 'lightning', 'foodnet.train') "
             "if m in sys.modules))")
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("train", "evaluate", "predict", "export", "data", "sweep", "serve"):
        assert sum(line.startswith(f"  {name} ") for line in lines) == 1, result.stdout
    assert lines[-1] == "[]"  # the control: nothing heavy was imported to answer --help
    console = run(FOODNET, "--help")
    assert console.returncode == 0 and "  train " in console.stdout


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    result = run(FOODNET, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"foodnet {version('foodnet')}"


def test_train_is_python_m_foodnet_train(tmp_path):
    overrides = ["--cfg", "job", "experiment=demo", "trainer.max_epochs=3", "seed=7"]
    console = run(FOODNET, "train", *overrides, cwd=tmp_path)
    module = run(sys.executable, "-m", "foodnet.train", *overrides, cwd=tmp_path)
    assert console.returncode == module.returncode == 0, console.stderr
    assert console.stdout == module.stdout
    assert "max_epochs: 3" in console.stdout and "seed: 7" in console.stdout
    # Exit codes pass through: a user's mistake is 2 (tests/test_predict.py: the same for -m).
    console = run(FOODNET, "predict", tmp_path / "missing.ckpt", tmp_path)
    assert console.returncode == 2
    assert "missing.ckpt" in console.stderr


def test_unknown_and_missing_commands_say_so(monkeypatch, capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    monkeypatch.setitem(cli.COMMANDS, "serve", ("foodnet.not_built_yet", "serve a model"))
    assert cli.main(["serve", "--port", "8000"]) == 2
    assert "the 'serve' command is not part of this foodnet" in capsys.readouterr().err
    assert cli.main([]) == 2 and "usage: foodnet COMMAND" in capsys.readouterr().out


def test_train_help_lists_groups_and_common_overrides_not_the_config(tmp_path):
    result = run(FOODNET, "train", "model=efficientnet_lite0", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: foodnet train ")
    assert "model: efficientnet_lite0, resnet152\n" in text  # a group with its options
    assert "finetune: freeze, full, gradual\n" in text
    # A common override with its line and the value this command would use.
    assert "trainer.max_epochs=N         epochs (now 20)" in text
    assert "(now efficientnet_lite0)" in text  # the override given before --help counts
    assert "--cfg job" in text
    assert "_target_" not in text and len(text.splitlines()) < 50  # no 146-line config dump
    evaluate = run(FOODNET, "evaluate", "--help", cwd=tmp_path)
    assert evaluate.stdout.startswith("usage: foodnet evaluate ckpt_path=CKPT")


def test_data_help_names_the_foodnet_command_and_the_split_defaults(tmp_path):
    data = run(FOODNET, "data", "--help", cwd=tmp_path)
    assert data.returncode == 0 and data.stdout.startswith("usage: foodnet data ")
    folder = run(FOODNET, "data", "from-folder", "--help", cwd=tmp_path)
    assert folder.stdout.startswith("usage: foodnet data from-folder ")
    text = " ".join(folder.stdout.split())
    assert "--val-fraction VAL_FRACTION share of each class for val.txt (default: 0.1)" in text
    assert "--test-fraction TEST_FRACTION share of each class for test.txt (default: 0.1)" in text


def test_help_read_by_a_reader_that_went_away_ends_quietly(tmp_path):
    """`foodnet train --help | head -1`, with the reader gone before the help is written (so
    the write fails every time, not only when the reader wins the race)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([str(FOODNET), "train", "--help"], cwd=tmp_path,
                                env=subprocess_env(), stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=300)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr

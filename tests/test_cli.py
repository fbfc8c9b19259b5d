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

"""Issue 15, a hostile trial: each numbered failure reproduced as a test (test names say which)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    REFERENCE_EPOCHS,
    assert_same_weights,
    assert_weights_differ,
    compose_train,
    subprocess_env,
    tiny_overrides,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf

from foodnet.data.preprocessing import Preprocessing
from foodnet.errors import ConfigError, InputError, ManifestError, WeightsError
from foodnet.schema import EvalSchema, TrainSchema, check_config
from foodnet.train import train


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def an_image(data) -> Path:
    first = data["train"].read_text().split()[0]
    return data["train"].parent / first


def absolute_lines(manifest: Path) -> list[str]:
    """The manifest's lines with absolute image paths, to write a variant elsewhere."""
    return [f"{manifest.parent / line.rsplit(maxsplit=1)[0]} {line.rsplit(maxsplit=1)[1]}"
            for line in manifest.read_text().splitlines() if line.strip()]


# 1 and 11: signals to the whole process group, loader workers included.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT],
                         ids=["SIGTERM", "SIGUSR1", "SIGINT"])
def test_01_11_signal_to_the_process_group_saves_and_resumes_exactly(
        tiny_data, tmp_path, reference_run, signum):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS,
                                             "data.num_workers": 2})
    process = subprocess.Popen(
        [sys.executable, "-m", "foodnet.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)  # its own group: killpg reaches workers, not pytest
    for line in process.stdout:
        if line.startswith(f"epoch 1/{REFERENCE_EPOCHS}"):
            os.killpg(process.pid, signum)  # what timeout, SLURM and a terminal's Ctrl-C do
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"{signal.Signals(signum).name}: saved {last}" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr
    assert "resume: foodnet train" in stderr
    assert f"hydra.run.dir={run_dir} ckpt_path=last" in stderr
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] >= 5  # written after the signal, in epoch 2 or at its end

    interrupted = shutil.copy(last, tmp_path / "interrupted.ckpt")
    resumed = train(compose_train(
        tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS,
                                     "ckpt_path": "last"}), run_dir=run_dir))
    assert resumed["epochs"] == REFERENCE_EPOCHS
    assert_same_weights(last, reference_run[1])
    assert_weights_differ(interrupted, last)  # the control: the resumed epochs moved them


# 2: every split checked in setup, before the first epoch, all problems at once.
def test_02_bad_val_and_test_manifests_stop_the_run_before_training(tiny_data, tmp_path):
    lines = absolute_lines(tiny_data["test"])
    bad_test = tmp_path / "test.txt"
    bad_test.write_text("\n".join([*lines[:3], f"{lines[3].split()[0]} 25",
                                   "images/missing.png 1"]) + "\n")
    bad_val = tmp_path / "val.txt"
    bad_val.write_text("\n".join(absolute_lines(tiny_data["val"])) + "\nimages/gone.png 2\n")
    run_dir = tmp_path / "run"
    cfg = compose_train(tiny_overrides(tiny_data, **{"data.test_manifest": bad_test,
                                                     "data.val_manifest": bad_val}),
                        run_dir=run_dir)
    with pytest.raises(ManifestError) as failed:
        train(cfg)
    message = str(failed.value)
    assert "3 problems" in message
    assert f"{bad_test}:4: label 25 is out of range for 20 classes" in message
    assert f"{bad_test}:5: file not found" in message and f"{bad_val}:" in message
    assert "--num-classes 20" in message  # the hint's command finds the same problems
    assert not (run_dir / "checkpoints").exists()  # not one epoch trained


# 3: a frozen random backbone is said once, with the fix; it still runs.
def test_03_frozen_random_backbone_warns_once_and_still_runs(tiny_data, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    metrics = train(compose_train(tiny_overrides(tiny_data, **{"+trainer.limit_train_batches": 1}),
                                  run_dir=tmp_path))
    assert metrics["status"] == "completed"
    warned = [r.getMessage() for r in caplog.records if "backbone stays RANDOM" in r.getMessage()]
    assert len(warned) == 1 and "finetune=full" in warned[0] and "model.weights=" in warned[0]

    from foodnet.train import warn_random_frozen_backbone
    caplog.clear()
    for override in ({"finetune": "full"}, {"model.weights": "DEFAULT"}):
        cfg = check_config(compose_train(tiny_overrides(tiny_data, **override), tmp_path),
                           TrainSchema)
        warn_random_frozen_backbone(cfg.model.weights, instantiate(cfg.finetune))
    assert not caplog.records  # the control: trained backbone or real weights, no warning


def test_03_offline_weights_message_names_both_ways():
    from torchvision.models import ResNet18_Weights

    from foodnet.models.sources.torchvision import download_help

    text = download_help(ResNet18_Weights.DEFAULT)
    assert "model.weights=null finetune=full" in text and "/path/to/weights.pth" in text


# 4: typed and range-checked where the config is defined; unknown keys refused.
@pytest.mark.parametrize(("override", "message"), [
    ({"trainer.max_epochs": 0}, "trainer.max_epochs=0: expected a positive integer"),
    ({"trainer.max_epochs": -1}, "trainer.max_epochs=-1: expected a positive integer"),
    ({"model.preprocessing.image_size": 32.5},
     "model.preprocessing.image_size=32.5: expected an integer"),
    ({"model.preprocessing.image_size": 4},
     "model.preprocessing.image_size=4: expected an integer >= 8"),
    ({"model.optimizer.lr": "fast"}, "model.optimizer.lr='fast': expected a positive number"),
    ({"data.batch_size": "abc"}, "data.batch_size='abc': expected an integer"),
    ({"seed": "abc"}, "seed='abc': expected an integer"),
    ({"+model.lr": 0.5}, "model.lr: no such setting"),
    ({"+data.batchsize": 8}, "data.batchsize: no such setting"),
    ({"data.num_workers": -1}, "data.num_workers=-1: expected auto or an integer >= 0"),
    ({"backbone_batch": 0}, "backbone_batch=0: expected auto or a positive integer"),
    ({"channels_last": "maybe"}, "channels_last='maybe': expected auto, true or false"),
    ({"compile": "maybe"}, "compile='maybe': expected auto, true or false"),
])
def test_04_bad_values_fail_naming_the_key(tiny_data, tmp_path, override, message):
    cfg = compose_train(tiny_overrides(tiny_data, **override), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="^" + message.replace("+", r"\+").replace("(", r"\(")):
        train(cfg)
    assert not any(tmp_path.iterdir())


def test_04_a_trainer_typo_is_named(tiny_data, tmp_path):
    cfg = compose_train(tiny_overrides(tiny_data, **{"+trainer.max_epoch": 3}), run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.max_epoch: no such setting"):
        train(cfg)


@pytest.mark.parametrize("size", [1, 0, -5, 32.5])
def test_04_evaluate_checks_image_size(size):
    from helpers import CONFIG_DIR
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"model.preprocessing.image_size={size}",
                                         "paths.output_dir=x"])
    # As evaluate does: the schema types the value, the checkpoint's record checks its range.
    record = Preprocessing(image_size=32, crop_mode="squash", crop_pct=1.0, mean=(0.5,) * 3,
                           std=(0.5,) * 3, interpolation="bilinear")
    with pytest.raises(ConfigError, match=r"^model.preprocessing.image_size="):
        typed = check_config(cfg, EvalSchema)
        record.override(**OmegaConf.to_container(typed.model.preprocessing))
    control = cfg.copy()
    control.model.preprocessing.image_size = None  # null: the checkpoint's size
    typed = check_config(control, EvalSchema)
    assert typed.model.preprocessing.image_size is None
    assert record.override(**OmegaConf.to_container(typed.model.preprocessing)).image_size == 32


def test_04_cli_type_error_is_one_line_exit_2(tmp_path):
    result = run_cli(["-m", "foodnet.train", "seed=abc"], tmp_path)
    assert result.returncode == 2
    assert "error: seed='abc': expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


# 5 and 14: a run folder holding a run is refused; overwrite=true clears it; console and log
# file show foodnet's lines, library chatter off.
def test_05_14_run_folder_is_not_overwritten_and_the_log_file_has_the_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (run_dir / "metrics.json").write_text('{"status": "completed"}\n')
    args = ["-m", "foodnet.train", *tiny_overrides(tiny_data), f"hydra.run.dir={run_dir}"]
    refused = run_cli(args, tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{run_dir} already holds a run" in refused.stderr
    assert "ckpt_path=last" in refused.stderr and "overwrite=true" in refused.stderr
    assert (run_dir / "metrics.json").read_text() == '{"status": "completed"}\n'
    assert not (run_dir / ".hydra").exists()

    done = run_cli([*args, "overwrite=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    names = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert "last.ckpt" in names and not any("-v1" in name for name in names), names
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    console = done.stdout + done.stderr
    for line in ("run dir: ", "epoch 1/1  train/loss", '"status": "completed"'):
        assert line in console
        assert line in (run_dir / "train.log").read_text()
    for chatter in ("GPU available", "Tip", "Trainable params", "Deprecat"):
        assert chatter not in console, chatter


def test_14_library_chatter_only_with_verbose(caplog):
    from foodnet.logs import library_chatter

    caplog.set_level(logging.INFO)
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with library_chatter(verbose=False):
        lightning_log.info("GPU available: False")
    with library_chatter(verbose=True):
        lightning_log.info("HPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["HPU available: False"]


# 6: outputs and inputs checked before the work; hidden files skipped.
def test_06_predict_output_and_inputs_checked_first(tiny_checkpoint, tiny_data, tmp_path, capsys):
    from foodnet.predict import main as predict_main

    image = an_image(tiny_data)
    assert predict_main([str(tiny_checkpoint), str(image), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert predict_main([str(tiny_checkpoint), str(image), "--out",
                         str(blocker / "out.json")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    missing = tmp_path / "nope.jpg"
    assert predict_main([str(tiny_checkpoint), str(image), str(missing)]) == 2
    assert f"error: {missing}: no such file or folder" in capsys.readouterr().err
    out = tmp_path / "ok.json"
    assert predict_main([str(tiny_checkpoint), str(image), "--out", str(out)]) == 0  # control
    assert json.loads(out.read_text())[0]["path"] == str(image)


def test_06_hidden_files_and_folders_are_skipped(tiny_data, tmp_path):
    from foodnet.inference.inputs import collect_images

    image = an_image(tiny_data)
    (tmp_path / ".thumbnails").mkdir()
    for target in (tmp_path / "a.png", tmp_path / "._a.png", tmp_path / ".thumbnails" / "b.png"):
        target.write_bytes(image.read_bytes())
    assert collect_images([tmp_path]) == [tmp_path / "a.png"]


def test_06_export_output_checked_before_loading(tiny_checkpoint, tmp_path, monkeypatch,
                                                 capsys):
    import foodnet.models.checkpoint as checkpoint
    from foodnet.export import EXPORT_FORMATS
    from foodnet.export import main as export_main
    from foodnet.inference.export_format import EXPORT_FORMATS as FORMATS

    assert EXPORT_FORMATS == FORMATS

    class Loaded(Exception):
        pass

    # A spy in place of every way to read a checkpoint: it records the read and stops there.
    loaded = []

    def spy(path, *args, **kwargs):
        loaded.append(Path(path))
        raise Loaded

    monkeypatch.setattr(checkpoint, "load_model", spy)
    monkeypatch.setattr(checkpoint, "read_checkpoint", spy)
    assert export_main([str(tiny_checkpoint), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder" in capsys.readouterr().err
    assert loaded == [] and not any(tmp_path.iterdir())
    # The control: with a writable --out, export goes on to read the checkpoint.
    with pytest.raises(Loaded):
        export_main([str(tiny_checkpoint), "--out", str(tmp_path / "model.onnx")])
    assert loaded == [tiny_checkpoint]


# 7: evaluate reports every bad line, with hints that work.
def test_07_evaluate_reports_every_bad_line(tiny_checkpoint, tiny_data, tmp_path):
    from helpers import CONFIG_DIR
    from hydra import compose, initialize_config_dir

    from foodnet.evaluate import evaluate
    lines = absolute_lines(tiny_data["test"])
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*lines[:5]] + [f"{line.split()[0]} 30" for line in lines[5:15]])
                   + "\n")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={tiny_checkpoint}",
                                         f"data.test_manifest={bad}", "data.num_workers=0",
                                         f"paths.output_dir={tmp_path / 'run'}",
                                         "trainer.accelerator=cpu"])
    with pytest.raises(ManifestError) as failed:
        evaluate(cfg)
    message = str(failed.value)
    assert message.startswith("10 problems")
    assert all(f"{bad}:{n}: label 30" in message for n in range(6, 16))
    assert "model.num_classes" not in message  # evaluate has no such key
    assert "--num-classes 20" in message


# 8: a foodnet checkpoint as model.weights: its backbone is loaded.
def test_08_weights_from_a_foodnet_checkpoint(tiny_checkpoint):
    from foodnet.models.transfer import create_model

    net = create_model("resnet18", num_classes=5, weights=str(tiny_checkpoint))
    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, state[f"net.backbone.{key}"]), key
    with pytest.raises(WeightsError) as foreign:
        create_model("resnet34", num_classes=5, weights=str(tiny_checkpoint))
    assert len(str(foreign.value)) < 600 and "does not fit resnet34" in str(foreign.value)


# 9: from-folder, one class and a class name with a newline.
def test_09_from_folder_one_class_warns_and_newline_name_fails(tiny_data, tmp_path, caplog):
    from foodnet.data.folder import from_folder

    image = an_image(tiny_data)
    (tmp_path / "root" / "soup").mkdir(parents=True)
    for n in range(3):
        (tmp_path / "root" / "soup" / f"{n}.png").write_bytes(image.read_bytes())
    with caplog.at_level(logging.WARNING):
        from_folder(tmp_path / "root", tmp_path / "out", 0.0, 0.0)
    assert any("only one class" in r.getMessage() for r in caplog.records)
    (tmp_path / "root" / "bad\nname").mkdir()
    (tmp_path / "root" / "bad\nname" / "0.png").write_bytes(image.read_bytes())
    with pytest.raises(InputError, match="line break"):
        from_folder(tmp_path / "root", tmp_path / "out2", 0.0, 0.0)
    assert not (tmp_path / "out2" / "classes.txt").exists()


# 10: finetune=full with a last batch of one sample.
def test_10_full_finetune_with_a_last_batch_of_one(tiny_data, tmp_path):
    # 80 train images at batch size 79: batches of 79 and 1; BatchNorm cannot train on one.
    metrics = train(compose_train(tiny_overrides(tiny_data, **{
        "finetune": "full", "data.batch_size": 79, "augment": "none"}), run_dir=tmp_path))
    assert metrics["status"] == "completed"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1  # the lone last sample was left out of the epoch


# 12: python -m foodnet.sweep.
def test_12_sweep_cli_usage_and_refuses_a_run_folder(tmp_path, capsys):
    from foodnet.sweep import main as sweep_main

    with pytest.raises(SystemExit) as helped:
        sweep_main(["--help"])
    assert helped.value.code == 0
    assert sweep_main([str(tmp_path / "missing")]) == 2
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (run / "metrics.json").write_text('{"status": "completed", "val/acc_best": 0.5}\n')
    assert sweep_main([str(run)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    assert not (run / "summary.md").exists()
    sweep = tmp_path / "sweep"  # the control: a real sweep layout is summarised
    (sweep / "0").mkdir(parents=True)
    run.rename(sweep / "0" / "job")
    assert sweep_main([str(sweep)]) == 0
    assert (sweep / "summary.md").is_file()


# 13: --help and argument errors answer without importing torch, Lightning or torchvision.
PROBE = """
import runpy, sys, time
start = time.perf_counter()
module, *args = sys.argv[1:]
sys.argv = [module, *args]
try:
    runpy.run_module(module, run_name="__main__")
except SystemExit as done:
    code = 0 if done.code is None else done.code
heavy = [m for m in ("torch", "lightning", "torchvision") if m in sys.modules]
print("PROBE", code, time.perf_counter() - start, ",".join(heavy))
"""


@pytest.mark.parametrize(("args", "expected_code", "said"), [
    (["foodnet.train", "--help"], "0", "usage: foodnet train"),
    (["foodnet.train", "seed=abc"], "2", "error: seed='abc': expected an integer"),
    (["foodnet.evaluate", "--help"], "0", "usage: foodnet evaluate"),
    (["foodnet.predict", "--help"], "0", "usage: foodnet predict"),
    (["foodnet.predict", "model.ckpt"], "2", "the following arguments are required: INPUT"),
    (["foodnet.export", "--help"], "0", "usage: foodnet export"),
    (["foodnet.data", "--help"], "0", "usage: foodnet data"),
    (["foodnet.data", "check"], "2", "the following arguments are required: MANIFEST"),
    (["foodnet.sweep", "--help"], "0", "usage: foodnet sweep"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_13_help_and_argument_errors_import_nothing_heavy(tmp_path, args, expected_code, said):
    result = run_cli(["-c", PROBE, *args], tmp_path, timeout=60)
    code, seconds, heavy = result.stdout.split("PROBE ")[-1].split(" ")
    assert heavy.strip() == "", f"{' '.join(args)} imported {heavy.strip()}"
    assert code == expected_code, result.stderr[-2000:]
    assert said in result.stdout + result.stderr


def test_13_train_help_is_much_faster_than_importing_lightning(tmp_path):
    def seconds(args):
        start = time.perf_counter()
        result = run_cli(args, tmp_path, timeout=120)
        assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
        return time.perf_counter() - start

    heavy = seconds(["-c", "import lightning, torchvision"])
    helped = min(seconds(["-m", "foodnet.train", "--help"]),
                 seconds(["-m", "foodnet.predict", "--help"]))
    # Measured side by side: without the lazy imports --help paid for all of `heavy` and more.
    assert helped < 0.7 * heavy, (helped, heavy)

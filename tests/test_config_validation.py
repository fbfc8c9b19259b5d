"""Config mistakes stop the run before training, with the bad value and the fix."""

import subprocess
import sys

import pytest
import torch
from helpers import compose_train, subprocess_env, tiny_overrides

from foodnet.errors import ManifestError, WeightsError
from foodnet.train import train


@pytest.mark.parametrize(("override", "error", "message"), [
    ({"model.arch": "resnet1000"}, ValueError,
     r"unknown model.arch='resnet1000'; torchvision classification models are: .*resnet18"),
    ({"model.weights": "ResNet50_Weights.IMAGENET1K_V1"}, ValueError,
     r"model.weights=ResNet50_Weights.IMAGENET1K_V1 are not weights of model.arch=resnet18; "
     r"use one of ResNet18_Weights.IMAGENET1K_V1, ResNet18_Weights.DEFAULT"),
    ({"model.weights": "IMAGENET1K_V2"}, WeightsError,
     r"model.weights=IMAGENET1K_V2 is not a weights name of resnet18"),
    ({"model.num_classes": 10}, ManifestError,
     r"classes.txt lists 20 classes but model.num_classes=10"),
    ({"model.num_classes": 10, "data.classes": "null"}, ManifestError,
     r"train.txt:\d+: label 19 makes 20 classes but model.num_classes=10"),
    ({"model.optimizer.lr": 0}, ValueError, r"model.optimizer.lr=0: expected a positive number"),
    ({"model.optimizer.lr": -0.001}, ValueError,
     r"model.optimizer.lr=-0.001: expected a positive number"),
    ({"data.batch_size": 0}, ValueError, r"data.batch_size=0: expected a positive integer"),
])
def test_bad_settings_fail_before_training(tiny_data, tmp_path, override, error, message):
    with pytest.raises(error, match=message):
        train(compose_train(tiny_overrides(tiny_data, **override), run_dir=tmp_path))
    assert not any(tmp_path.iterdir()), "nothing may be written before the settings are checked"


def test_weights_file_that_does_not_fit_the_arch(tiny_data, tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, weights)
    cfg = compose_train(tiny_overrides(tiny_data, **{"model.weights": weights}),
                        run_dir=tmp_path / "run")
    with pytest.raises(WeightsError, match=rf"{weights}: weights do not fit resnet18"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_reports_a_resume_mistake_as_an_error_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", *tiny_overrides(tiny_data), "ckpt_path=last",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert (f"error: {run_dir}/checkpoints/last.ckpt: ckpt_path=last found no checkpoint"
            in result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "message"), [
    (["foodnet.train", "trainer.max_epoch=3"],
     "error: trainer.max_epoch: no such setting; did you mean trainer.max_epochs?"),
    (["foodnet.train", "max_epochs=3"],
     "error: max_epochs: no such setting; did you mean trainer.max_epochs?"),
    (["foodnet.train", "+trainer.max_epoch=3"],  # what Hydra's own message advised
     "error: trainer.max_epoch: no such setting of Lightning's Trainer; did you mean "
     "trainer.max_epochs?"),
    (["foodnet.train", "+model.lr=0.5"],
     "error: model.lr: no such setting, nothing would read it; did you mean model.optimizer.lr?"),
    (["foodnet.train", "model=resnet999"],
     "error: model=resnet999: no such choice of the model group (the choices: "
     "efficientnet_lite0, resnet152); did you mean model=resnet152?"),
    (["foodnet.train", "-m", "trainer.max_epoch=1,2"],  # a sweep
     "error: trainer.max_epoch: no such setting; did you mean trainer.max_epochs?"),
    (["foodnet.evaluate", "data.bach_size=8"],
     "error: data.bach_size: no such setting; did you mean data.batch_size?"),
    (["foodnet.evaluate", "trainer.accelerator=[cpu"],  # not even an override
     "error: "),
])
def test_config_typos_exit_2_with_the_closest_name(tmp_path, command, message):
    result = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # no run folder either


def test_the_right_spelling_is_accepted(tmp_path):
    """The control for the typo test above: the same overrides spelt right compose."""
    result = subprocess.run([sys.executable, "-m", "foodnet.train", "--cfg", "job",
                             "trainer.max_epochs=3", "model=resnet152", "+model.optimizer.foo=1"],
                            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "max_epochs: 3" in result.stdout

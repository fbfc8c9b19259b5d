"""What the tests share besides fixtures (those stay in conftest.py): paths, the one tiny-run
factory, composing the real configs, the subprocess environment, and answers computed by hand
from a checkpoint to compare the entry points' numbers with."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "conf"
REFERENCE_EPOCHS = 3

# How a tiny run executes: on the CPU, quietly, in the main process, and computing the same on
# every CPU: precision and memory layout are pinned (`auto` would pick bf16 on one CPU and fp32 on
# another); the speed tests exercise `auto` on their own.
_EXECUTION = {
    "data.batch_size": 16, "data.num_workers": 0, "trainer.accelerator": "cpu",
    "trainer.enable_progress_bar": "false", "trainer.enable_model_summary": "false",
    "trainer.precision": "32-true", "channels_last": "false",
}
# What makes a train run tiny: resnet18, random init, 32px, one epoch, not compiled.
_TRAIN = {
    "model.preprocessing.image_size": 32, "model.arch": "resnet18", "model.weights": "null",
    "trainer.max_epochs": 1, "compile": "false",
}


def _as_overrides(overrides: dict) -> list[str]:
    return [f"{key}={value}" for key, value in overrides.items() if value is not None]


def tiny_overrides(data: dict[str, Path] | None = None, **extra) -> list[str]:
    """Overrides that shrink a train run to seconds on CPU, training on `data`'s manifests.
    `extra` adds or replaces overrides; a value of None leaves that key to the config."""
    overrides = dict(_EXECUTION, **_TRAIN)
    if data is not None:
        overrides.update({"data.train_manifest": data["train"], "data.val_manifest": data["val"],
                          "data.classes": data["classes"]})
    overrides.update(extra)
    return _as_overrides(overrides)


def eval_overrides(**extra) -> list[str]:
    """The same execution settings for `evaluate` (the checkpoint decides the model)."""
    return _as_overrides(dict(_EXECUTION, **extra))


def _compose(config_name: str, overrides: list[str] | None, run_dir: Path | None):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [])
    if run_dir is not None:
        cfg.paths.output_dir = str(run_dir)
    return cfg


def compose_train(overrides: list[str] | None = None, run_dir: Path | None = None):
    """The real train config, composed as Hydra would, with `paths.output_dir` set to run_dir."""
    return _compose("train", overrides, run_dir)


def compose_eval(overrides: list[str] | None = None, run_dir: Path | None = None):
    """The real eval config, composed as Hydra would, with `paths.output_dir` set to run_dir."""
    return _compose("eval", overrides, run_dir)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # Subprocesses run from tmp dirs: import this checkout's foodnet, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HYDRA_FULL_ERROR", "0")
    return env


def seed_preprocessing(size: int = 32):
    """The seed's preprocessing at `size`: torchvision's ImageNet weights' mean, std and
    interpolation, a square resize without crop (what conf/model/resnet152.yaml sets)."""
    from torchvision import models

    from foodnet.models.sources.torchvision import weights_preprocessing

    return weights_preprocessing(models.ResNet18_Weights.DEFAULT).override(
        image_size=size, crop_mode="squash")


def checkpoint_probs(checkpoint: Path, images: list[Path], image_size: int | None = None):
    """Class probabilities computed by hand: load_model, the eval preset, softmax of the logits
    divided by the checkpoint's temperature."""
    import torch

    from foodnet.data.images import load_rgb
    from foodnet.models.checkpoint import load_model

    net, info = load_model(checkpoint)
    transform = info.preprocessing.override(image_size=image_size).eval_transform()
    with torch.no_grad():
        logits = net(torch.stack([transform(load_rgb(p)) for p in images]))
    return (logits / info.temperature).softmax(dim=1)


def checkpoint_scores(checkpoint: Path, manifest: Path, first: int | None = None) -> dict:
    """A checkpoint's accuracy, top-5 accuracy and macro F1 on a manifest (its `first` images),
    counted by hand from checkpoint_probs: the independent answer a run's metrics must match."""
    from foodnet.data.manifest import read_manifest

    samples = read_manifest(manifest)[:first]
    probs = checkpoint_probs(checkpoint, [s.path for s in samples])
    labels = [s.label for s in samples]
    pairs = list(zip(probs.argmax(dim=1).tolist(), labels, strict=True))
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices.tolist()
    f1 = []  # macro F1 over the classes present in the labels or the predictions
    for c in {c for pair in pairs for c in pair}:
        tp = sum(p == c and y == c for p, y in pairs)
        wrong = sum((p == c) != (y == c) for p, y in pairs)  # false positives and negatives
        f1.append(2 * tp / (2 * tp + wrong))
    return {"acc": sum(p == y for p, y in pairs) / len(pairs),
            "acc_top5": sum(y in top for top, y in zip(top5, labels, strict=True)) / len(pairs),
            "f1_macro": sum(f1) / len(f1)}


def _state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    """Every tensor of the two checkpoints' state_dicts is bitwise equal."""
    import torch

    a, b = _state_dict(path_a), _state_dict(path_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"weights differ: {different[:5]}"


def assert_weights_differ(path_a: Path, path_b: Path) -> None:
    """The control of assert_same_weights: some trained tensor of the two checkpoints differs."""
    import torch

    a, b = _state_dict(path_a), _state_dict(path_b)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[key], b[key]) for key in a), "the weights are identical"

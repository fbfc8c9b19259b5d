"""The same seed twice on CPU gives identical metrics and weights, whatever data.num_workers."""

import json

import torch
from helpers import (
    REFERENCE_EPOCHS,
    assert_same_weights,
    assert_weights_differ,
    compose_train,
    tiny_overrides,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from foodnet.train import build, train


def scalars(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in ("train/loss", "train/acc", "val/loss", "val/acc")}


def test_same_seed_twice_gives_identical_metrics(tiny_data, tmp_path, reference_run):
    # The reference run used no loader workers; this one decodes in 2 worker processes.
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS,
                                             "data.num_workers": 2})
    train(compose_train(overrides, run_dir=tmp_path))
    first, first_last = reference_run
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert isinstance(first["val/acc_best"], float) and first["epochs"] == REFERENCE_EPOCHS
    assert (again["val/acc_best"], again["epochs"]) == (first["val/acc_best"], first["epochs"])
    history = scalars(tmp_path)
    assert all(len(values) == REFERENCE_EPOCHS for values in history.values())
    assert history == scalars(first_last.parents[1])
    assert_same_weights(tmp_path / "checkpoints" / "last.ckpt", first_last)


def test_same_seed_twice_in_bf16_gives_identical_weights(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": 2,
                                             "trainer.precision": "bf16-mixed"})
    runs = [tmp_path / "first", tmp_path / "again"]
    for run_dir in runs:
        train(compose_train([*overrides, "~logger"], run_dir=run_dir))
    first, again = (run / "checkpoints" / "last.ckpt" for run in runs)
    assert torch.load(first, weights_only=True)["speed"]["precision"] == "bf16-mixed"
    assert_same_weights(first, again)


def test_the_reference_run_trained_from_its_seed_and_another_seed_ends_elsewhere(
        tiny_data, tmp_path, reference_run):
    """The controls of the exact-equality tests (here, resume, signals): the weights they
    compare moved from the seed's init, and a different seed gives different weights."""
    import lightning as L

    overrides = tiny_overrides(tiny_data, **{"trainer.max_epochs": REFERENCE_EPOCHS})
    cfg = compose_train(overrides, run_dir=tmp_path / "init")
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does before build()
    init = build(cfg)[1].state_dict()
    trained = torch.load(reference_run[1], weights_only=True)["state_dict"]
    assert init.keys() == trained.keys()
    net = [key for key in init if key.startswith("net.")]
    moved = {key for key in net if not torch.equal(init[key], trained[key])}
    # The backbone is frozen (BN statistics included) and equals the seed's init; the head trained.
    assert moved == {key for key in net if key.startswith("net.head.")}, sorted(moved)[:5]
    assert moved

    other = tmp_path / "other_seed"
    train(compose_train([*overrides, "seed=1", "~logger"], run_dir=other))
    assert_weights_differ(other / "checkpoints" / "last.ckpt", reference_run[1])

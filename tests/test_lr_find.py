"""tune.lr_find: Lightning's learning-rate range test before training, its suggestion used."""

import json

import torch
from helpers import compose_train, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from foodnet.train import train


def _optimizer_lr(checkpoint: str) -> float:
    state = torch.load(checkpoint, weights_only=True)["optimizer_states"][0]
    return state["param_groups"][0]["lr"]


def test_lr_find_writes_its_suggestion_and_trains_with_it(tiny_data, tmp_path):
    # Cached features: the range test trains the head alone, 30 steps over 5 batches an epoch.
    overrides = {"cache_features": "true", "cache_dir": tmp_path / "cache",
                 "model.optimizer.lr": 1e-3}
    metrics = train(compose_train(tiny_overrides(tiny_data, **overrides, **{
        "tune.lr_find": "true", "tune.num_training": 30}), run_dir=tmp_path / "found"))
    found = metrics["lr_find"]["suggestion"]
    assert isinstance(found, float) and found != 1e-3
    assert metrics["lr_find"]["steps"] == 30
    assert json.loads((tmp_path / "found" / "metrics.json").read_text())["lr_find"] == \
        metrics["lr_find"]
    assert _optimizer_lr(metrics["last_checkpoint"]) == found  # the run trained with it
    assert (tmp_path / "found" / "lr_find.png").stat().st_size > 0
    events = EventAccumulator(str(tmp_path / "found" / "tensorboard"),
                              size_guidance={"images": 0})
    events.Reload()
    assert "tune/lr_find" in events.Tags()["images"]
    # The control: without lr_find the optimizer has the config's lr, and nothing is written.
    plain = train(compose_train(tiny_overrides(tiny_data, **overrides),
                                run_dir=tmp_path / "plain"))
    assert _optimizer_lr(plain["last_checkpoint"]) == 1e-3
    assert "lr_find" not in plain and not (tmp_path / "plain" / "lr_find.png").exists()

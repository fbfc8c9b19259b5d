"""ema=true: validation, checkpoints (and so export) hold the moving average of the weights."""

import pytest
import torch
from helpers import compose_train, tiny_overrides

from foodnet.errors import ConfigError
from foodnet.train import train


def _load(path: str) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("cached", ["true", "false"])
def test_ema_checkpoints_the_average_and_trains_the_same_raw_weights(tiny_data, tmp_path,
                                                                      cached):
    common = {"cache_features": cached, "cache_dir": tmp_path / "cache",
              "trainer.max_epochs": 2}
    ema = train(compose_train(tiny_overrides(tiny_data, **common, ema="true", ema_decay=0.9),
                              run_dir=tmp_path / "ema"))
    plain = train(compose_train(tiny_overrides(tiny_data, **common), run_dir=tmp_path / "plain"))
    averaged, raw = _load(ema["last_checkpoint"]), _load(plain["last_checkpoint"])
    assert averaged["hyper_parameters"]["ema"] == 0.9
    assert raw["hyper_parameters"]["ema"] is None
    # The control: the average does not change training, so the EMA run's raw weights are
    # exactly the plain run's, and the plain run checkpoints those raw weights.
    assert "current_model_state" not in raw
    head = [k for k in raw["state_dict"] if k.startswith("net.head")]
    assert head
    for key in head:
        assert torch.equal(averaged["current_model_state"][key], raw["state_dict"][key])
        assert not torch.equal(averaged["state_dict"][key], raw["state_dict"][key])
    # The frozen backbone is not averaged into something else: bit for bit the same.
    backbone = [k for k in raw["state_dict"] if k.startswith("net.backbone")]
    assert backbone
    assert all(torch.equal(averaged["state_dict"][k], raw["state_dict"][k]) for k in backbone)


def test_ema_with_gradual_unfreezing_averages_what_was_unfrozen(tiny_data, tmp_path):
    run = train(compose_train(tiny_overrides(tiny_data, finetune="gradual",
                                             **{"finetune.unfreeze_last_at": 1},
                                             ema="true", ema_decay=0.5,
                                             **{"trainer.max_epochs": 2}),
                              run_dir=tmp_path / "gradual"))
    state = _load(run["last_checkpoint"])
    changed = [k for k, v in state["state_dict"].items()
               if not torch.equal(v, state["current_model_state"][k])]
    assert any(k.startswith("net.head") for k in changed)
    assert any(k.startswith("net.backbone") for k in changed)  # unfrozen at epoch 1


def test_a_bad_decay_is_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="ema_decay=1.5"):
        train(compose_train(tiny_overrides(tiny_data, ema="true", ema_decay=1.5),
                            run_dir=tmp_path / "bad"))

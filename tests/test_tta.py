"""Test-time augmentation (foodnet.data.tta) in predict, evaluate and serve's classifier."""

import json
import re

import pytest
import torch
from helpers import checkpoint_probs, compose_eval, eval_overrides
from PIL import Image

from foodnet.data.manifest import read_manifest
from foodnet.data.tta import TTA_MODES, tta_transform
from foodnet.evaluate import evaluate
from foodnet.inference.predictor import open_classifier, predict_images
from foodnet.models.checkpoint import load_model
from foodnet.predict import main as predict_main
from foodnet.predict import parse_args

# float32 results whose reductions ran in another order (another batch size or kernel) agree to
# a few units of float32's epsilon per accumulation, far below what TTA changes.
FLOAT32_REORDER = {"rtol": 1e-5, "atol": 1e-5}

def _paths(tiny_data, count=6):
    return [s.path for s in read_manifest(tiny_data["test"])][:count]


def _probs(checkpoint, paths, tta):
    classifier = open_classifier(checkpoint, device="cpu", tta=tta)
    return torch.stack([p.probs for p in predict_images(classifier, paths, 4, num_workers=0)])


def test_views_are_the_eval_view_its_mirror_and_five_crops(tiny_checkpoint, tiny_data):
    preprocessing = load_model(tiny_checkpoint)[1].preprocessing
    image = Image.open(_paths(tiny_data, 1)[0]).convert("RGB")
    eval_view = preprocessing.eval_transform()(image)
    none, flip, five = (tta_transform(preprocessing, mode)(image) for mode in TTA_MODES)
    assert torch.equal(none, eval_view.unsqueeze(0))
    assert torch.equal(flip, torch.stack([eval_view, eval_view.flip(-1)]))
    assert five.shape == (5, *eval_view.shape)
    assert all(not torch.equal(five[0], five[i]) for i in range(1, 5))  # five different views


def test_tta_changes_the_probabilities_and_they_still_sum_to_one(tiny_checkpoint, tiny_data):
    paths = _paths(tiny_data)
    plain = _probs(tiny_checkpoint, paths, "none")
    # The control: tta=none is what predict answered before (the network, one view), to float32
    # rounding: batches of another size sum in another order (oneDNN picks kernels by shape).
    torch.testing.assert_close(plain, checkpoint_probs(tiny_checkpoint, paths), **FLOAT32_REORDER)
    for mode in ("flip", "five"):
        averaged = _probs(tiny_checkpoint, paths, mode)
        assert not torch.allclose(averaged, plain), mode
        assert torch.allclose(averaged.sum(dim=1), torch.ones(len(paths)), atol=1e-6)
    # flip is the mean of the image's and its mirror's probabilities, computed by hand.
    net, info = load_model(tiny_checkpoint)
    views = torch.stack([tta_transform(info.preprocessing, "flip")(Image.open(p).convert("RGB"))
                         for p in paths])
    with torch.inference_mode():
        by_hand = (net(views.flatten(0, 1)) / info.temperature).softmax(1).view(len(paths), 2, -1)
    torch.testing.assert_close(_probs(tiny_checkpoint, paths, "flip"), by_hand.mean(1),
                               **FLOAT32_REORDER)


def test_an_image_symmetric_under_flip_keeps_its_class(tiny_checkpoint, tmp_path):
    left = Image.new("RGB", (40, 32), (200, 40, 30))
    left.paste((20, 160, 60), (0, 0, 12, 32))  # green band on the left ...
    left.paste((20, 160, 60), (28, 0, 40, 32))  # ... and its mirror on the right
    path = tmp_path / "symmetric.png"
    left.save(path)
    plain, flipped = (_probs(tiny_checkpoint, [path], mode) for mode in ("none", "flip"))
    torch.testing.assert_close(plain, flipped, **FLOAT32_REORDER)  # the mirror is the same image
    assert plain.argmax() == flipped.argmax()


def test_predict_records_say_which_tta(tiny_checkpoint, tiny_data, capsys):
    assert predict_main([str(tiny_checkpoint), str(tiny_data["test"]), "--tta", "flip",
                         "--device", "cpu", "--workers", "0"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records and all(r["tta"] == "flip" for r in records if "error" not in r)
    assert predict_main([str(tiny_checkpoint), str(tiny_data["test"]), "--device", "cpu",
                         "--workers", "0"]) == 0
    assert all("tta" not in r for r in json.loads(capsys.readouterr().out))


def test_the_cli_choices_are_the_modes():
    assert parse_args(["m.ckpt", "x.jpg"]).tta == "none"
    from foodnet.serve import parse_args as serve_args

    for parse in (parse_args, serve_args):
        argv = ["m.ckpt", "x.jpg"] if parse is parse_args else ["m.ckpt"]
        for mode in TTA_MODES:
            assert parse([*argv, "--tta", mode]).tta == mode


def test_evaluate_records_tta_and_its_scores(tiny_checkpoint, tiny_data, tmp_path):
    reports = {}
    for mode in ("none", "flip"):
        reports[mode] = evaluate(compose_eval(eval_overrides(
            ckpt_path=tiny_checkpoint, tta=mode, **{"data.test_manifest": tiny_data["test"]}),
            run_dir=tmp_path / mode))
        assert json.loads((tmp_path / mode / "report.json").read_text())["tta"] == mode
    assert reports["none"]["test/ece_raw"] != reports["flip"]["test/ece_raw"]


def test_evaluate_refuses_an_unknown_tta(tiny_checkpoint, tiny_data, tmp_path):
    from foodnet.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("tta=six")):
        evaluate(compose_eval(eval_overrides(ckpt_path=tiny_checkpoint, tta="six",
                                             **{"data.test_manifest": tiny_data["test"]}),
                              run_dir=tmp_path / "bad"))

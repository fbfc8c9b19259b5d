"""Temperature scaling: fitted after each validation epoch, saved in the checkpoint, applied by
predict, exports and evaluate; ECE before and after in metrics.json and report.json."""

import json

import pytest
import torch
from helpers import compose_eval, compose_train, eval_overrides, tiny_overrides

from foodnet.data.images import load_rgb
from foodnet.data.manifest import read_manifest
from foodnet.evaluate import evaluate
from foodnet.export import main as export_main
from foodnet.models.checkpoint import load_model, read_checkpoint
from foodnet.predict import main as predict_main
from foodnet.reports.calibration import calibrate, fit_temperature, nll
from foodnet.reports.metrics import TEMPERATURE, TEST_ECE, TEST_ECE_RAW, VAL_ECE, VAL_ECE_RAW
from foodnet.train import train


def overconfident_logits(count: int, generator: torch.Generator):
    """Labels drawn from softmax(z), logits 3 z: a model whose confidence is too high."""
    z = torch.randn(count, 10, generator=generator) * 1.5
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=generator).squeeze(1)
    return 3 * z, labels


def test_the_temperature_lowers_the_nll_of_held_out_logits():
    generator = torch.Generator().manual_seed(0)
    fit_logits, fit_labels = overconfident_logits(2000, generator)
    held_logits, held_labels = overconfident_logits(2000, generator)
    temperature = fit_temperature(fit_logits, fit_labels)
    # Fitted on one half, it lowers the NLL of the other half (control: T = 1, no scaling).
    assert nll(held_logits, held_labels, temperature) < nll(held_logits, held_labels, 1.0) - 0.1
    assert temperature > 2  # over-confident logits are softened, not sharpened
    # Under-confident logits (the default model: ECE 0.40) are sharpened.
    assert fit_temperature(fit_logits / 9, fit_labels) < 1
    fit = calibrate(held_logits, held_labels)
    assert fit.ece < fit.ece_raw and fit.nll < fit.nll_raw
    # The argmax, hence the accuracy, never changes.
    assert torch.equal((held_logits / temperature).argmax(dim=1), held_logits.argmax(dim=1))


def test_training_saves_the_temperature_and_writes_the_ece(tiny_data, tmp_path):
    metrics = train(compose_train(tiny_overrides(tiny_data, **{"trainer.max_epochs": 2}),
                                  run_dir=tmp_path / "on"))
    best = read_checkpoint(metrics["best_checkpoint"])
    # metrics.json reports the best checkpoint's own fit, recorded in the checkpoint.
    assert best["hyper_parameters"][TEMPERATURE] == metrics[TEMPERATURE] != 1.0
    assert best["calibration"] == {VAL_ECE_RAW: metrics[VAL_ECE_RAW], VAL_ECE: metrics[VAL_ECE]}
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())[VAL_ECE] == metrics[VAL_ECE]
    # The saved temperature is the fit of that checkpoint's validation logits, by hand.
    net, info = load_model(metrics["best_checkpoint"])
    assert info.temperature == metrics[TEMPERATURE]
    samples = read_manifest(tiny_data["val"])
    transform = info.preprocessing.eval_transform()
    with torch.no_grad():
        logits = net(torch.stack([transform(load_rgb(s.path)) for s in samples]))
    labels = torch.tensor([s.label for s in samples])
    assert fit_temperature(logits, labels) == pytest.approx(metrics[TEMPERATURE], rel=1e-3)
    assert nll(logits, labels, metrics[TEMPERATURE]) < nll(logits, labels)

    # The control: calibrate=false fits nothing, logs nothing, and saves 1.0.
    off = train(compose_train(tiny_overrides(tiny_data, calibrate="false",
                                             **{"trainer.max_epochs": 2}),
                              run_dir=tmp_path / "off"))
    assert VAL_ECE not in off and TEMPERATURE not in off
    assert read_checkpoint(off["best_checkpoint"])["hyper_parameters"][TEMPERATURE] == 1.0


@pytest.fixture(scope="module")
def calibrated_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a temperature of 3 (the tiny one: 1.0, not calibrated)."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    assert checkpoint["hyper_parameters"][TEMPERATURE] == 1.0
    checkpoint["hyper_parameters"][TEMPERATURE] = 3.0
    out = tmp_path_factory.mktemp("calibrated") / "calibrated.ckpt"
    torch.save(checkpoint, out)
    return out


def predicted(model, inputs, capsys, *options) -> list[dict]:
    capsys.readouterr()
    assert predict_main([str(model), *map(str, inputs), "--topk", "20", "--device", "cpu",
                         *options]) == 0
    return json.loads(capsys.readouterr().out)


def probs_of(records) -> torch.Tensor:
    rows = []
    for record in records:
        by_label = {p["label"]: p["prob"] for p in record["predictions"]}
        rows.append([by_label[label] for label in range(len(by_label))])
    return torch.tensor(rows)


def test_predict_and_a_pt2_export_apply_the_temperature(tiny_checkpoint, calibrated_checkpoint,
                                                        tiny_data, tmp_path, capsys):
    raw = probs_of(predicted(tiny_checkpoint, [tiny_data["test"]], capsys))
    calibrated = probs_of(predicted(calibrated_checkpoint, [tiny_data["test"]], capsys))
    # Probabilities change (softer), the argmax does not.
    assert torch.equal(calibrated.argmax(dim=1), raw.argmax(dim=1))
    assert (calibrated.max(dim=1).values < raw.max(dim=1).values).all()
    # Exactly softmax(logits / 3): log-probabilities differ from the raw ones by a per-image
    # constant once divided by 3.
    expected = (raw.log() / 3).softmax(dim=1)
    torch.testing.assert_close(calibrated, expected, rtol=1e-4, atol=1e-6)

    out = tmp_path / "food.pt2"
    assert export_main([str(calibrated_checkpoint), "--format", "pt2", "--out", str(out)]) == 0
    assert json.loads(out.with_name("food.pt2.json").read_text())[TEMPERATURE] == 3.0
    exported = probs_of(predicted(out, [tiny_data["test"]], capsys))
    torch.testing.assert_close(exported, calibrated, rtol=1e-4, atol=1e-6)


def test_evaluate_applies_or_refits_the_temperature(calibrated_checkpoint, tiny_data, tmp_path):
    overrides = eval_overrides(ckpt_path=calibrated_checkpoint,
                               **{"data.test_manifest": tiny_data["test"]})
    report = evaluate(compose_eval(overrides, tmp_path / "applied"))
    assert report[TEMPERATURE] == 3.0 and report[TEST_ECE] != report[TEST_ECE_RAW]
    assert not (tmp_path / "applied" / "calibrated.ckpt").exists()

    refit = evaluate(compose_eval(overrides + ["calibrate=true",
                                               f"data.val_manifest={tiny_data['val']}"],
                                  tmp_path / "refit"))
    written = tmp_path / "refit" / "calibrated.ckpt"
    assert refit["calibrated_checkpoint"] == str(written)
    assert refit[TEMPERATURE] != 3.0
    assert load_model(written)[1].temperature == refit[TEMPERATURE]
    # Accuracy is the same whatever the temperature; the raw ECE too (same logits).
    assert refit["test/acc"] == report["test/acc"] and refit[TEST_ECE_RAW] == report[TEST_ECE_RAW]
    assert load_model(calibrated_checkpoint)[1].temperature == 3.0  # the original is untouched

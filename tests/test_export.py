"""export: ONNX and TorchScript files with their preprocessing sidecar, and prediction parity."""

import json
import warnings

import pytest
import torch
from conftest import checkpoint_probs

from foodnet.export import main as export_main
from foodnet.models.checkpoint import load_model
from foodnet.predict import main as predict_main


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "food.onnx"
    assert export_main([str(tiny_checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return out


def predictions(model, inputs, capsys) -> list[dict]:
    assert predict_main([str(model), *map(str, inputs), "--topk", "20", "--batch-size", "7",
                         "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_onnx_export_records_its_preprocessing(tiny_checkpoint, onnx_file):
    import onnx

    _, info = load_model(tiny_checkpoint)
    meta = json.loads(onnx_file.with_name("food.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["arch"] == "resnet18"
    assert meta["image_size"] == 32 and meta["num_classes"] == 20
    assert meta["mean"] == info.mean and meta["std"] == info.std
    assert meta["class_names"] == info.class_names and meta["class_names"][0] == "red-disk"
    graph = onnx.load(str(onnx_file)).graph
    onnx.checker.check_model(onnx.load(str(onnx_file)))
    (model_input,) = graph.input
    assert model_input.name == meta["input_name"] == "image"
    dims = model_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]


def test_onnx_predictions_match_the_checkpoint(tiny_checkpoint, onnx_file, tiny_data, capsys):
    # Batches of 7 over 40 images: the ONNX graph also runs a batch of 5 (dynamic batch axis).
    reference = predictions(tiny_checkpoint, [tiny_data["test"]], capsys)
    exported = predictions(onnx_file, [tiny_data["test"]], capsys)
    assert [r["path"] for r in exported] == [r["path"] for r in reference]
    top1 = [r["predictions"][0]["prob"] for r in reference]
    assert max(top1) > 0.3, "near-uniform probabilities would make a 1e-3 check meaningless"
    for ours, theirs in zip(exported, reference, strict=True):
        assert ours["predictions"][0]["label"] == theirs["predictions"][0]["label"]
        assert ours["predictions"][0]["class"] == theirs["predictions"][0]["class"]
        probs = {p["label"]: p["prob"] for p in theirs["predictions"]}
        assert len(probs) == 20
        for p in ours["predictions"]:
            assert p["prob"] == pytest.approx(probs[p["label"]], abs=1e-3)


def test_torchscript_export_loads_with_torch_jit_and_matches(tiny_checkpoint, tiny_data, tmp_path,
                                                             capsys):
    out = tmp_path / "food.pt"
    assert export_main([str(tiny_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    assert f"wrote {out} and {out}.json" in capsys.readouterr().out
    assert json.loads((tmp_path / "food.pt.json").read_text())["format"] == "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        scripted = torch.jit.load(str(out))
    net, _ = load_model(tiny_checkpoint)
    x = torch.randn(3, 3, 32, 32)  # another batch size than the traced example
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x).softmax(dim=1), atol=1e-5)

    # predict runs the TorchScript file too (its sidecar says so).
    images = sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[::4]
    probs = checkpoint_probs(tiny_checkpoint, images)
    for record, row in zip(predictions(out, images, capsys), probs, strict=True):
        assert [p["prob"] for p in record["predictions"]] == pytest.approx(
            row.sort(descending=True).values.tolist(), abs=1e-5)


def test_export_errors_name_the_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert export_main([str(missing), "--out", str(tmp_path / "x.onnx")]) == 2
    assert f"error: {missing}: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()

"""export: ONNX (dynamo) and torch.export files with their preprocessing sidecar, and parity."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import checkpoint_probs, subprocess_env

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
    assert meta["preprocessing"] == info.preprocessing.to_dict()
    assert meta["preprocessing"]["image_size"] == 32 and meta["num_classes"] == 20
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


@pytest.fixture(scope="module")
def pt2_file(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "food.pt2"
    assert export_main([str(tiny_checkpoint), "--format", "pt2", "--out", str(out)]) == 0
    return out


def test_pt2_export_loads_with_torch_export_and_matches(tiny_checkpoint, pt2_file, tiny_data,
                                                        capsys):
    meta = json.loads(pt2_file.with_name("food.pt2.json").read_text())
    assert meta["format"] == "pt2" and meta["card"]["arch"] == "resnet18"
    program = torch.export.load(str(pt2_file))
    net, _ = load_model(tiny_checkpoint)
    for batch in (1, 3):  # other batch sizes than the traced example: the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():  # another graph of the same ops: float32 sums may reorder
            assert torch.allclose(program.module()(x), net(x).softmax(dim=1), atol=1e-5)

    # predict runs the .pt2 file too (its sidecar says so).
    images = sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[::4]
    probs = checkpoint_probs(tiny_checkpoint, images)
    for record, row in zip(predictions(pt2_file, images, capsys), probs, strict=True):
        assert [p["prob"] for p in record["predictions"]] == pytest.approx(
            row.sort(descending=True).values.tolist(), abs=1e-5)


def test_onnx_export_uses_the_dynamo_exporter_and_falls_back_with_a_warning(
        tiny_checkpoint, onnx_file, tmp_path):
    import onnx

    # The dynamo exporter writes opset 18 and names no TorchScript ops; the default path is it.
    assert {o.domain: o.version for o in onnx.load(str(onnx_file)).opset_import}[""] == 18

    # Without onnxscript the dynamo exporter cannot run: the old exporter takes over, said so.
    out = tmp_path / "legacy.onnx"
    code = ("import sys; sys.modules['onnxscript'] = None\n"
            "from foodnet.export import main\n"
            f"sys.exit(main([{str(tiny_checkpoint)!r}, '--out', {str(out)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: the dynamo ONNX exporter failed (ModuleNotFoundError" in result.stderr
    assert "falling back to the TorchScript-based exporter" in result.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(out))
    net, _ = load_model(tiny_checkpoint)
    x = torch.randn(3, 3, 32, 32)
    (probs,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():  # onnxruntime's kernels, not PyTorch's: float32 in another order
        assert torch.allclose(torch.from_numpy(probs), net(x).softmax(dim=1), atol=1e-4)


def test_a_sidecar_of_another_format_is_refused_with_the_way_out(tiny_checkpoint, onnx_file,
                                                                  tmp_path, capsys):
    old = tmp_path / "food.pt"
    old.write_bytes(b"PK\x03\x04 a TorchScript archive")
    meta = json.loads(onnx_file.with_name("food.onnx.json").read_text())
    (tmp_path / "food.pt.json").write_text(json.dumps({**meta, "format": "torchscript"}))
    assert predict_main([str(old), str(onnx_file)]) == 2
    err = capsys.readouterr().err
    assert f"error: {old.with_name('food.pt.json')}: format 'torchscript' is not one of onnx, " \
        "pt2; re-export with foodnet.export" in err


def test_export_errors_name_the_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert export_main([str(missing), "--out", str(tmp_path / "x.onnx")]) == 2
    assert f"error: {missing}: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()

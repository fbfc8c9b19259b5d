"""predict: folders, lists, json and csv, top-k, unreadable images and bad model files."""

import csv
import io
import json
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from helpers import checkpoint_probs, subprocess_env

from foodnet.data.manifest import read_manifest
from foodnet.models.checkpoint import load_model
from foodnet.predict import main


@pytest.fixture
def photo_folder(tiny_data, tmp_path):
    """Five test photos (two in a subfolder), one corrupt .jpg and a non-image file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    photos = sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[::8]
    for index, photo in enumerate(photos):
        shutil.copy(photo, folder / ("sub" if index % 2 else "") / photo.name)
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.md").write_text("not an image, skipped\n")
    return folder


def test_folder_with_a_corrupt_image_reports_it_and_predicts_the_rest(
        tiny_checkpoint, photo_folder, tmp_path):
    out = tmp_path / "out" / "predictions.json"
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.predict", str(tiny_checkpoint), str(photo_folder),
         "--topk", "3", "--batch-size", "2", "--device", "cpu", "--out", str(out)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    broken = photo_folder / "sub" / "broken.jpg"
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: {broken}: not an image" in result.stderr
    assert "1 of 6 images could not be read" in result.stderr

    records = json.loads(out.read_text())
    images = sorted(p for p in photo_folder.rglob("*.jpg"))
    assert [r["path"] for r in records] == [str(p) for p in images]  # recursive, sorted, no .md
    by_path = {r["path"]: r for r in records}
    assert by_path[str(broken)]["predictions"] == []
    assert by_path[str(broken)]["error"].startswith(f"{broken}: not an image")

    good = [p for p in images if p != broken]
    probs = checkpoint_probs(tiny_checkpoint, good)
    names = load_model(tiny_checkpoint)[1].class_names
    for path, row in zip(good, probs, strict=True):
        record = by_path[str(path)]
        assert "error" not in record
        top = row.topk(3)
        assert [p["label"] for p in record["predictions"]] == top.indices.tolist()
        assert [p["class"] for p in record["predictions"]] == [names[i] for i in top.indices]
        assert [p["prob"] for p in record["predictions"]] == pytest.approx(top.values.tolist(),
                                                                           abs=1e-5)


def test_csv_from_a_manifest_with_topk(tiny_checkpoint, tiny_data, capsys):
    assert main([str(tiny_checkpoint), str(tiny_data["test"]), "--format", "csv", "--topk", "2",
                 "--batch-size", "16", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    samples = read_manifest(tiny_data["test"])
    assert [(r["path"], r["rank"]) for r in rows] == [(str(s.path), rank) for s in samples
                                                      for rank in ("1", "2")]
    probs = checkpoint_probs(tiny_checkpoint, [s.path for s in samples])
    names = load_model(tiny_checkpoint)[1].class_names
    assert [r["class"] for r in rows[::2]] == [names[i] for i in probs.argmax(dim=1)]
    assert [float(r["prob"]) for r in rows[::2]] == pytest.approx(probs.max(dim=1).values.tolist(),
                                                                  abs=1e-5)
    assert all(r["error"] == "" for r in rows)


def test_topk_is_capped_at_the_class_count(tiny_checkpoint, photo_folder, capsys):
    image = next(photo_folder.glob("*.jpg"))
    assert main([str(tiny_checkpoint), str(image), "--topk", "50", "--device", "cpu"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["predictions"]) == 20
    assert sum(p["prob"] for p in record["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_missing_and_foreign_model_files_are_named(tiny_checkpoint, photo_folder, tmp_path,
                                                   capsys):
    from foodnet.models.checkpoint import model_info, read_checkpoint

    foreign = tmp_path / "foreign.ckpt"
    foreign.write_text("images/a.jpg 0\n")
    bare_onnx = tmp_path / "bare.onnx"
    bare_onnx.write_bytes(b"\x08\x07")
    garbage_onnx = tmp_path / "garbage.onnx"
    garbage_onnx.write_bytes(b"not an onnx graph")
    sidecar = {"format": "onnx", **asdict(model_info(read_checkpoint(tiny_checkpoint)))}
    (tmp_path / "garbage.onnx.json").write_text(json.dumps(sidecar))
    cases = [(tmp_path / "nope.ckpt", "model file not found"),
             (foreign, "not a readable checkpoint"),
             (bare_onnx, "no bare.onnx.json next to it"),
             (garbage_onnx, "not a loadable ONNX model")]
    for model, message in cases:
        assert main([str(model), str(photo_folder)]) == 2, model
        err = capsys.readouterr().err
        assert f"error: {model}: {message}" in err and "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(tiny_checkpoint), str(empty)]) == 2
    assert f"error: {empty}: folder holds no images" in capsys.readouterr().err


def test_image_list_lines_with_or_without_labels(tiny_checkpoint, photo_folder, tmp_path, capsys):
    images = sorted(photo_folder.glob("*.jpg"))
    listing = tmp_path / "new photos.txt"
    listing.write_text(f"# photos to classify\n{images[0]}\n\n{images[1]} 7\n")
    assert main([str(tiny_checkpoint), str(listing), "--topk", "1", "--device", "cpu"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(images[0]), str(images[1])]
    expected = checkpoint_probs(tiny_checkpoint, images[:2]).argmax(dim=1)
    assert torch.equal(torch.tensor([r["predictions"][0]["label"] for r in records]), expected)


def test_decoding_in_worker_processes_gives_the_same_predictions_in_order(tiny_checkpoint,
                                                                         photo_folder):
    from foodnet.inference.inputs import collect_images
    from foodnet.inference.predictor import open_classifier, predict_images

    classifier = open_classifier(tiny_checkpoint, device="cpu")
    paths = collect_images([photo_folder])  # 5 photos and a corrupt one, in 3 batches of 2
    serial = list(predict_images(classifier, paths, batch_size=2, num_workers=0))
    parallel = list(predict_images(classifier, paths, batch_size=2, num_workers=2))
    assert [p.path for p in parallel] == [p.path for p in serial] == paths
    assert [p.error for p in parallel] == [p.error for p in serial]
    assert sum(p.error is not None for p in parallel) == 1
    for a, b in zip(parallel, serial, strict=True):
        if a.probs is not None:
            torch.testing.assert_close(a.probs, b.probs)
    by_hand = checkpoint_probs(tiny_checkpoint, [p.path for p in serial if p.error is None])
    # Batched differently from the hand count: equal up to float32 reordering.
    torch.testing.assert_close(torch.stack([p.probs for p in parallel if p.error is None]),
                               by_hand, atol=1e-5, rtol=1e-4)


def test_min_confidence_answers_unsure_with_the_topk_still_given(tiny_checkpoint, tiny_data,
                                                                  capsys):
    def run(*options):
        assert main([str(tiny_checkpoint), str(tiny_data["test"]), "--topk", "3", "--device",
                     "cpu", *options]) == 0
        return json.loads(capsys.readouterr().out)

    # The control: without a threshold no answer is unsure.
    plain = run()
    assert not any(r["unsure"] for r in plain)
    tops = sorted(r["predictions"][0]["prob"] for r in plain)
    threshold = (tops[len(tops) // 2 - 1] + tops[len(tops) // 2]) / 2  # half below, half above
    records = run("--min-confidence", f"{threshold}")
    assert [r["unsure"] for r in records] == [r["predictions"][0]["prob"] < threshold
                                              for r in plain]
    assert sum(r["unsure"] for r in records) == len(records) // 2
    # An unsure answer keeps its top-k, unchanged.
    assert [r["predictions"] for r in records] == [r["predictions"] for r in plain]
    assert main([str(tiny_checkpoint), str(tiny_data["test"]), "--topk", "2", "--device", "cpu",
                 "--format", "csv", "--min-confidence", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * len(plain) and all(row["unsure"] == "true" for row in rows)


def test_min_confidence_must_be_a_probability(tiny_checkpoint, tiny_data, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tiny_checkpoint), str(tiny_data["test"]), "--min-confidence", "1.5"])
    assert stop.value.code == 2
    assert "1.5 is not a probability between 0 and 1" in capsys.readouterr().err

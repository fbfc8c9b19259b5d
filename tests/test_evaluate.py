"""evaluate: the real entry point on a tiny checkpoint; its report agrees with a hand count."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_probs, compose_eval, eval_overrides, subprocess_env
from PIL import Image

from foodnet.data.manifest import read_manifest
from foodnet.errors import CheckpointError, ImageLoadError, user_message
from foodnet.evaluate import evaluate
from foodnet.models.checkpoint import load_model


def test_evaluate_report_matches_a_hand_count(tiny_data, tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "eval"
    overrides = eval_overrides(ckpt_path=tiny_checkpoint,
                               **{"data.test_manifest": tiny_data["test"]})
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.evaluate", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run dir: {run_dir}" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())

    # The hand count: the checkpoint's network over the same images, one by one.
    samples = read_manifest(tiny_data["test"])
    probs = checkpoint_probs(tiny_checkpoint, [s.path for s in samples])
    names = load_model(tiny_checkpoint)[1].class_names
    labels = [s.label for s in samples]
    preds = probs.argmax(dim=1).tolist()
    hits = [p == y for p, y in zip(preds, labels, strict=True)]
    assert 0 < sum(hits) < len(hits), "a hand count means little if all are right or all wrong"

    # The checkpoint's record, since model.preprocessing overrides nothing.
    assert report["preprocessing"] == load_model(tiny_checkpoint)[1].preprocessing.to_dict()
    assert report["preprocessing"]["image_size"] == 32
    assert report["counts"]["images"] == len(samples) == 40
    assert report["counts"]["correct"] == sum(hits)
    assert report["test/acc"] == pytest.approx(sum(hits) / len(hits))
    top5 = probs.topk(5).indices.tolist()
    assert report["test/acc_top5"] == pytest.approx(
        sum(y in row for y, row in zip(labels, top5, strict=True)) / len(labels))
    f1s = []
    for label, name in enumerate(names):
        n = labels.count(label)
        tp = sum(h and y == label for h, y in zip(hits, labels, strict=True))
        fp = sum(p == label and y != label for p, y in zip(preds, labels, strict=True))
        assert report["counts"]["per_class"][name] == {"images": n, "correct": tp}
        assert report["test/per_class_acc"][name] == pytest.approx(tp / n)
        if tp + fp + (n - tp):
            f1s.append(2 * tp / (2 * tp + fp + (n - tp)))
    assert report["test/f1_macro"] == pytest.approx(sum(f1s) / len(f1s))

    with (run_dir / "misclassified.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    # The mistakes, costliest first (the loss of the true class), each path resolved: the
    # manifest names them relative to its folder, possibly through "..".
    expected = sorted(
        ((str(s.path.resolve()), names[s.label], names[p], float(probs[i].max()),
          -float(probs[i, s.label].log()))
         for i, (s, p) in enumerate(zip(samples, preds, strict=True)) if p != s.label),
        key=lambda e: -e[4])
    assert [(r["path"], r["true"], r["predicted"]) for r in rows] == [e[:3] for e in expected]
    assert [float(r["confidence"]) for r in rows] == pytest.approx([e[3] for e in expected],
                                                                   abs=1e-5)
    assert [float(r["loss"]) for r in rows] == pytest.approx([e[4] for e in expected], abs=1e-4)
    # The control: manifest order is not loss order here.
    assert [e[0] for e in expected] != [str(s.path.resolve()) for s, p in
                                        zip(samples, preds, strict=True) if p != s.label]
    assert all(".." not in Path(r["path"]).parts and Path(r["path"]).is_absolute()
               for r in rows)
    with Image.open(run_dir / "confusion.png") as image:
        assert image.format == "PNG" and min(image.size) >= 600


def test_explicit_image_size_overrides_the_checkpoints(tiny_data, tiny_checkpoint, tmp_path):
    cfg = compose_eval(eval_overrides(ckpt_path=tiny_checkpoint,
                                      **{"data.test_manifest": tiny_data["test"],
                                         "model.preprocessing.image_size": 48}),
                       tmp_path)
    report = evaluate(cfg)
    samples = read_manifest(tiny_data["test"])
    probs = checkpoint_probs(tiny_checkpoint, [s.path for s in samples], image_size=48)
    hits = (probs.argmax(dim=1) == probs.new_tensor([s.label for s in samples])).sum()
    assert report["preprocessing"]["image_size"] == 48
    assert report["counts"]["correct"] == int(hits)
    assert json.loads((tmp_path / "report.json").read_text())["preprocessing"]["image_size"] == 48


def test_missing_inputs_name_the_fix(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="set ckpt_path="):
        evaluate(compose_eval(eval_overrides(**{"data.test_manifest": tiny_data["test"]}),
                              tmp_path))
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match=f"{missing}: checkpoint not found"):
        evaluate(compose_eval(eval_overrides(ckpt_path=missing, **{"data.test_manifest": "x.txt"}),
                              tmp_path))
    with pytest.raises(ValueError, match="set data.test_manifest="):
        evaluate(compose_eval(eval_overrides(ckpt_path=missing), tmp_path))


def test_a_worker_error_exits_2_and_the_process_ends(tiny_data, tiny_checkpoint, tmp_path):
    """The error leaves a loader worker running (its iterator is held by the traceback); the
    worker ignores SIGTERM, so without foodnet.data.dataset.end_workers_at_exit the process
    would wait for it forever at exit, after printing its error."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    manifest = tmp_path / "test.txt"
    manifest.write_text(f"{tiny_data['test'].parent / 'images/test/red-disk_000.jpg'} 0\n{bad} 3\n")
    overrides = eval_overrides(ckpt_path=tiny_checkpoint, **{"data.test_manifest": manifest,
                                                             "data.num_workers": 1})
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.evaluate", *overrides, f"hydra.run.dir={tmp_path / 'e'}"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{manifest}:2: not an image" in result.stderr


def test_unreadable_image_stops_with_its_manifest_line(tiny_data, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    manifest = tmp_path / "test.txt"
    manifest.write_text(f"{tiny_data['test'].parent / 'images/test/red-disk_000.jpg'} 0\n{bad} 3\n")
    # A loader worker re-raises with its traceback in the message; the user sees one line.
    cfg = compose_eval(eval_overrides(ckpt_path=tiny_checkpoint, **{"data.test_manifest": manifest,
                                                                    "data.num_workers": 1}),
                       tmp_path)
    with pytest.raises(ImageLoadError) as caught:
        evaluate(cfg)
    assert user_message(caught.value) == (f"{manifest}:2: not an image (no image format "
                                          f"recognises this file) ({bad})")


def test_misclassified_rows_are_costliest_first_with_clean_paths(tmp_path):
    from foodnet.data.manifest import Sample
    from foodnet.reports.evaluation import write_misclassified

    lists = tmp_path / "lists"
    samples = [Sample(lists / ".." / "photos" / f"{i}.jpg", label, lists / "m.txt", i + 1)
               for i, label in enumerate([0, 1, 0, 1])]
    probs = torch.tensor([[0.40, 0.60],    # wrong, p(true) 0.40
                          [0.95, 0.05],    # wrong, p(true) 0.05: the costliest
                          [0.90, 0.10],    # right
                          [0.70, 0.30]])   # wrong, p(true) 0.30
    write_misclassified(tmp_path / "m.csv", samples, probs, ["a", "b"])
    with (tmp_path / "m.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    photos = tmp_path.resolve() / "photos"
    assert [(r["path"], r["true"], r["predicted"]) for r in rows] == [
        (str(photos / "1.jpg"), "b", "a"), (str(photos / "3.jpg"), "b", "a"),
        (str(photos / "0.jpg"), "a", "b")]
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [-math.log(0.05), -math.log(0.30), -math.log(0.40)], abs=1e-5)

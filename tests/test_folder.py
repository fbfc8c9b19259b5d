"""`python -m foodnet.data from-folder`: a class-per-folder tree to manifests + classes.txt."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import compose_train, tiny_overrides
from PIL import Image

from foodnet.data.__main__ import main
from foodnet.data.check import check_manifest
from foodnet.data.folder import from_folder
from foodnet.data.manifest import read_classes, read_manifest, resolve_num_classes
from foodnet.errors import ManifestError
from foodnet.train import train, with_data

COUNTS = {"sushi": 10, "Apple pie": 20, "ramen": 3}  # not in sorted order on purpose


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    for name, count in COUNTS.items():
        folder = root / name
        (folder / "more").mkdir(parents=True)
        for index in range(count):
            # Some in a nested folder, upper-case extensions and spaces in names included.
            target = folder / ("more" if index % 4 == 0 else "") / f"img {index}.JPG"
            Image.new("RGB", (8, 8), (index * 10, 0, 0)).save(target, format="JPEG")
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, not counted
    (root / "README.md").write_text("a file outside any class folder")
    (root / "empty class").mkdir()  # no images: not a class
    return root


def split_of(out: Path) -> dict[str, list[str]]:
    """The manifest lines as written (paths relative to `out`)."""
    return {split: (out / f"{split}.txt").read_text().splitlines()
            for split in ("train", "val", "test")}


def test_stratified_sorted_relative_and_skips_non_images(tree, tmp_path, capsys):
    out = tmp_path / "lists"
    code = main(["from-folder", str(tree), "--out", str(out), "--val-fraction", "0.2",
                 "--test-fraction", "0.1", "--seed", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert read_classes(out / "classes.txt") == ["Apple pie", "ramen", "sushi"]
    assert "skipped 4 non-image file(s)" in printed  # 3 notes.txt + README.md
    # Paths are written relative to the manifests' folder and resolve to the real files.
    text = (out / "train.txt").read_text()
    assert "../photos/" in text and str(tmp_path) not in text
    splits = {name: read_manifest(out / f"{name}.txt") for name in ("train", "val", "test")}
    assert all(s.path.is_file() for samples in splits.values() for s in samples)
    counts = {name: Counter(s.label for s in samples) for name, samples in splits.items()}
    # Per class (Apple pie 20, ramen 3, sushi 10): val 20%, test 10%, at least one each.
    assert counts["val"] == {0: 4, 1: 1, 2: 2}
    assert counts["test"] == {0: 2, 1: 1, 2: 1}
    assert counts["train"] == {0: 14, 1: 1, 2: 7}
    every = [s.path for samples in splits.values() for s in samples]
    assert len(every) == len(set(every)) == sum(COUNTS.values())
    # The written manifests pass the check.
    report = check_manifest(out / "train.txt", class_names=read_classes(out / "classes.txt"))
    assert report.errors == []


def test_deterministic_per_seed(tree, tmp_path):
    from_folder(tree, tmp_path / "a", seed=1)
    from_folder(tree, tmp_path / "b", seed=1)
    from_folder(tree, tmp_path / "c", seed=2)
    a, b, c = (split_of(tmp_path / name) for name in "abc")
    assert a == b  # relative paths from a/ and b/ are the same strings
    assert a["val"] != c["val"] and a["train"] != c["train"]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(c["train"] + c["val"] + c["test"])


def test_zero_test_fraction_writes_no_test_manifest(tree, tmp_path):
    result = from_folder(tree, tmp_path / "out", val_fraction=0.5, test_fraction=0.0)
    assert set(result.files) == {"train", "val", "classes"}
    assert not (tmp_path / "out" / "test.txt").exists()
    assert len(result.rows["val"]) == 10 + 5 + 2


@pytest.mark.parametrize(("args", "message"), [
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "leaves nothing to train on"),
    (["--val-fraction", "-0.1"], "--val-fraction=-0.1 must be in [0, 1)"),
])
def test_bad_fractions(tree, tmp_path, capsys, args, message):
    assert main(["from-folder", str(tree), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_root_without_class_folders(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    assert main(["from-folder", str(tmp_path / "flat"), "--out", str(tmp_path / "o")]) == 2
    assert "no class folder with images" in capsys.readouterr().err
    assert main(["from-folder", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


# `foodnet train data.folder=...`: the same split, written into the run folder, then trained on.
FOODS = {"pizza": 8, "apple pie": 8, "ramen": 8}  # classes.txt sorts them: apple pie, pizza, ramen


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for label, (name, count) in enumerate(FOODS.items()):
        (root / name).mkdir(parents=True)
        for index in range(count):
            colour = (80 * label, 10 * index, 255 - 80 * label)
            Image.new("RGB", (24, 24), colour).save(root / name / f"{index}.png")
    return root


def _folder_config(photos: Path, run_dir: Path, **extra):
    return compose_train(tiny_overrides(**{"data.folder": photos, "data.val_fraction": 0.25,
                                           "data.test_fraction": 0.25, **extra}),
                         run_dir=run_dir)


def test_train_from_a_folder_infers_the_classes_and_writes_the_split(photos, tmp_path):
    metrics = train(_folder_config(photos, tmp_path / "a"))
    data = tmp_path / "a" / "data"
    assert read_classes(data / "classes.txt") == ["apple pie", "pizza", "ramen"]
    counts = {split: Counter(s.label for s in read_manifest(data / f"{split}.txt"))
              for split in ("train", "val", "test")}
    assert counts == {"train": {0: 4, 1: 4, 2: 4}, "val": {0: 2, 1: 2, 2: 2},
                      "test": {0: 2, 1: 2, 2: 2}}
    # model.num_classes was null: the run's head has the folder's 3 classes, by name.
    hparams = torch.load(metrics["best_checkpoint"], weights_only=True)["hyper_parameters"]
    assert hparams["num_classes"] == 3
    assert hparams["class_names"] == ["apple pie", "pizza", "ramen"]
    assert metrics["test/acc"] is not None  # the folder's test split was used
    # Reproducible: the same seed writes the same split; the control, another seed, another one.
    with_data(_folder_config(photos, tmp_path / "b"))
    with_data(_folder_config(photos, tmp_path / "c", seed=7))
    assert split_of(data) == split_of(tmp_path / "b" / "data")
    assert split_of(data)["val"] != split_of(tmp_path / "c" / "data")["val"]


def test_a_num_classes_that_disagrees_with_the_folder_is_an_error(photos, tmp_path):
    with pytest.raises(ManifestError, match=r"data/classes.txt lists 3 classes but "
                                            r"model.num_classes=5; make them agree"):
        train(_folder_config(photos, tmp_path / "run", **{"model.num_classes": 5}))
    assert not (tmp_path / "run" / "checkpoints").exists()
    # The control: the number the folder has is accepted.
    cfg = _folder_config(photos, tmp_path / "ok", **{"model.num_classes": 3})
    assert with_data(cfg).model.num_classes == 3


def test_num_classes_from_the_labels_without_a_classes_file(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "train.txt").write_text("a.png 0\na.png 4\n")
    (tmp_path / "val.txt").write_text("a.png 6\n")
    manifests = [tmp_path / "train.txt", tmp_path / "val.txt", None]
    assert resolve_num_classes(None, None, manifests) == 7  # the largest label + 1
    assert resolve_num_classes(9, None, manifests) == 9  # room for classes without images yet
    with pytest.raises(ManifestError, match=r"val.txt:1: label 6 makes 7 classes but "
                                            r"model.num_classes=6"):
        resolve_num_classes(6, None, manifests)

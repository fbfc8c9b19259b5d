"""The odd-and-broken-input matrix, the bad-image policies in DataLoader workers, and training
runs through a broken image under both policies."""

import json
import logging
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import checkpoint_scores, compose_train, seed_preprocessing, tiny_overrides
from PIL import Image
from torch.utils.data import DataLoader

from foodnet.data import FoodDataModule, ManifestDataset
from foodnet.data.check import check_manifest
from foodnet.data.dataset import SkippingLoader
from foodnet.data.manifest import read_manifest
from foodnet.errors import ImageLoadError, ManifestError

NUM_CLASSES = 3


def noise(size=(24, 16)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def save(tmp, name, image, **kwargs):
    image.save(tmp / name, **kwargs)
    return f"{name} 1"


def truncated(tmp, name, fraction):
    (tmp / "whole").mkdir()
    noise().save(tmp / "whole" / name)
    data = (tmp / "whole" / name).read_bytes()
    (tmp / name).write_bytes(data[:int(len(data) * fraction)])
    return f"{name} 1"


def corrupt_png(tmp):
    noise().save(tmp / "corrupt.png")
    data = bytearray((tmp / "corrupt.png").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 32] = bytes(b ^ 0x5A for b in data[middle:middle + 32])
    (tmp / "corrupt.png").write_bytes(bytes(data))
    return "corrupt.png 1"


def palette_transparent(tmp):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] * 256)
    return save(tmp, "p.png", image, transparency=0)


def exif_rotated(tmp):
    exif = Image.Exif()
    exif[0x0112] = 8
    return save(tmp, "exif.jpg", noise(), exif=exif)


def animated(tmp):
    first, second = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    return save(tmp, "anim.gif", first, save_all=True, append_images=[second])


def multipage(tmp):
    first, second = Image.new("RGB", (8, 8), "red"), Image.new("L", (4, 4))
    return save(tmp, "pages.tiff", first, save_all=True, append_images=[second])


def bomb(side):
    def make(tmp):
        return save(tmp, f"bomb{side}.png", Image.new("L", (side, side)))
    return make


def write_bytes(name, data):
    def make(tmp):
        (tmp / name).write_bytes(data)
        return f"{name} 1"
    return make


def folder(tmp):
    (tmp / "adir.jpg").mkdir()
    return "adir.jpg 1"


def with_good(extra):
    """A good line first, then `extra` (a manifest line that needs no file)."""
    def make(tmp):
        noise().save(tmp / "ok.jpg")
        return "ok.jpg 0\n" + extra
    return make


# (case id, file maker returning the manifest text, expected: "ok" | "error" | "warning",
#  a fragment of the problem, the manifest line it is on, and, for "ok", the decoded size)
MATRIX = [
    ("rgb-jpeg", lambda t: save(t, "a.jpg", noise()), "ok", None, None, (24, 16)),
    ("grey-L", lambda t: save(t, "l.png", noise().convert("L")), "ok", None, None, (24, 16)),
    ("grey-alpha-LA", lambda t: save(t, "la.png", noise().convert("LA")), "ok", None, None,
     (24, 16)),
    ("palette-transparency", palette_transparent, "ok", None, None, (8, 8)),
    ("RGBA", lambda t: save(t, "rgba.png", noise().convert("RGBA")), "ok", None, None, (24, 16)),
    ("CMYK-jpeg", lambda t: save(t, "cmyk.jpg", noise().convert("CMYK")), "ok", None, None,
     (24, 16)),
    ("16-bit-grey", lambda t: save(t, "g16.png", Image.fromarray(
        np.full((16, 24), 40000, dtype=np.uint16))), "ok", None, None, (24, 16)),
    ("1-bit", lambda t: save(t, "one.png", noise().convert("1")), "ok", None, None, (24, 16)),
    ("animated-gif", animated, "ok", None, None, (8, 8)),
    ("multipage-tiff", multipage, "ok", None, None, (8, 8)),
    ("webp", lambda t: save(t, "w.webp", noise()), "ok", None, None, (24, 16)),
    ("exif-orientation", exif_rotated, "ok", None, None, (16, 24)),
    ("path-with-spaces", lambda t: save(t, "my photo 1.png", noise()), "ok", None, None,
     (24, 16)),
    ("tiny-1x1", lambda t: save(t, "tiny.png", Image.new("RGB", (1, 1))), "ok", None, None,
     (1, 1)),
    ("missing-file", lambda t: "nope.jpg 1", "error", "file not found", 1, None),
    ("zero-bytes", write_bytes("empty.jpg", b""), "error", "empty file (0 bytes)", 1, None),
    ("truncated-jpeg", lambda t: truncated(t, "cut.jpg", 0.5), "error", "truncated", 1, None),
    ("truncated-png", lambda t: truncated(t, "cut.png", 0.5), "error", "truncated", 1, None),
    ("text-named-jpg", write_bytes("notes.jpg", b"just some text\n"), "error", "not an image",
     1, None),
    ("png-header-then-garbage", write_bytes("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x07" * 64),
     "error", "not an image", 1, None),
    ("png-corrupt-pixel-data", corrupt_png, "error", "truncated or undecodable", 1, None),
    ("a-directory", folder, "error", "not a file", 1, None),
    ("bomb-over-2x-limit", bomb(50), "error", "decompression bomb", 1, None),
    ("bomb-between-1x-and-2x", bomb(40), "error", "decompression bomb", 1, None),
    ("label-not-integer", with_good("ok.jpg pizza"), "error", "label 'pizza' is not an integer",
     2, None),
    ("label-float", with_good("ok.jpg 1.0"), "error", "is not an integer", 2, None),
    ("negative-label", with_good("ok.jpg -1"), "error", "label -1 is negative", 2, None),
    ("label-too-big", with_good(f"ok.jpg {NUM_CLASSES}"), "error",
     f"label {NUM_CLASSES} is out of range for {NUM_CLASSES} classes", 2, None),
    ("one-field", with_good("ok.jpg"), "error", "got one field 'ok.jpg'", 2, None),
    ("empty-manifest", lambda t: "# only a comment\n\n", "error", "manifest has no samples",
     None, None),
    ("duplicate-line", with_good("ok.jpg 0"), "warning", "duplicate of line 1", 2, None),
    ("same-image-two-labels", with_good("ok.jpg 2"), "warning", "label 2 there 0", 2, None),
    ("class-without-samples", with_good(""), "warning", "2 of 3 classes have no samples", None,
     None),
]


@pytest.mark.parametrize(("case", "make", "expected", "fragment", "line", "size"), MATRIX,
                         ids=[m[0] for m in MATRIX])
def test_matrix(tmp_path, monkeypatch, case, make, expected, fragment, line, size):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the bomb cases: 1600 and 2500 px
    manifest = tmp_path / "m.txt"
    manifest.write_text(make(tmp_path) + "\n")
    # The class count only for the cases about it: a one-image manifest leaves classes empty.
    num_classes = NUM_CLASSES if case.startswith(("label", "class")) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        report = check_manifest(manifest, num_classes=num_classes, workers=2)
    errors = [str(p) for p in report.errors]
    found = [str(p) for p in report.warnings]
    if expected == "ok":
        assert report.problems == []
        (sample,) = report.samples
        assert report.sizes[sample.path] == size
        image, label = ManifestDataset(report.samples, seed_preprocessing(16).eval_transform())[0]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
        return
    problems = errors if expected == "error" else found
    assert len(problems) == 1, report.problems
    if expected == "warning":
        assert errors == []
    where = f"{manifest}:{line}: " if line else f"{manifest}: "
    assert problems[0].startswith(where) and fragment in problems[0], problems[0]
    image_problem = report.problems[0].scope == "image"
    if image_problem:  # names the file, and the dataset fails the same way
        assert problems[0].endswith(f"({report.samples[0].path})")
        with pytest.raises(ImageLoadError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            ManifestDataset(report.samples)[0]
        assert str(err.value).startswith(f"{manifest}:1: ") and fragment in str(err.value)


def test_missing_manifest(tmp_path):
    report = check_manifest(tmp_path / "gone.txt")
    assert [str(p) for p in report.errors] == [
        f"{tmp_path / 'gone.txt'}: manifest not found (check the path; relative paths are "
        "resolved against the current directory)"]


def broken_dataset(tmp_path, good=3, bad_at=(1,)):
    """good JPEGs with a truncated JPEG at each index of bad_at."""
    lines = []
    for index in range(good + len(bad_at)):
        name = f"img{index}.jpg"
        noise().save(tmp_path / name)
        if index in bad_at:
            data = (tmp_path / name).read_bytes()
            (tmp_path / name).write_bytes(data[: len(data) // 2])
        lines.append(f"{name} {index % NUM_CLASSES}")
    (tmp_path / "m.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.txt"


def test_worker_error_reraises_with_the_path(tmp_path):
    manifest = broken_dataset(tmp_path)
    dataset = ManifestDataset(read_manifest(manifest), seed_preprocessing(16).eval_transform())
    iterator = iter(DataLoader(dataset, batch_size=4, num_workers=1))
    with pytest.raises(ImageLoadError) as err:
        next(iterator)
    assert "DataLoader worker" in str(err.value)
    assert f"{manifest}:2: truncated" in str(err.value)
    assert f"({tmp_path / 'img1.jpg'})" in str(err.value)
    # torch's re-raise leaves a reference cycle; left to the garbage collector, the shutdown
    # waits 5 s for the worker. Shut it down now.
    iterator._shutdown_workers()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skipping_loader_policies(tmp_path, num_workers):
    # img1 and img2 share the second batch of two: an all-bad batch is never yielded.
    manifest = broken_dataset(tmp_path, good=3, bad_at=(2, 3))
    dataset = ManifestDataset(read_manifest(manifest), seed_preprocessing(16).eval_transform())
    skipped = {}
    loader = SkippingLoader(dataset, on_bad_image="skip", skipped=skipped, batch_size=2,
                            num_workers=num_workers)
    for _ in range(2):  # the second epoch logs nothing new
        batches = [(x.shape, y.tolist()) for x, y in loader]
        assert batches == [(torch.Size([2, 3, 16, 16]), [0, 1]), (torch.Size([1, 3, 16, 16]), [1])]
    assert list(skipped) == [f"{manifest}:3", f"{manifest}:4"]
    assert skipped[f"{manifest}:3"].path == str(tmp_path / "img2.jpg")

    strict = SkippingLoader(dataset, on_bad_image="error", batch_size=2, num_workers=num_workers)
    with pytest.raises(ImageLoadError) as err:
        list(strict)
    # Raised in the main process: the plain message, no worker traceback.
    assert str(err.value).startswith(f"{manifest}:3: truncated or undecodable image")
    assert str(err.value).endswith(f"data.on_bad_image=skip to train without it "
                                   f"({tmp_path / 'img2.jpg'})")


def test_setup_reports_every_problem_at_once_capped(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    lines = [f"missing{i}.jpg 0" for i in range(24)] + ["ok.png 0", "x.jpg seven"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("val_missing.jpg 1\n")
    dm = FoodDataModule(tmp_path / "train.txt", tmp_path / "val.txt", num_classes=2,
                        num_workers=0)
    with pytest.raises(ManifestError) as err:
        dm.setup("fit")
    text = str(err.value).splitlines()
    assert text[0].startswith("27 problems in the data")
    assert "foodnet data check" in text[0]
    assert text[1] == f"{tmp_path / 'train.txt'}:1: file not found ({tmp_path / 'missing0.jpg'})"
    assert len(text) == 1 + 20 + 1 and text[-1] == "... and 7 more"


def test_setup_skip_policy_drops_unreadable_files(tmp_path):
    manifest = broken_dataset(tmp_path, good=3, bad_at=())
    with manifest.open("a") as f:
        f.write("missing.jpg 0\n")
    dm = FoodDataModule(manifest, manifest, num_classes=NUM_CLASSES,
                        preprocessing=seed_preprocessing(16),
                        num_workers=0, on_bad_image="skip")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3
    assert list(dm.skipped) == [f"{manifest}:4"]


def test_full_validation_decodes_at_setup(tmp_path):
    manifest = broken_dataset(tmp_path)
    quick = FoodDataModule(manifest, manifest, num_classes=NUM_CLASSES, num_workers=0,
                           preprocessing=seed_preprocessing(16))
    quick.setup("fit")  # the file exists and is not empty: quick lets it through
    # The datasets themselves raise, naming the line, for anyone who iterates them directly.
    with pytest.raises(ImageLoadError, match=rf"^{manifest}:2: truncated"):
        quick.datasets["train"][1]
    full = FoodDataModule(manifest, manifest, num_classes=NUM_CLASSES, num_workers=0,
                          validate="full")
    with pytest.raises(ManifestError, match=rf"{manifest}:2: truncated or undecodable"):
        full.setup("fit")
    with pytest.raises(ValueError, match="data.validate='deep'"):
        FoodDataModule(manifest, manifest, validate="deep")
    with pytest.raises(ValueError, match="data.on_bad_image='ignore'"):
        FoodDataModule(manifest, manifest, on_bad_image="ignore")


@pytest.fixture
def broken_train(tiny_data, tmp_path):
    """tiny_data's first 12 training lines plus one truncated JPEG as line 13; 8 val lines."""
    lines = tiny_data["train"].read_text().splitlines()[:12]
    bad = tmp_path / "broken.jpg"
    data = (tiny_data["train"].parent / lines[0].rsplit(maxsplit=1)[0]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    lines = [f"{tiny_data['train'].parent / line}" for line in lines] + [f"{bad} 3"]
    manifest = tmp_path / "train.txt"
    manifest.write_text("\n".join(lines) + "\n")
    val = tmp_path / "val.txt"  # 8 images: validation time is not what is tested here
    val.write_text("\n".join(f"{tiny_data['val'].parent / line}"
                             for line in tiny_data["val"].read_text().splitlines()[:8]) + "\n")
    return {**tiny_data, "train": manifest, "val": val}, bad


def test_train_skip_policy_counts_the_broken_image(broken_train, tmp_path):
    from foodnet.train import train

    data, bad = broken_train
    cfg = compose_train(tiny_overrides(data, **{"data.on_bad_image": "skip"}),
                        run_dir=tmp_path / "run")
    metrics = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["skipped_images"] == metrics["skipped_images"] == 1
    (skipped,) = saved["skipped"]
    assert skipped.startswith(f"{data['train']}:13: truncated or undecodable image (")
    assert skipped.endswith(f") ({bad})")
    assert saved["epochs"] == 1
    assert saved["val/acc_best"] == pytest.approx(
        checkpoint_scores(saved["best_checkpoint"], data["val"])["acc"], abs=1e-6)


def test_train_error_policy_exits_naming_file_and_line(broken_train, tmp_path, monkeypatch,
                                                       capsys):
    # The real entry point (Hydra's main), in-process: a subprocess would spend most of its
    # time importing torch and Lightning again.
    from foodnet.train import main

    data, bad = broken_train
    overrides = tiny_overrides(data, **{"data.num_workers": 1})
    monkeypatch.setattr(sys, "argv", ["foodnet.train", *overrides,
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    # Hydra points the root logger at this test's captured stdout: restore it afterwards.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {data['train']}:13: truncated or undecodable image" in err
    assert err.rstrip().endswith(f"set data.on_bad_image=skip to train without it ({bad})")
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()

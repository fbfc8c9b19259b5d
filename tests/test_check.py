"""`python -m foodnet.data check`: summary, every problem as MANIFEST:LINE: message (path),
exit 0 when clean or only warnings, 1 on any error; byte-identical files across labels and
splits."""

import re
import shutil
import subprocess
import sys

from helpers import REPO, subprocess_env
from PIL import Image

from foodnet.data.__main__ import main


def make_images(tmp_path, sizes):
    for index, size in enumerate(sizes):
        Image.new("RGB", size, (index * 20, 100, 50)).save(tmp_path / f"img{index}.png")


def test_clean_manifest_summary_and_exit_0(tmp_path, capsys):
    make_images(tmp_path, [(30, 20), (64, 48), (10, 90), (40, 40)])
    (tmp_path / "m.txt").write_text("img0.png 0\nimg1.png 0\nimg2.png 0\nimg3.png 2\n")
    (tmp_path / "classes.txt").write_text("pizza\nsushi\nramen\n")
    code = main(["check", str(tmp_path / "m.txt"), "--classes", str(tmp_path / "classes.txt")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{tmp_path / 'm.txt'}: 4 images listed, 4 readable" in out
    assert "classes: 2 with samples of 3" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row for row in rows if row[0].isdigit()] == [
        ["0", "pizza", "3"], ["1", "sushi", "0"], ["2", "ramen", "1"]]
    assert "class imbalance (max/min over classes with samples): 3/1 = 3.00" in out
    assert "image size: width 10..64 px, height 20..90 px" in out
    # An empty class is a warning: reported, exit code still 0.
    assert f"{tmp_path / 'm.txt'}: warning: 1 of 3 classes have no samples: 1 (sushi)" in out
    assert "0 error(s), 1 warning(s) in 1 manifest(s)" in out


def test_every_problem_is_listed_and_exit_1(tmp_path, capsys):
    make_images(tmp_path, [(8, 8)])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "a.txt").write_text("img0.png 0\nmissing.jpg 1\nempty.jpg 1\nimg0.png 5\n"
                                    "img0.png 0\n")
    (tmp_path / "b.txt").write_text("img0.png one\n")
    code = main(["check", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--num-classes", "2",
                 "--workers", "3"])
    out = capsys.readouterr().out
    assert code == 1
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    problems = [line for line in out.splitlines() if re.match(r".*\.txt:\d+: ", line)]
    assert problems == [
        f"{a}:2: file not found ({tmp_path / 'missing.jpg'})",
        f"{a}:3: empty file (0 bytes) ({tmp_path / 'empty.jpg'})",
        f"{a}:4: label 5 is out of range for 2 classes (set model.num_classes or fix the label) "
        f"({tmp_path / 'img0.png'})",
        f"{a}:5: warning: duplicate of line 1 ({tmp_path / 'img0.png'})",
        f"{b}:1: label 'one' is not an integer (labels are class indices 0..N-1; names go in "
        f"classes.txt) ({tmp_path / 'img0.png'})",
    ]
    assert "4 error(s), 1 warning(s) in 2 manifest(s)" in out


def test_classes_and_num_classes_must_agree(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "m.txt").write_text("x.png 0\n")
    code = main(["check", str(tmp_path / "m.txt"), "--classes", str(tmp_path / "classes.txt"),
                 "--num-classes", "3"])
    assert code == 2  # a user's mistake (errors.py's exit codes)
    assert "lists 2 classes but --num-classes 3" in capsys.readouterr().err


def test_check_entry_point_exit_codes(tmp_path):
    make_images(tmp_path, [(8, 8)])
    (tmp_path / "good.txt").write_text("img0.png 0\n")
    env = subprocess_env()
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout's code, whatever the cwd
    command = [sys.executable, "-m", "foodnet.data", "check", "good.txt", "missing.txt"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert "missing.txt: manifest not found" in result.stdout
    assert "good.txt: 1 images listed, 1 readable" in result.stdout
    result = subprocess.run(command[:-1], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_byte_identical_files_across_labels_and_splits_are_reported(tmp_path, capsys):
    """Copies planted under another label, in another split, and twice in one split are each
    reported naming both MANIFEST:LINE; distinct images of the same size are not."""
    make_images(tmp_path, [(16, 16)] * 5)  # same size, different pixels: hashed, not copies
    shutil.copy(tmp_path / "img0.png", tmp_path / "relabelled.png")
    shutil.copy(tmp_path / "img1.png", tmp_path / "leaked.png")
    shutil.copy(tmp_path / "img2.png", tmp_path / "twice.png")
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("img0.png 0\nimg1.png 1\nimg2.png 1\nrelabelled.png 2\ntwice.png 1\n")
    test.write_text("img3.png 0\nleaked.png 1\nimg4.png 2\n")
    (tmp_path / "classes.txt").write_text("pizza\nsushi\nramen\n")
    code = main(["check", str(train), str(test), "--classes", str(tmp_path / "classes.txt")])
    out = capsys.readouterr().out
    assert code == 0, out  # warnings, not errors: the data still trains
    found = [line for line in out.splitlines() if re.match(r".*\.txt:\d+: ", line)]
    assert found == [
        f"{train}:4: warning: byte-identical to {train}:1 ({tmp_path / 'img0.png'}), labelled "
        f"0 (pizza) there but 2 (ramen) here: one label is wrong; fix it, and keep one copy "
        f"({tmp_path / 'relabelled.png'})",
        f"{train}:5: note: byte-identical to {train}:3 ({tmp_path / 'img2.png'}): the image "
        f"counts twice in this split ({tmp_path / 'twice.png'})",
        f"{test}:2: warning: byte-identical to {train}:2 ({tmp_path / 'img1.png'}) in another "
        "split: a leak between splits (the model is scored on an image it trained on); keep it "
        f"in one manifest ({tmp_path / 'leaked.png'})",
    ]
    assert "0 error(s), 2 warning(s), 1 note(s) in 2 manifest(s)" in out


def test_a_relabelled_leak_and_a_clean_set(tmp_path, capsys):
    """One file listed in train and, under another label, in test: both faults in one line.
    The control: the same manifests without it report no copy at all."""
    make_images(tmp_path, [(16, 16)] * 4)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("img0.png 0\nimg1.png 1\n")
    test.write_text("img2.png 0\nimg3.png 1\n")
    assert main(["check", str(train), str(test)]) == 0
    clean = capsys.readouterr().out
    assert "0 error(s), 0 warning(s) in 2 manifest(s)" in clean
    assert "identical" not in clean and "same file" not in clean

    test.write_text("img2.png 0\nimg3.png 1\nimg0.png 1\n")
    assert main(["check", str(train), str(test), "--quick"]) == 0
    out = capsys.readouterr().out
    assert (f"{test}:3: warning: the same file as {train}:1 ({tmp_path / 'img0.png'}) in another "
            "split (a leak), and labelled 0 there but 1 here: one label is wrong; fix it, and "
            f"keep one copy ({tmp_path / 'img0.png'})") in out
    assert "0 error(s), 1 warning(s) in 2 manifest(s)" in out

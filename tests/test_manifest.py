from pathlib import Path

import pytest

from foodnet.data.manifest import read_classes, read_manifest, scan_manifest
from foodnet.errors import ManifestError


def write(tmp_path: Path, text: str, name: str = "m.txt", encoding="utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_label_is_last_field_and_path_keeps_spaces(tmp_path):
    m = write(tmp_path, "my photos/pizza 1.jpg 3\n")
    (sample,) = read_manifest(m)
    assert sample.path == tmp_path / "my photos" / "pizza 1.jpg"
    assert sample.label == 3
    assert sample.where == f"{m}:1"


def test_relative_paths_resolve_against_manifest_folder_absolute_kept(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    m = write(sub, "a.jpg 0\n/abs/b.jpg 1\n")
    first, second = read_manifest(m)
    assert first.path == sub / "a.jpg"
    assert second.path == Path("/abs/b.jpg")


def test_blank_comment_crlf_and_bom_are_accepted(tmp_path):
    text = "\ufeff# header\r\n\r\na.jpg 0\r\n   \r\n# c\r\nb.jpg\t1\r\n"
    m = write(tmp_path, text)
    samples = read_manifest(m)
    assert [(s.path.name, s.label, s.line) for s in samples] == [("a.jpg", 0, 3), ("b.jpg", 1, 6)]


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("a.jpg 0\nb.jpg pizza\n", 2, "label 'pizza' is not an integer"),
    ("a.jpg 0\n\nonlyonefield\n", 3, "one field"),
    ("a.jpg -1\n", 1, "negative"),
    ("a.jpg 1.5\n", 1, "not an integer"),
])
def test_bad_line_names_file_and_line(tmp_path, text, line, fragment):
    m = write(tmp_path, text)
    with pytest.raises(ManifestError) as err:
        read_manifest(m)
    assert f"{m}:{line}:" in str(err.value)
    assert fragment in str(err.value)


def test_label_out_of_range_names_line(tmp_path):
    m = write(tmp_path, "a.jpg 0\nb.jpg 20\n")
    with pytest.raises(ManifestError, match=rf"{m}:2: label 20 is out of range for 20 classes"):
        read_manifest(m, num_classes=20)


def test_empty_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no samples"):
        read_manifest(write(tmp_path, "# nothing\n\n"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.txt")


def test_classes_file(tmp_path):
    assert read_classes(write(tmp_path, "\ufeffpizza\r\nsushi\n\n", "c.txt")) == ["pizza", "sushi"]
    with pytest.raises(ManifestError, match=r"c2.txt:2: empty class name"):
        read_classes(write(tmp_path, "pizza\n\nsushi\n", "c2.txt"))
    with pytest.raises(ManifestError, match="duplicate"):
        read_classes(write(tmp_path, "pizza\npizza\n", "c3.txt"))


def test_binary_manifest_is_named_not_a_traceback(tmp_path):
    m = tmp_path / "photo.jpg"
    m.write_bytes(b"\xff\xd8\xff\xe0 a JPEG passed as the manifest")
    with pytest.raises(ManifestError, match=rf"{m}: not a UTF-8 text file"):
        read_manifest(m)
    samples, problems = scan_manifest(m)
    assert samples == [] and [str(p) for p in problems][0].startswith(f"{m}: not a UTF-8")

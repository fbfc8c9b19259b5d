"""Manifests from a class-per-folder tree: ROOT/<class name>/**/<image>.

- Classes are the sub-folders of ROOT that hold at least one image, in sorted order: the label is
  the index in that order (written to classes.txt).
- Images are recognised by file extension (fast, no decoding: `check` does that); other files,
  hidden files, and files directly in ROOT are skipped and counted.
- The split is stratified (every class is split by the same fractions) and deterministic: the
  same tree and seed give the same manifests, and each class is shuffled by its own seed, so
  adding a class does not move the images of the others.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from foodnet.data.images import IMAGE_EXTENSIONS
from foodnet.data.manifest import parse_line, write_classes, write_manifest
from foodnet.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class FolderSplit:
    """What from_folder wrote."""

    class_names: list[str]
    rows: dict[str, list[tuple[str, int]]]  # split -> (path as written, label)
    skipped: list[Path] = field(default_factory=list)  # non-image and unwritable files
    files: dict[str, Path] = field(default_factory=dict)  # what was written, by name


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Round each fraction to a count; a class of 3+ images gets at least one of each."""
    def count(fraction: float) -> int:
        wanted = math.floor(n * fraction + 0.5)
        return max(wanted, 1) if fraction > 0 and n >= 3 else wanted
    n_val, n_test = count(val_fraction), count(test_fraction)
    while n_val + n_test >= n and n_val + n_test > 0:  # keep at least one training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _manifest_path(file: Path, out: Path) -> str:
    """The path relative to the manifest's folder when possible (POSIX: always)."""
    try:
        return os.path.relpath(file, out)
    except ValueError:  # Windows: another drive
        return str(file.resolve())


def from_folder(root: str | Path, out: str | Path, val_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0,
                names: tuple[str, str] = ("--val-fraction", "--test-fraction")) -> FolderSplit:
    """Write train.txt, val.txt, test.txt (when non-empty) and classes.txt under `out`.
    `names`: what the caller calls the two fractions, for its error messages."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected ROOT/<class name>/<images>)")
    for name, fraction in zip(names, (val_fraction, test_fraction), strict=True):
        if not 0 <= fraction < 1:
            raise ConfigError(f"{name}={fraction} must be in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"{names[0]} + {names[1]} = {val_fraction + test_fraction} "
                          "leaves nothing to train on; make the sum less than 1")
    out.mkdir(parents=True, exist_ok=True)
    out_abs = out.resolve()

    skipped: list[Path] = []
    per_class: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skipped.append(entry)  # a file outside any class folder
            continue
        if entry.name != entry.name.strip() or any(c in entry.name for c in "\n\r\t"):
            # classes.txt holds one name per line: such a name would break it and the labels.
            raise InputError(f"{entry!r}: a class folder name with a line break, tab or edge "
                             "spaces cannot be written to classes.txt; rename the folder")
        images = []
        for file in sorted(entry.rglob("*")):
            if not file.is_file() or _is_hidden(file, root):
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(file)
                continue
            written = _manifest_path(file.resolve(), out_abs)
            # A name the manifest format cannot carry (a newline, edge spaces) is skipped too.
            parsed = parse_line(f"{written} 0", out_abs / "m.txt", 1)
            if parsed is None or parsed.path.resolve() != file.resolve():
                skipped.append(file)
                continue
            images.append(written)
        if images:
            per_class[entry.name] = images
    if not per_class:
        raise InputError(f"{root}: no class folder with images (expected ROOT/<class>/<images>, "
                          f"extensions {' '.join(sorted(IMAGE_EXTENSIONS))})")

    class_names = sorted(per_class)
    if len(class_names) == 1:
        log.warning("%s: only one class folder with images (%s): a classifier needs at least two "
                    "classes to learn anything; add a folder per class", root, class_names[0])
    rows: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for label, name in enumerate(class_names):
        images = list(per_class[name])
        random.Random(f"{seed}/{name}").shuffle(images)
        n_val, n_test = _split_counts(len(images), val_fraction, test_fraction)
        rows["val"] += [(p, label) for p in sorted(images[:n_val])]
        rows["test"] += [(p, label) for p in sorted(images[n_val:n_val + n_test])]
        rows["train"] += [(p, label) for p in sorted(images[n_val + n_test:])]

    result = FolderSplit(class_names, rows, skipped)
    for split in SPLITS:
        target = out / f"{split}.txt"
        if rows[split]:
            write_manifest(target, rows[split])
            result.files[split] = target
        elif target.exists():
            target.unlink()  # a stale manifest from an earlier run would be misleading
    result.files["classes"] = out / "classes.txt"
    write_classes(result.files["classes"], class_names)
    return result

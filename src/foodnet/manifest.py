"""Parse "image_path label" manifests and classes.txt files into samples (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ManifestError(ValueError):
    """A manifest or classes file is malformed; the message names file:line and the fix."""


@dataclass(frozen=True)
class Sample:
    """One manifest line: an image path, its integer label and where it was read."""

    path: Path
    label: int
    source: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (check the path; relative paths are "
                            "resolved against the current directory)")
    # utf-8-sig drops a BOM; splitlines() accepts \n, \r\n and \r.
    return path.read_text(encoding="utf-8-sig").splitlines()


def parse_line(text: str, source: Path, line: int) -> Sample | None:
    """Parse one manifest line; None for blank and comment lines."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    # The label is the last field; everything before it is the path, spaces included.
    parts = stripped.rsplit(maxsplit=1)
    if len(parts) < 2:
        raise ManifestError(
            f"{source}:{line}: expected 'image_path label', got one field {stripped!r}")
    raw_path, raw_label = parts
    try:
        label = int(raw_label)
    except ValueError:
        raise ManifestError(
            f"{source}:{line}: label {raw_label!r} is not an integer "
            "(labels are class indices 0..N-1; names go in classes.txt)") from None
    if label < 0:
        raise ManifestError(f"{source}:{line}: label {label} is negative")
    image = Path(raw_path.strip())
    if not image.is_absolute():
        image = source.parent / image
    return Sample(path=image, label=label, source=source, line=line)


def read_manifest(path: str | Path, num_classes: int | None = None) -> list[Sample]:
    """Read every sample of a manifest; raise ManifestError on the first bad line."""
    source = Path(path)
    samples = []
    for number, text in enumerate(_read_lines(source), start=1):
        sample = parse_line(text, source, number)
        if sample is None:
            continue
        if num_classes is not None and sample.label >= num_classes:
            raise ManifestError(
                f"{sample.where}: label {sample.label} is out of range for {num_classes} classes "
                "(set model.num_classes or fix the label)")
        samples.append(sample)
    if not samples:
        raise ManifestError(f"{source}: manifest has no samples")
    return samples


def read_classes(path: str | Path) -> list[str]:
    """Read classes.txt: one class name per line, the line index is the label."""
    source = Path(path)
    if not source.is_file():
        raise ManifestError(f"{source}: classes file not found")
    names = [line.strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
    # Trailing blank lines are harmless; a blank line in the middle would shift every label.
    while names and not names[-1]:
        names.pop()
    for number, name in enumerate(names, start=1):
        if not name:
            raise ManifestError(f"{source}:{number}: empty class name (line index = label)")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ManifestError(f"{source}: duplicate class names {dupes}")
    if not names:
        raise ManifestError(f"{source}: classes file is empty")
    return names


def write_manifest(path: str | Path, rows: list[tuple[str, int]]) -> None:
    """Write (relative_path, label) rows as a manifest."""
    Path(path).write_text("".join(f"{p} {label}\n" for p, label in rows), encoding="utf-8")


def write_classes(path: str | Path, names: list[str]) -> None:
    Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")

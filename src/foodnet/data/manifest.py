"""Parse "image_path label" manifests and classes.txt files into samples (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from foodnet.errors import ConfigError, ManifestError


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


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, printed as `MANIFEST:LINE: message (path)`.

    scope: "manifest" (the whole file), "line" (syntax or label) or "image" (the file it names).
    """

    source: Path
    line: int | None
    message: str
    path: Path | str | None = None
    severity: str = "error"  # or "warning", or "note" (worth knowing, harmless to training)
    scope: str = "line"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else f"{self.source}"
        message = self.message if self.severity == "error" else f"{self.severity}: {self.message}"
        return f"{where}: {message}" + (f" ({self.path})" if self.path is not None else "")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (check the path; relative paths are "
                            "resolved against the current directory)")
    # utf-8-sig drops a BOM; splitlines() accepts \n, \r\n and \r.
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); "
                            "a manifest is text, one 'image_path label' per line") from None


def resolve_image_path(raw: str, source: Path) -> Path:
    """A path as written in a manifest or list: relative paths resolve against its folder."""
    image = Path(raw.strip())
    return image if image.is_absolute() else source.parent / image


def _parse(text: str, source: Path, line: int) -> Sample | Problem | None:
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if "\x00" in stripped:  # no file system accepts it in a path: say so instead of crashing later
        return Problem(source, line, "line contains a NUL byte (\\x00); a manifest is plain "
                       "text, one 'image_path label' per line")
    # The label is the last field; everything before it is the path, spaces included.
    parts = stripped.rsplit(maxsplit=1)
    if len(parts) < 2:
        return Problem(source, line, f"expected 'image_path label', got one field {stripped!r}")
    raw_path, raw_label = parts
    image = resolve_image_path(raw_path, source)
    try:
        label = int(raw_label)
    except ValueError:
        return Problem(source, line, f"label {raw_label!r} is not an integer "
                       "(labels are class indices 0..N-1; names go in classes.txt)", image)
    if label < 0:
        return Problem(source, line, f"label {label} is negative", image)
    return Sample(path=image, label=label, source=source, line=line)


def parse_line(text: str, source: Path, line: int) -> Sample | None:
    """Parse one manifest line; None for blank and comment lines; ManifestError if malformed."""
    result = _parse(text, source, line)
    if isinstance(result, Problem):
        raise ManifestError(str(result))
    return result


TRAIN_LABEL_FIX = "set model.num_classes or fix the label"


def _out_of_range(sample: Sample, num_classes: int, fix: str = TRAIN_LABEL_FIX) -> Problem:
    return Problem(sample.source, sample.line,
                   f"label {sample.label} is out of range for {num_classes} classes "
                   f"({fix})", sample.path)


def scan_manifest(path: str | Path, num_classes: int | None = None,
                  label_fix: str = TRAIN_LABEL_FIX) -> tuple[list[Sample], list[Problem]]:
    """Parse every line, collecting every problem instead of stopping at the first.

    Returns the well-formed samples (labels in range) and the problems: errors for bad lines,
    an empty or missing manifest; warnings for duplicate lines and images listed twice.
    """
    source = Path(path)
    try:
        lines = _read_lines(source)
    except ManifestError as err:
        return [], [Problem(source, None, str(err).removeprefix(f"{source}: "), scope="manifest")]
    samples: list[Sample] = []
    problems: list[Problem] = []
    first_seen: dict[Path, Sample] = {}
    for number, text in enumerate(lines, start=1):
        result = _parse(text, source, number)
        if result is None:
            continue
        if isinstance(result, Problem):
            problems.append(result)
            continue
        if num_classes is not None and result.label >= num_classes:
            problems.append(_out_of_range(result, num_classes, label_fix))
            continue
        earlier = first_seen.setdefault(result.path, result)
        if earlier is not result:
            message = (f"duplicate of line {earlier.line}" if earlier.label == result.label else
                       f"same image as line {earlier.line} but label {result.label} there "
                       f"{earlier.label}")
            problems.append(Problem(source, number, message, result.path, severity="warning"))
        samples.append(result)
    if not samples and not any(p.severity == "error" for p in problems):
        problems.append(Problem(source, None, "manifest has no samples", scope="manifest"))
    return samples, problems


def read_manifest(path: str | Path, num_classes: int | None = None) -> list[Sample]:
    """Read every sample of a manifest; raise ManifestError on the first bad line."""
    source = Path(path)
    samples = []
    for number, text in enumerate(_read_lines(source), start=1):
        sample = parse_line(text, source, number)
        if sample is None:
            continue
        if num_classes is not None and sample.label >= num_classes:
            raise ManifestError(str(_out_of_range(sample, num_classes)))
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


def resolve_num_classes(given: int | None, classes: str | Path | None,
                        manifests: list[str | Path]) -> int:
    """The number of classes: `given`, checked against the data, or else the data's own.

    The data's count is classes.txt's when there is one (its names are the labels), else the
    largest label in the manifests + 1. A given value must equal classes.txt's; without a
    classes file it may exceed the labels (a class with no image yet) but not fall short.
    Lines that do not parse are left to the manifest check, which reports them all.
    """
    if classes:
        count = len(read_classes(classes))
        if given is not None and given != count:
            raise ManifestError(f"{classes} lists {count} classes but model.num_classes={given}; "
                                "make them agree, or leave model.num_classes out (null): it "
                                "comes from the data")
        return count
    scans = [scan_manifest(path) for path in manifests if path]
    samples = [sample for found, _ in scans for sample in found]
    if not samples:
        unreadable = [p for _, problems in scans for p in problems if p.scope == "manifest"]
        if given is None and unreadable:  # a missing or empty manifest says so, not the count
            raise ManifestError("; ".join(map(str, unreadable)))
        if given is None:
            raise ConfigError("model.num_classes=null and no label to count the classes from; "
                              "give data.classes (classes.txt) or model.num_classes")
        return given
    top = max(samples, key=lambda sample: sample.label)
    if given is not None and given <= top.label:
        raise ManifestError(f"{top.where}: label {top.label} makes {top.label + 1} classes but "
                            f"model.num_classes={given}; make them agree, or leave "
                            "model.num_classes out (null): it comes from the data")
    return given if given is not None else top.label + 1

"""Validate manifests and their images: `python -m foodnet.data check`, and training's setup.

Two depths:
- quick: parse every line, check every image file exists and is not empty (a stat per file);
- full: also decode every image exactly as training does (in parallel threads: PIL releases the
  GIL while decoding), and measure its size.
Across the manifests checked together, find_copies reports byte-identical files.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from foodnet.data.images import load_rgb
from foodnet.data.manifest import TRAIN_LABEL_FIX, Problem, Sample, scan_manifest
from foodnet.errors import ImageLoadError, ManifestError
from foodnet.machine import num_workers

# Training setup prints at most this many problems, then a count of the rest.
MAX_REPORTED = 20


@dataclass
class Report:
    """Everything found in one manifest."""

    manifest: Path
    samples: list[Sample]
    problems: list[Problem]
    num_classes: int | None = None
    class_names: list[str] | None = None
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # decoded images: (w, h)
    decoded: bool = False

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def notes(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "note"]

    def bad_samples(self) -> set[tuple[Path, int]]:
        """(manifest, line) of the samples whose image has an error."""
        return {(p.source, p.line) for p in self.errors if p.scope == "image"}

    def good_samples(self) -> list[Sample]:
        bad = self.bad_samples()
        return [s for s in self.samples if (s.source, s.line) not in bad]

    def summary(self) -> str:
        counts = Counter(s.label for s in self.samples)
        lines = [f"{self.manifest}: {len(self.samples)} images listed"
                 + (f", {len(self.good_samples())} readable" if self.samples else "")]
        if not counts:
            return lines[0]
        labels = range(self.num_classes) if self.num_classes else sorted(counts)
        lines.append(f"  classes: {len(counts)} with samples"
                     + (f" of {self.num_classes}" if self.num_classes else ""))
        for label in labels:
            name = self.class_names[label] if self.class_names and label < len(
                self.class_names) else ""
            lines.append(f"  {label:>5} {name:<24} {counts.get(label, 0):>7}")
        most, least = max(counts.values()), min(counts.values())
        lines.append(f"  class imbalance (max/min over classes with samples): "
                     f"{most}/{least} = {most / least:.2f}")
        if self.sizes:
            widths = [w for w, _ in self.sizes.values()]
            heights = [h for _, h in self.sizes.values()]
            lines.append(f"  image size: width {min(widths)}..{max(widths)} px, "
                         f"height {min(heights)}..{max(heights)} px")
        return "\n".join(lines)


def _stat_problem(sample: Sample) -> Problem | None:
    """The quick check: the file exists, is a file, and is not empty."""
    try:
        stat = sample.path.stat()
    except FileNotFoundError:
        reason = "file not found"
    except OSError as err:
        reason = f"cannot read file ({err.strerror})"
    else:
        if not sample.path.is_file():
            reason = "not a file"
        elif stat.st_size == 0:
            reason = "empty file (0 bytes)"
        else:
            return None
    return Problem(sample.source, sample.line, reason, sample.path, scope="image")


def _decode(path: Path) -> tuple[int, int] | ImageLoadError:
    try:
        return load_rgb(path).size
    except ImageLoadError as err:
        return err


def check_manifest(path: str | Path, num_classes: int | None = None,
                   class_names: list[str] | None = None, decode: bool = True,
                   workers: int | None = None, label_fix: str = TRAIN_LABEL_FIX) -> Report:
    """Validate every line of one manifest and its images (quick when decode=False)."""
    if class_names is not None:
        num_classes = num_classes or len(class_names)
    samples, problems = scan_manifest(path, num_classes, label_fix)
    report = Report(Path(path), samples, problems, num_classes, class_names, decoded=decode)
    # Each file is checked once even when several lines list it.
    first: dict[Path, Sample] = {}
    for sample in samples:
        first.setdefault(sample.path, sample)
    failed: dict[Path, str] = {}
    for file, sample in first.items():
        problem = _stat_problem(sample)
        if problem is not None:
            failed[file] = problem.message
    if decode:
        todo = [file for file in first if file not in failed]
        with ThreadPoolExecutor(max_workers=workers or num_workers()) as pool:
            for file, result in zip(todo, pool.map(_decode, todo), strict=True):
                if isinstance(result, ImageLoadError):
                    failed[file] = result.reason
                else:
                    report.sizes[file] = result
    for sample in samples:
        if sample.path in failed:
            problems.append(Problem(sample.source, sample.line, failed[sample.path], sample.path,
                                    scope="image"))
    if num_classes:
        present = {s.label for s in samples}
        empty = [label for label in range(num_classes) if label not in present]
        if empty and samples:
            named = [f"{label} ({class_names[label]})" if class_names else str(label)
                     for label in empty]
            problems.append(Problem(report.manifest, None,
                                    f"{len(empty)} of {num_classes} classes have no samples: "
                                    + ", ".join(named[:MAX_REPORTED])
                                    + (", ..." if len(named) > MAX_REPORTED else ""),
                                    severity="warning", scope="manifest"))
    problems.sort(key=lambda p: (p.line or 0, p.severity))
    return report


def _digest(path: Path) -> bytes:
    hasher = hashlib.blake2b(digest_size=20)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.digest()


def find_copies(reports: list[Report], workers: int | None = None) -> None:
    """Byte-identical files among the readable samples of the manifests (a hash per file; only
    files whose size another shares are read), added to each copy's report: a warning when the
    copies carry different labels or sit in different manifests (splits: an image in both train
    and test inflates the test score), a note for a copy under the same label in the same split.
    Each copy names the first one, both as MANIFEST:LINE."""
    samples = [s for report in reports for s in report.good_samples()]
    by_size: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_size[sample.path.stat().st_size].append(sample)
    files = list(dict.fromkeys(s.path for group in by_size.values() if len(group) > 1
                               for s in group))
    with ThreadPoolExecutor(max_workers=workers or num_workers()) as pool:  # hashlib frees the GIL
        digests = dict(zip(files, pool.map(_digest, files), strict=True))
    copies: dict[bytes, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.path in digests:
            copies[digests[sample.path]].append(sample)
    report_of = {r.manifest: r for r in reports}
    for group in copies.values():
        first = group[0]
        for sample in group[1:]:
            if sample.source == first.source and sample.path == first.path:
                continue  # one file listed twice in one manifest: scan_manifest says so already
            problem = _copy_problem(first, sample, report_of[sample.source].class_names)
            report_of[sample.source].problems.append(problem)
    for report in reports:
        report.problems.sort(key=lambda p: (p.line or 0, p.severity))


def _copy_problem(first: Sample, copy: Sample, class_names: list[str] | None) -> Problem:
    def label(value: int) -> str:
        named = class_names is not None and value < len(class_names)
        return f"{value} ({class_names[value]})" if named else str(value)

    same = "the same file as" if copy.path == first.path else "byte-identical to"
    where = f"{same} {first.where} ({first.path})"
    split = first.source != copy.source
    if first.label != copy.label:
        leak = " in another split (a leak), and" if split else ","
        return Problem(copy.source, copy.line,
                       f"{where}{leak} labelled {label(first.label)} there but "
                       f"{label(copy.label)} here: one label is wrong; fix it, and keep one "
                       "copy", copy.path, severity="warning")
    if split:
        return Problem(copy.source, copy.line,
                       f"{where} in another split: a leak between splits (the model is scored "
                       "on an image it trained on); keep it in one manifest", copy.path,
                       severity="warning")
    return Problem(copy.source, copy.line, f"{where}: the image counts twice in this split",
                   copy.path, severity="note")


def format_problems(problems: list[Problem], limit: int | None = MAX_REPORTED) -> str:
    """One problem per line; after `limit` of them, a count of the rest."""
    shown = problems if limit is None else problems[:limit]
    lines = [str(p) for p in shown]
    if len(problems) > len(shown):
        lines.append(f"... and {len(problems) - len(shown)} more")
    return "\n".join(lines)


def raise_for_errors(reports: Iterable[Report]) -> None:
    """Raise one ManifestError that lists every error of every report (capped)."""
    reports = list(reports)
    errors = [p for r in reports for p in r.errors]
    if not errors:
        return
    if len(errors) == 1:
        raise ManifestError(str(errors[0]))
    manifests = " ".join(str(r.manifest) for r in reports if r.errors)
    counted = next((r.num_classes for r in reports if r.num_classes), None)
    option = f" --num-classes {counted}" if counted else ""
    raise ManifestError(
        f"{len(errors)} problems in the data; fix them, then run again "
        f"(the full list: foodnet data check{option} {manifests}):\n"
        + format_problems(errors))

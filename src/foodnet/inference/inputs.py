"""What predict reads: image files, folders (recursive) and .txt image lists, in input order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foodnet.data.images import IMAGE_EXTENSIONS
from foodnet.data.manifest import resolve_image_path
from foodnet.errors import InputError, OutputError


def check_output(path: Path, option: str = "--out") -> None:
    """Fail before any work when `path` cannot be written: a folder, or a place not writable
    (tried for real: a file is created and removed again)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name, e.g. {path}/out.json")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot be written ({err.strerror or err}); choose "
                          "another place") from None
    if not existed:
        path.unlink()


def _hidden(path: Path, root: Path) -> bool:
    """Dot files and anything under a dot folder (._a.jpg, .thumbnails/): skipped like
    `python -m foodnet.data from-folder` does."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_image_list(path: Path) -> list[Path]:
    """A list of images: 'image_path' or manifest 'image_path label' lines (label ignored)."""
    if not path.is_file():
        raise InputError(f"{path}: image list not found")
    images = []
    for text in path.read_text(encoding="utf-8-sig").splitlines():
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.rsplit(maxsplit=1)
        # A trailing integer is a training label; otherwise the whole line is the path.
        raw = parts[0] if len(parts) == 2 and parts[1].isdigit() else stripped
        images.append(resolve_image_path(raw, path))
    if not images:
        raise InputError(f"{path}: image list has no paths")
    return images


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, image extensions only) and .txt lists, keeping input order."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not _hidden(p, item))
            if not found:
                raise InputError(f"{item}: folder holds no images ({' '.join(IMAGE_EXTENSIONS)})")
            images += found
        elif item.suffix.lower() == ".txt":
            images += read_image_list(item)
        elif not item.exists():
            raise InputError(f"{item}: no such file or folder")
        else:
            images.append(item)  # an undecodable file is reported per image
    return images

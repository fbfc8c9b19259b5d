"""Open any image file as an 8-bit RGB PIL image, or fail with a reason that names the file.

Decompression bombs: PIL warns (DecompressionBombWarning) between 1x and 2x
`PIL.Image.MAX_IMAGE_PIXELS` and raises above 2x. foodnet treats both as an error, so that a
huge image never silently eats a worker's memory; raise `PIL.Image.MAX_IMAGE_PIXELS` (or set it
to None) in your own code if your images are genuinely that large.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foodnet.errors import ImageLoadError

# What counts as an image file when a folder is searched (from-folder, predict).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
# Transparent pixels are composited onto this background (white, like a photo print).
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB without losing range or transparency semantics."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 0..255 by the real bit depth instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _check_pixels(image: Image.Image) -> None:
    """PIL only warns between 1x and 2x its limit; make that an error too (see the docstring)."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit and pixels > limit:
        raise ImageLoadError(
            f"decompression bomb: {image.width}x{image.height} = {pixels} pixels exceeds "
            f"PIL.Image.MAX_IMAGE_PIXELS={limit} (raise it if the image is genuine)")


def _decode(file: BinaryIO, name: str | Path) -> Image.Image:
    """Decode an open image file; errors name it as `name`."""
    try:
        with Image.open(file) as image:
            _check_pixels(image)
            image.seek(0)  # animated GIF / multi-page TIFF: the first frame
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    except ImageLoadError as err:
        raise ImageLoadError(err.reason, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"decompression bomb: {err}", name) from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (no image format recognises this file)", name) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise ImageLoadError(f"truncated or undecodable image ({err})", name) from err


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file (first frame, EXIF orientation applied) as RGB.

    Raises ImageLoadError whose `reason` says what is wrong: file not found, empty file,
    not an image, truncated or corrupt, decompression bomb.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise ImageLoadError("empty file (0 bytes)", path)
            return _decode(file, path)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError("file not found", path) from None
    except (IsADirectoryError, NotADirectoryError):
        raise ImageLoadError("not a file", path) from None
    except PermissionError as err:
        raise ImageLoadError(f"cannot read file ({err.strerror})", path) from None


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """Decode an image held in memory (an upload) like load_rgb; errors name it as `name`."""
    if not data:
        raise ImageLoadError("empty file (0 bytes)", name)
    return _decode(io.BytesIO(data), name)

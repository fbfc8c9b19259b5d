"""Open any image file as an 8-bit RGB PIL image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited onto this background (white, like a photo print).
BACKGROUND = (255, 255, 255)


class ImageLoadError(OSError):
    """An image file cannot be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB without losing range or transparency semantics."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 0..255 by the real bit depth instead of clipping.
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
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file (first frame, EXIF orientation applied) as RGB."""
    try:
        with Image.open(path) as image:
            image.seek(0)  # animated GIF / multi-page TIFF: the first frame
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{path}: cannot decode image ({err})") from err

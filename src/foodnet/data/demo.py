"""A deterministic synthetic 20-class dataset (shape x colour) for the demo and the tests.

It is not food: each class is one of 5 shapes drawn in one of 4 colours on a noisy background,
so that a small network trained from scratch, offline, can learn it in minutes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from foodnet.data.manifest import write_classes, write_manifest

SHAPES = ("disk", "square", "triangle", "ring", "cross")
# Hues 120 degrees apart survive the seed's hue jitter (+-36 degrees); grey has no hue at all.
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 230), "grey": (200, 200, 200),
}
CLASS_NAMES = [f"{colour}-{shape}" for shape in SHAPES for colour in COLOURS]
SPLITS = {"train": 60, "val": 15, "test": 15}  # images per class


def _polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list[tuple]:
    return [(cx + radius * math.cos(angle + 2 * math.pi * k / sides),
             cy + radius * math.sin(angle + 2 * math.pi * k / sides)) for k in range(sides)]


def draw_sample(label: int, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Render one image of class `label`."""
    shape = SHAPES[label // len(COLOURS)]
    colour = np.array(list(COLOURS.values())[label % len(COLOURS)], dtype=np.float64)
    background = rng.uniform(20, 90, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    shade = colour * rng.uniform(0.8, 1.1) + rng.normal(0, 10, 3)
    fill = tuple(int(c) for c in np.clip(shade, 0, 255))
    radius = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "disk":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=fill,
                     width=max(3, int(radius * 0.3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, radius, 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, angle), fill=fill)
    else:  # cross: two thick bars
        width = max(3, int(radius * 0.45))
        for turn in (0.0, math.pi / 2):
            a = angle + turn
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=width)
    return image


def make_demo_dataset(out: str | Path, per_class: dict[str, int] | None = None, size: int = 96,
                      seed: int = 0) -> dict[str, Path]:
    """Write images/, train.txt, val.txt, test.txt and classes.txt under `out`; return the paths."""
    out = Path(out)
    per_class = per_class or SPLITS
    rng = np.random.default_rng(seed)
    paths = {"classes": out / "classes.txt"}
    for split, count in per_class.items():
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, name in enumerate(CLASS_NAMES):
            for index in range(count):
                relative = f"images/{split}/{name}_{index:03d}.jpg"
                draw_sample(label, rng, size).save(out / relative, quality=92)
                rows.append((relative, label))
        paths[split] = out / f"{split}.txt"
        write_manifest(paths[split], rows)
    write_classes(paths["classes"], CLASS_NAMES)
    return paths

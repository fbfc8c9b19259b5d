"""The figures foodnet draws (one confusion matrix for TensorBoard and evaluate alike, image grids).

Drawn on plain matplotlib Figures and rendered with the Agg canvas, never through pyplot, so they
neither need a display nor change the backend of a notebook that trains in-process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Above this many classes the per-cell counts would be unreadable, so only colours are drawn.
MAX_ANNOTATED_CLASSES = 30


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render a figure with the Agg canvas into an HxWx3 uint8 array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_grid_figure(images: np.ndarray | Sequence, titles: Sequence[str],
                      columns: int | None = None, cell_inches: float = 1.8) -> Figure:
    """A grid of images (HWC arrays or PIL images), each titled, e.g. with its class name."""
    count = len(titles)
    columns = columns or math.ceil(math.sqrt(count))
    rows = max(1, math.ceil(count / columns))
    title_lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    figure = Figure(figsize=(columns * cell_inches, rows * (cell_inches + 0.2 * title_lines)),
                    dpi=100)
    for index in range(rows * columns):
        ax = figure.add_subplot(rows, columns, index + 1)
        ax.axis("off")
        if index < count:
            ax.imshow(np.asarray(images[index]))
            ax.set_title(titles[index], fontsize=8)
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str],
                            title: str = "confusion matrix") -> Figure:
    """Rows are true classes, columns predictions; colour is the row fraction, text the count."""
    counts = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix)
    n = counts.shape[0]
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.35 * n, 40)  # inches: room for the names, capped for 1000-class problems
    figure = Figure(figsize=(side, side * 0.9), dpi=100)
    ax = figure.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fontsize = 8 if n <= MAX_ANNOTATED_CLASSES else 5
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= MAX_ANNOTATED_CLASSES:
        for row in range(n):
            for col in range(n):
                if counts[row, col]:
                    ax.text(col, row, str(int(counts[row, col])), ha="center", va="center",
                            fontsize=7, color="white" if fractions[row, col] > 0.5 else "black")
    figure.tight_layout()
    return figure

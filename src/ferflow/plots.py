"""Figures people would rather look at than read. Uses matplotlib's object API (no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ferflow.io import atomic_path


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")


def image_grid(rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str], column_titles: Sequence[str]) -> Figure:
    """A grid of grey images: one row per example, one column per variant."""
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    figure = Figure(figsize=(1.3 * n_cols + 0.8, 1.3 * n_rows + 0.4))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], cmap="gray", vmin=0, vmax=255)
            else:
                ax.set_axis_off()
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
        axes[r][0].set_ylabel(row_titles[r], fontsize=8)
    figure.tight_layout()
    return figure


def class_count_bars(class_names: Sequence[str], series: dict[str, Sequence[int]], title: str) -> Figure:
    """Grouped bars of per-class counts, one group per class and one bar per named series."""
    figure = Figure(figsize=(1.0 + 0.9 * len(class_names), 3.6))
    ax = figure.subplots()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(class_names))
    for k, (label, counts) in enumerate(series.items()):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, counts, width, label=label)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, class_names, rotation=20)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    figure.tight_layout()
    return figure

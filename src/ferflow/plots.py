"""Figures people would rather look at than read. Uses matplotlib's object API (no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ferflow.io import atomic_open


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """``figure`` rendered as PNG. A stage that both logs a figure to MLflow and writes it as an output renders
    it once with this (rendering is most of a small figure's cost: about 0.4 s each)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return buffer.getvalue()


def write_png(data: bytes, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> None:
    write_png(png_bytes(figure, dpi), path)


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


def training_curves(
    history: Sequence[dict[str, float]], metrics: Sequence[str] = ("loss", "accuracy", "f1_macro")
) -> Figure:
    """Train (solid) and validation (dashed) curves per epoch, one panel per metric."""
    figure = Figure(figsize=(3.4 * len(metrics), 3.2))
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    epochs = [row["epoch"] + 1 for row in history]
    for ax, metric in zip(axes, metrics, strict=True):
        for key, style, label in ((metric, "-", "train"), (f"val_{metric}", "--", "validation")):
            if history and key in history[0]:
                ax.plot(epochs, [row[key] for row in history], style, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def confusion_heatmap(matrix: np.ndarray, class_names: Sequence[str], title: str, normalised: bool) -> Figure:
    """A confusion matrix with true classes as rows and predicted classes as columns, each cell annotated."""
    size = 1.0 + 0.75 * len(class_names)
    figure = Figure(figsize=(size + 1.2, size))
    ax = figure.subplots()
    shown = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalised else max(int(matrix.max()), 1))
    figure.colorbar(shown, ax=ax, fraction=0.046)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=35, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = (1 if normalised else matrix.max()) / 2
    for (i, j), value in np.ndenumerate(matrix):
        text = f"{value:.2f}" if normalised else str(int(value))
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value > threshold else "black")
    figure.tight_layout()
    return figure


def labelled_faces(images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 8) -> Figure:
    """Faces in a grid, each captioned (e.g. "true happy / pred sad 0.81")."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(1.45 * columns, 1.65 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[k], fontsize=6.5)
    figure.suptitle(title)
    figure.tight_layout()
    return figure

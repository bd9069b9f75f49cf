"""Stage ``augment``: class balancing by augmented oversampling, written as the training arrays.

Minority classes of the train split are topped up to ``target_ratio`` x the largest class with mirrored
and slightly rotated, shifted and zoomed copies of their own images (each copy remembers its source row).
The online augmentation settings (``augment.online``) are not applied here: the train stage applies them
on the fly with Keras preprocessing layers. Also writes a preview grid of originals and augmentations, and
class-count bars before and after balancing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.data.augmentation import random_affine
from ferflow.io import CLEAN_KEYS, read_npz, write_json, write_npz
from ferflow.params import AugmentParams, OversampleParams
from ferflow.plots import class_count_bars, image_grid, save_figure


def oversample(
    images: np.ndarray, labels: np.ndarray, n_classes: int, params: OversampleParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced (images, labels, source_index); ``source_index`` is -1 for nothing, else the original row."""
    counts = np.bincount(labels, minlength=n_classes)
    target = math.ceil(params.target_ratio * counts.max())
    extra_sources = [
        rng.choice(np.flatnonzero(labels == label), size=target - count, replace=True)
        for label, count in enumerate(counts)
        if 0 < count < target
    ]
    sources = np.concatenate(extra_sources) if extra_sources else np.zeros(0, dtype=np.int64)
    augmented = random_affine(
        images[sources], rng, params.rotation_deg, params.shift, params.zoom, params.horizontal_flip
    )
    all_images = np.concatenate([images, augmented])
    all_labels = np.concatenate([labels, labels[sources]])
    source_index = np.concatenate([np.arange(len(images)), sources]).astype(np.int64)
    return all_images, all_labels, source_index


def _preview(images, labels, class_names, params: OversampleParams, count: int, rng) -> Any:
    picks = [np.flatnonzero(labels == label)[0] for label in range(len(class_names)) if (labels == label).any()]
    picks = [picks[i % len(picks)] for i in range(count)]
    rows = []
    for index in picks:
        copies = random_affine(
            np.repeat(images[index][None], 5, axis=0),
            rng, params.rotation_deg, params.shift, params.zoom, params.horizontal_flip,
        )  # fmt: skip
        rows.append([images[index], *copies])
    titles = [class_names[labels[i]] for i in picks]
    return image_grid(rows, titles, ["original"] + [f"augmented {k}" for k in range(1, 6)])


def run(
    params: AugmentParams,
    clean_arrays: Path,
    train_arrays: Path,
    summary: Path,
    preview: Path,
    class_counts_plot: Path,
) -> dict[str, Any]:
    data = read_npz(clean_arrays, CLEAN_KEYS)
    class_names = [str(name) for name in data["class_names"]]
    is_train = data["splits"] == "train"
    images, labels = data["images"][is_train], data["labels"][is_train]
    settings = params.oversample
    rng = np.random.default_rng(settings.seed)
    before = np.bincount(labels, minlength=len(class_names))
    if settings.enabled:
        images_out, labels_out, source_index = oversample(images, labels, len(class_names), settings, rng)
    else:
        images_out, labels_out, source_index = images, labels, np.arange(len(images), dtype=np.int64)
    after = np.bincount(labels_out, minlength=len(class_names))

    preview_figure = _preview(images, labels, class_names, settings, params.preview_images, rng)
    bars = class_count_bars(
        class_names,
        {"before": before.tolist(), "after balancing": after.tolist()},
        "train split class counts",
    )
    facts = {
        "oversampling": settings.enabled,
        "target_ratio": settings.target_ratio,
        "rows_before": int(len(labels)),
        "rows_after": int(len(labels_out)),
        "augmented_rows": int(len(labels_out) - len(labels)),
        "class_counts_before": dict(zip(class_names, before.tolist(), strict=True)),
        "class_counts_after": dict(zip(class_names, after.tolist(), strict=True)),
    }
    write_npz(
        train_arrays,
        images=images_out,
        labels=labels_out.astype(np.int64),
        source_index=source_index,
        is_augmented=np.arange(len(labels_out)) >= len(labels),
        class_names=np.array(class_names),
    )
    save_figure(preview_figure, preview)
    save_figure(bars, class_counts_plot)
    write_json(summary, facts)
    print(
        f"augment: {facts['rows_before']} -> {facts['rows_after']} training images "
        f"({facts['augmented_rows']} augmented copies) -> {train_arrays}"
    )
    return facts

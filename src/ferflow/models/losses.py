"""Losses and class weights for imbalanced FER data (Disgust is 1.5 % of FER-2013)."""

from __future__ import annotations

import keras
import numpy as np

from ferflow.errors import ParamsError


def make_loss(kind: str = "categorical_crossentropy", label_smoothing: float = 0.0, focal_gamma: float = 2.0,
              focal_alpha: float = 0.25) -> keras.losses.Loss:  # fmt: skip
    """Categorical cross-entropy (optionally label-smoothed) or categorical focal cross-entropy, on one-hot targets."""
    if kind == "categorical_crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if kind == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=focal_alpha, gamma=focal_gamma, label_smoothing=label_smoothing
        )
    raise ParamsError(f"train.loss: unknown loss {kind!r}; use categorical_crossentropy or focal")


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights n_samples / (n_classes * n_samples_j); absent classes get weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    total = counts.sum()
    return {j: (float(total / (n_classes * count)) if count else 0.0) for j, count in enumerate(counts)}

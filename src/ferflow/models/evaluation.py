"""Scoring predictions: test-time augmentation and the metrics every stage reports the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from ferflow.schema import IMAGE_SIZE


def tta_views(
    images: np.ndarray, flip: bool, crops: int, crop_fraction: float, mode: str = "shift"
) -> list[np.ndarray]:
    """The views of each image that test-time augmentation averages over: the image itself, its mirror
    (``flip``), and ``crops`` more views (mirrored too with ``flip``).

    ``mode="shift"`` takes 48x48 crops of the image padded by its edge pixels: the four corners (the face moved
    diagonally by half the margin ``48 * (1 - crop_fraction)``), then the centre (the image itself). The face
    keeps its scale, which is what a model trained without zoom has seen. ``mode="zoom"`` crops
    ``crop_fraction`` of the side (centre, then corners) and resizes it back to 48x48: it zooms in, which only
    helps a model trained with zoom augmentation.
    """
    from PIL import Image

    views = [images]
    side = max(1, round(IMAGE_SIZE * crop_fraction))
    margin = IMAGE_SIZE - side
    if mode == "shift":
        pad = max(1, -(-margin // 2))
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        corners = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad), (pad, pad)][:crops]
        views += [padded[:, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] for top, left in corners]
    else:
        corners = [(margin // 2, margin // 2), (0, 0), (0, margin), (margin, 0), (margin, margin)][:crops]
        for top, left in corners:
            cropped = images[:, top : top + side, left : left + side]
            views.append(np.stack([
                np.asarray(Image.fromarray(face).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for face in cropped
            ]))  # fmt: skip
    if flip:
        views += [view[:, :, ::-1] for view in views]
    return views


def predict_with_tta(model, images: np.ndarray, flip: bool = False, crops: int = 0, crop_fraction: float = 0.9,
                     mode: str = "shift", batch_size: int = 256) -> np.ndarray:  # fmt: skip
    """Class probabilities averaged over the TTA views; one batched model call per view."""
    from ferflow.models.training import predict_proba

    views = tta_views(images, flip, crops, crop_fraction, mode)
    return np.mean([predict_proba(model, view, batch_size) for view in views], axis=0)


def describe_tta(flip: bool, crops: int, crop_fraction: float, mode: str) -> str:
    """How a TTA setting reads in logs, tags and model cards ("none" when it adds no view)."""
    if not (flip or crops):
        return "none"
    parts = (["flip"] if flip else []) + ([f"{crops} {mode} crops at {crop_fraction:g}"] if crops else [])
    return " + ".join(parts)


def classification_metrics(labels: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro/weighted F1, per-class precision/recall/F1, one-vs-rest macro AUC and log loss.

    Macro and weighted F1 average over the classes that occur in ``labels`` or in the predictions (as
    scikit-learn does by default), so a class absent from a small test split does not count as a zero; AUC
    averages over the classes present in ``labels`` (it is undefined for an absent class).
    """
    n_classes = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = proba.argmax(axis=1)
    everything = list(range(n_classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    occurring = sorted(set(labels.tolist()) | set(predicted.tolist()))
    present = [c for c in everything if (labels == c).any()]
    if len(present) >= 2:
        onehot = np.eye(n_classes)[labels]
        auc = float(skm.roc_auc_score(onehot[:, present], proba[:, present], average="macro"))
    else:
        auc = float("nan")
    clipped = np.clip(proba, 1e-7, 1.0)
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "f1_macro": float(skm.f1_score(labels, predicted, labels=occurring, average="macro", zero_division=0)),
        "f1_weighted": float(skm.f1_score(labels, predicted, labels=occurring, average="weighted", zero_division=0)),
        "auc": auc,
        "loss": float(skm.log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=everything)),
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(class_names)
        },  # fmt: skip
    }


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, row-normalised) confusion matrices, true classes as rows; empty rows stay 0."""
    counts = skm.confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    totals = counts.sum(axis=1, keepdims=True)
    return counts, np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def flat_metrics(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar metrics, with per-class F1 as ``f1_<class>``: the shape MLflow and ``dvc metrics`` compare."""
    flat = {f"{prefix}{key}": value for key, value in scores.items() if key != "per_class"}
    for name, row in scores.get("per_class", {}).items():
        flat[f"{prefix}f1_{name}"] = row["f1"]
    return flat

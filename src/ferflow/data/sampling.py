"""Stratified counting and selection shared by the generator, the subsample and the split carving."""

from __future__ import annotations

import numpy as np


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights`` (Hamilton's method)."""
    weights = np.asarray(weights, dtype=float)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def stratified_pick(labels: np.ndarray, fraction: float, rng: np.random.Generator, keep_one: bool) -> np.ndarray:
    """Boolean mask picking ``fraction`` of each label's rows, the total rounded by largest remainder.

    ``keep_one=True`` guarantees every label at least one picked row (a rare class never vanishes from a
    subsample); ``keep_one=False`` guarantees every label at least one row *not* picked (carving a split
    never takes a class's last training row).
    """
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(classes))
    quotas = largest_remainder(int(round(fraction * sizes.sum())), sizes)
    quotas = np.maximum(quotas, 1) if keep_one else np.minimum(quotas, sizes - 1)
    quotas = np.clip(quotas, 0, sizes)
    mask = np.zeros(len(labels), dtype=bool)
    for index, quota in enumerate(quotas):
        rows = np.flatnonzero(inverse == index)
        mask[rng.choice(rows, size=int(quota), replace=False)] = True
    return mask

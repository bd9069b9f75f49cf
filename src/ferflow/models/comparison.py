"""Is one model better than another on the same faces, or is the difference noise?

Both tests are paired: they use the two models' predictions on the very same test faces, which removes the
variation between faces that makes two unpaired scores on a few hundred faces differ by chance.

- ``mcnemar``: the exact McNemar test on correctness (accuracy). Only the faces on which the models disagree
  about being right count: ``b`` (reference right, candidate wrong) and ``c`` (candidate right, reference
  wrong); under "no difference" ``c ~ Binomial(b + c, 1/2)``. One-sided p-value ``P(X >= c)``.
- ``bootstrap``: a paired bootstrap of the metric (accuracy or macro-F1): faces are resampled with
  replacement, both models scored on each resample, and the one-sided p-value is the share of resamples in
  which the candidate is not better (with the usual +1 correction); the percentile interval of the difference
  is reported too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    test: str
    metric: str
    faces: int
    reference: float  # the metric of each model on the faces
    candidate: float
    difference: float  # candidate - reference
    p_value: float  # one-sided: H0 "the candidate is not better"
    ci_low: float  # two-sided (1 - alpha) interval of the difference
    ci_high: float
    statistic: str  # what the test counted, in words

    def as_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def _f1_macro_by_weights(weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of ``predicted`` for each row of ``weights`` (how often each face is drawn in a resample).

    Averages over the classes that occur in the labels or the predictions of that resample, as scikit-learn
    does by default.
    """
    f1 = np.zeros((weights.shape[0], n_classes))
    present = np.zeros((weights.shape[0], n_classes), dtype=bool)
    for k in range(n_classes):
        tp = weights @ ((labels == k) & (predicted == k))
        fp = weights @ ((labels != k) & (predicted == k))
        fn = weights @ ((labels == k) & (predicted != k))
        denominator = 2 * tp + fp + fn
        present[:, k] = denominator > 0
        f1[:, k] = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _metric_by_weights(weights, labels, predicted, metric: str, n_classes: int) -> np.ndarray:
    if metric == "accuracy":
        return weights @ (labels == predicted) / weights.sum(axis=1)
    return _f1_macro_by_weights(weights, labels, predicted, n_classes)


def _resamples(rng: np.random.Generator, faces: int, samples: int, chunk: int = 500):
    """How often each face is drawn in each resample, ``chunk`` resamples at a time (bounded memory)."""
    for start in range(0, samples, chunk):
        yield rng.multinomial(faces, np.full(faces, 1 / faces), size=min(chunk, samples - start))


def compare(
    labels: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    test: str,
    metric: str,
    n_classes: int,
    alpha: float = 0.05,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare ``candidate``'s predicted labels with ``reference``'s on the same faces (``labels``)."""
    labels, reference, candidate = (np.asarray(a, dtype=np.int64) for a in (labels, reference, candidate))
    if not (labels.shape == reference.shape == candidate.shape) or labels.ndim != 1 or len(labels) == 0:
        raise ValueError("labels and both models' predictions must be the same non-empty list of faces")
    ones = np.ones((1, len(labels)))
    ref_score = float(_metric_by_weights(ones, labels, reference, metric, n_classes)[0])
    cand_score = float(_metric_by_weights(ones, labels, candidate, metric, n_classes)[0])
    difference = cand_score - ref_score
    rng = np.random.default_rng(seed)
    if test == "mcnemar":
        if metric != "accuracy":
            raise ValueError("the McNemar test compares correctness, i.e. accuracy")
        ref_right, cand_right = reference == labels, candidate == labels
        b, c = int((ref_right & ~cand_right).sum()), int((cand_right & ~ref_right).sum())
        p_value = float(stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
        # The interval comes from the same paired resampling as the bootstrap test, for a like-for-like report.
        statistic = f"exact McNemar: {c} faces only the candidate gets right, {b} only the reference"
    elif test == "bootstrap":
        statistic = f"paired bootstrap of {metric}, {bootstrap_samples} resamples"
    else:
        raise ValueError(f"unknown test {test!r}")
    deltas = np.concatenate([
        _metric_by_weights(weights, labels, candidate, metric, n_classes)
        - _metric_by_weights(weights, labels, reference, metric, n_classes)
        for weights in _resamples(rng, len(labels), bootstrap_samples)
    ])  # fmt: skip
    if test == "bootstrap":
        p_value = float((1 + np.sum(deltas <= 0)) / (bootstrap_samples + 1))
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return Comparison(test, metric, len(labels), ref_score, cand_score, difference, p_value, float(low), float(high),
                      statistic)  # fmt: skip

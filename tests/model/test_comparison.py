"""The paired tests of the promotion gate against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from ferflow.models.comparison import compare

LABELS = np.arange(300) % 5


def answers(right: np.ndarray) -> np.ndarray:
    """Right where ``right`` is true, label + 1 elsewhere."""
    return np.where(right, LABELS, (LABELS + 1) % 5)


def test_mcnemar_counts_only_the_faces_where_the_models_disagree():
    faces = np.arange(300)
    reference = answers(faces < 200)  # right on 0..199
    candidate = answers((faces >= 10) & (faces < 225))  # loses 0..9, gains 200..224
    result = compare(LABELS, reference, candidate, test="mcnemar", metric="accuracy", n_classes=5)
    assert result.difference == pytest.approx(15 / 300)
    assert result.p_value == pytest.approx(stats.binom.sf(24, 35, 0.5))  # P(X >= 25), X ~ Bin(35, 1/2)
    assert "25 faces only the candidate gets right, 10 only the reference" in result.statistic
    same = compare(LABELS, reference, reference, test="mcnemar", metric="accuracy", n_classes=5)
    assert same.p_value == 1.0 and same.difference == 0.0


def test_bootstrap_scores_match_scikit_learn_and_see_a_clear_win():
    rng = np.random.default_rng(0)
    reference = np.where(rng.random(300) < 0.5, LABELS, rng.integers(0, 5, 300))
    candidate = np.where(rng.random(300) < 0.8, LABELS, rng.integers(0, 5, 300))
    result = compare(LABELS, reference, candidate, test="bootstrap", metric="f1_macro", n_classes=5,
                     bootstrap_samples=1000)  # fmt: skip
    assert result.reference == pytest.approx(f1_score(LABELS, reference, average="macro"))
    assert result.candidate == pytest.approx(f1_score(LABELS, candidate, average="macro"))
    assert result.p_value < 0.01 and 0 < result.ci_low < result.difference < result.ci_high
    reverse = compare(LABELS, candidate, reference, test="bootstrap", metric="f1_macro", n_classes=5,
                      bootstrap_samples=1000)  # fmt: skip
    assert reverse.p_value > 0.99  # one-sided: a worse candidate is never "significantly better"


def test_mcnemar_refuses_a_metric_other_than_accuracy():
    with pytest.raises(ValueError, match="compares correctness"):
        compare(LABELS, LABELS, LABELS, test="mcnemar", metric="f1_macro", n_classes=5)

"""Scoring code against hand-computed values, and the test-time augmentation views."""

from __future__ import annotations

import numpy as np
import pytest

from ferflow.models.evaluation import classification_metrics, confusion, flat_metrics, tta_views

NAMES = ["angry", "happy", "sad", "neutral"]


def test_classification_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 1, 2])
    proba = np.array([[0.8, 0.1, 0.1, 0.0], [0.3, 0.6, 0.1, 0.0], [0.2, 0.7, 0.1, 0.0], [0.1, 0.1, 0.8, 0.0]])
    scores = classification_metrics(labels, proba, NAMES)
    assert scores["accuracy"] == 0.75
    # angry: P 1, R 1/2 -> F1 2/3; happy: P 1/2, R 1 -> 2/3; sad: 1; neutral occurs nowhere -> not averaged
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["f1_weighted"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)
    assert scores["per_class"]["angry"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert scores["per_class"]["neutral"]["support"] == 0
    expected_loss = -np.mean(np.log([0.8, 0.3, 0.7, 0.8]))
    assert scores["loss"] == pytest.approx(expected_loss, rel=1e-4)
    # one-vs-rest AUC: angry scores 0.8, 0.3 vs 0.2, 0.1 -> 1.0; happy 0.7 vs (0.1, 0.6, 0.1) -> 1.0;
    # sad 0.8 vs (0.1, 0.1, 0.1) -> 1.0
    assert scores["auc"] == pytest.approx(1.0)
    flat = flat_metrics(scores, prefix="test_")
    assert flat["test_f1_happy"] == pytest.approx(2 / 3) and "test_per_class" not in flat


def test_confusion_counts_and_row_normalised():
    counts, normalised = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert normalised[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert normalised[3].tolist() == [0.0, 0.0, 0.0, 0.0]  # an absent class stays 0, not NaN


def test_tta_views_mirror_and_crop():
    gradient = np.tile((np.arange(48) * 4).astype(np.uint8), (48, 1))  # 0 at the left edge, 188 at the right
    images = np.stack([gradient, gradient[::-1]])
    assert len(tta_views(images, flip=False, crops=0, crop_fraction=0.9)) == 1
    views = tta_views(images, flip=True, crops=5, crop_fraction=0.5, mode="zoom")
    assert len(views) == 12 and all(view.shape == (2, 48, 48) for view in views)
    np.testing.assert_array_equal(views[0], images)
    np.testing.assert_array_equal(views[6], images[:, :, ::-1])
    centre, top_left, top_right = views[1][0], views[2][0], views[3][0]
    assert abs(int(centre[:, 0].mean()) - 48) <= 4 and abs(int(centre[:, -1].mean()) - 140) <= 4  # columns 12-35
    assert top_left[:, 0].mean() <= 4 and abs(int(top_right[:, -1].mean()) - 188) <= 4


def test_shift_crops_keep_the_scale_and_move_the_face():
    """Shift crops (the default) are 48x48 windows of the edge-padded face: no resizing, only a move."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 48, 48), dtype=np.uint8)
    views = tta_views(images, flip=False, crops=5, crop_fraction=0.9)  # margin 5 px: shifts of 3 px
    assert len(views) == 6
    top_left, top_right, bottom_left, bottom_right, centre = views[1:]
    np.testing.assert_array_equal(centre, images)
    np.testing.assert_array_equal(top_left[:, 3:, 3:], images[:, :-3, :-3])  # the face moved down-right
    np.testing.assert_array_equal(bottom_right[:, :-3, :-3], images[:, 3:, 3:])
    np.testing.assert_array_equal(top_right[:, 3:, :-3], images[:, :-3, 3:])
    np.testing.assert_array_equal(bottom_left[:, :-3, 3:], images[:, 3:, :-3])

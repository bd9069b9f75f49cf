"""Behaviour of a model trained on synthetic faces: what a face reader must do whatever its accuracy.

One model with the default recipe (simple_cnn) is trained once for the module on 1,600 synthetic faces
(about 25 s on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest

from ferflow.data.synthetic import generate
from ferflow.models.training import fit, predict_proba, seed_everything
from ferflow.params import parse_params

# Session scope: the model is trained once per test worker, whatever order the tests run in.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def trained():
    images, labels, usages = generate(1600, seed=11, progress=False)
    is_train = usages == "Training"
    is_val = usages == "PublicTest"
    held_out = ~(is_train | is_val)
    params = parse_params({
        "model": {"architecture": "simple_cnn", "width": 16},
        "train": {"epochs": 20, "batch_size": 32},
    })  # fmt: skip
    seed_everything(0)
    result = fit(params, images[is_train], labels[is_train], images[is_val], labels[is_val], 7, verbose=0)
    return result.model, images[held_out], labels[held_out]


def agreement(model, images: np.ndarray, changed: np.ndarray) -> float:
    return float((predict_proba(model, images).argmax(1) == predict_proba(model, changed).argmax(1)).mean())


def test_the_model_learns_far_above_chance(trained):
    model, images, labels = trained
    accuracy = float((predict_proba(model, images).argmax(1) == labels).mean())
    assert accuracy >= 0.6, accuracy  # majority class is 25 %; logistic regression on pixels ~44 %


def test_a_mirrored_face_keeps_its_prediction(trained):
    model, images, _ = trained
    assert agreement(model, images, images[:, :, ::-1]) >= 0.9


def test_a_slightly_brighter_face_keeps_its_prediction(trained):
    model, images, _ = trained
    brighter = np.clip(images.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    assert agreement(model, images, brighter) >= 0.9


def test_predictions_are_probabilities_and_batch_independent(trained):
    model, images, _ = trained
    proba = predict_proba(model, images[:32])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([predict_proba(model, images[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(one_by_one, proba[:4], atol=1e-5)

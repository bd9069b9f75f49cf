"""Behaviour of a model trained on synthetic faces: what a face reader must do whatever its accuracy, and
how hard the synthetic default is.

One model with the default recipe (simple_cnn) is trained once for the session on 1,600 synthetic faces,
about what the default run trains on (20 epochs: about 45 s on 2 idle cores), and scored on 1,000 fresh faces.
"""

from __future__ import annotations

import numpy as np
import pytest

from ferflow.data.synthetic import generate, linear_baseline_accuracy
from ferflow.models.training import fit, predict_proba, seed_everything
from ferflow.params import parse_params

# Session scope: the model is trained once per test worker, whatever order the tests run in.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def faces():
    """1,600 synthetic faces with their usages, what the default run trains on."""
    return generate(1600, seed=11, progress=False)


@pytest.fixture(scope="session")
def trained(faces):
    images, labels, usages = faces
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


@pytest.fixture(scope="session")
def difficulty(trained, faces):
    """(CNN accuracy, logistic regression accuracy) on 1,000 fresh faces (+-1.3 points at 79 %)."""
    model = trained[0]
    images, labels, usages = faces
    test_images, test_labels, _ = generate(1000, seed=12, progress=False)
    cnn = float((predict_proba(model, test_images).argmax(1) == test_labels).mean())
    is_train, is_val = usages == "Training", usages == "PublicTest"
    linear = linear_baseline_accuracy((images[is_train], labels[is_train]), (images[is_val], labels[is_val]),
                                      (test_images, test_labels))  # fmt: skip
    return cnn, linear


def test_the_synthetic_default_is_hard_but_learnable(difficulty):
    """Issue 9's bounds: the default CNN between 70 and 85 %, logistic regression on pixels at least 25
    points below it. Measured: CNN 0.79, logistic regression 0.28 (majority class 0.25)."""
    cnn, linear = difficulty
    assert 0.70 <= cnn <= 0.85, f"default CNN scored {cnn:.3f} on fresh synthetic faces"
    assert linear <= cnn - 0.25, f"logistic regression {linear:.3f} is within 25 points of the CNN ({cnn:.3f})"


def agreement(model, images: np.ndarray, changed: np.ndarray) -> float:
    return float((predict_proba(model, images).argmax(1) == predict_proba(model, changed).argmax(1)).mean())


def test_the_model_learns_far_above_chance(trained):
    model, images, labels = trained
    accuracy = float((predict_proba(model, images).argmax(1) == labels).mean())
    assert accuracy >= 0.6, accuracy  # majority class is 25 %


def test_a_mirrored_face_keeps_its_prediction(trained):
    """Measured 0.92: the faces that change are the faint or mislabelled ones near a class boundary, and
    disgust's one-sided sneer."""
    model, images, _ = trained
    assert agreement(model, images, images[:, :, ::-1]) >= 0.85


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

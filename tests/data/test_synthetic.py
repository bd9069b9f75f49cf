"""The embedded default data: deterministic, FER-proportioned, learnable but not linearly trivial."""

import numpy as np

from ferflow.data.synthetic import generate, plan_labels
from ferflow.schema import EMOTIONS, FER2013_CLASS_COUNTS


def test_deterministic_per_seed():
    a = generate(60, seed=11, progress=False)
    b = generate(60, seed=11, progress=False)
    c = generate(60, seed=12, progress=False)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_fer_class_and_usage_proportions():
    labels, usages = plan_labels(10_000)
    assert len(labels) == 10_000
    shares = np.bincount(labels, minlength=7) / len(labels)
    expected = np.array([FER2013_CLASS_COUNTS[e] for e in EMOTIONS]) / sum(FER2013_CLASS_COUNTS.values())
    assert np.abs(shares - expected).max() < 0.002
    assert shares[EMOTIONS.index("disgust")] < 0.02  # Disgust stays rare
    assert {u: int((usages == u).sum()) for u in ("Training", "PublicTest", "PrivateTest")} == {
        "Training": 8000, "PublicTest": 1000, "PrivateTest": 1000,
    }  # fmt: skip
    small_labels, small_usages = plan_labels(100)
    for usage in ("Training", "PublicTest", "PrivateTest"):  # every class in every split, however small
        assert set(small_labels[small_usages == usage]) == set(range(7))


def test_images_vary_like_photos():
    images, labels, _ = generate(200, seed=1, progress=False)
    assert images.dtype == np.uint8 and images.shape == (len(labels), 48, 48)
    stds = images.reshape(len(images), -1).std(axis=1)
    assert stds.min() > 5  # never blank (the validate stage would quarantine blank faces)
    assert np.ptp(images.reshape(len(images), -1).mean(axis=1)) > 60  # lighting varies

import json

import numpy as np
import pytest
from PIL import Image

from ferflow.data.augmentation import random_affine
from ferflow.io import read_npz, write_npz
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from ferflow.stages import augment


def test_random_affine_identity_and_mirror():
    rng = np.random.default_rng(0)
    image = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))[None]  # brightness grows to the right
    same = random_affine(image, rng, rotation_deg=0, shift=0, zoom=0, horizontal_flip=False)
    assert np.array_equal(same, image)
    flips = [random_affine(image, rng, 0, 0, 0, horizontal_flip=True)[0] for _ in range(20)]
    mirrored = [f for f in flips if f[0, 0] > f[0, -1]]
    assert 0 < len(mirrored) < 20 and np.array_equal(mirrored[0], image[0][:, ::-1])
    moved = random_affine(np.repeat(image, 8, 0), rng, rotation_deg=10, shift=0.1, zoom=0.1, horizontal_flip=False)
    assert moved.dtype == np.uint8 and moved.shape == (8, 48, 48)
    assert not np.array_equal(moved[0], image[0])
    assert moved.min() >= 0 and abs(moved.mean() - image.mean()) < 25  # edges repeated, no black borders


@pytest.fixture
def clean_arrays(tmp_path, synthetic_arrays):
    images, labels, usages = synthetic_arrays
    splits = np.select([usages == "Training", usages == "PublicTest"], ["train", "val"], "test")
    path = tmp_path / "clean.npz"
    write_npz(path, images=images, labels=labels, splits=splits, class_names=np.array(EMOTIONS))
    return path, labels[splits == "train"]


def run_augment(tmp_path, clean, **settings):
    params = parse_params({"augment": settings}).augment
    out = tmp_path / "out"
    facts = augment.run(params, clean, out / "train.npz", out / "summary.json", out / "preview.png", out / "bars.png")
    return facts, read_npz(out / "train.npz"), out


def test_oversampling_tops_up_minorities_with_augmented_copies(tmp_path, clean_arrays):
    clean, train_labels = clean_arrays
    facts, train, out = run_augment(tmp_path, clean, oversample={"target_ratio": 0.5})
    before = np.bincount(train_labels, minlength=7)
    after = np.bincount(train["labels"], minlength=7)
    target = int(np.ceil(0.5 * before.max()))
    assert after.tolist() == np.maximum(before, target).tolist()
    assert facts["augmented_rows"] == int(after.sum() - before.sum()) == int(train["is_augmented"].sum())
    # Each augmented copy comes from a training image of its own class.
    copies = train["is_augmented"]
    assert np.array_equal(train["labels"][copies], train_labels[train["source_index"][copies]])
    assert json.loads((out / "summary.json").read_text())["class_counts_after"]["disgust"] == target
    for png in ("preview.png", "bars.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200 and image.size[1] > 150


def test_oversampling_off_keeps_training_rows(tmp_path, clean_arrays):
    clean, train_labels = clean_arrays
    facts, train, _ = run_augment(tmp_path, clean, oversample={"enabled": False})
    assert train["labels"].tolist() == train_labels.tolist() and facts["augmented_rows"] == 0

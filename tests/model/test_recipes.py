"""A tiny run of each recipe trains, with the layers, optimiser and loss the recipe names.

The CPU recipes train in this process (TensorFlow); the ``gpu`` recipe trains in a subprocess under
``KERAS_BACKEND=jax`` in mixed bfloat16, as it would on the lent GPU, and the model it saves is then loaded
and run here, under TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import yaml

from ferflow.data.synthetic import generate
from ferflow.models.layers import RandomAffine, RandomErase
from ferflow.models.training import dtype_policy, fit, predict_proba, seed_everything
from ferflow.recipes import RECIPES, resolve
from tests.e2e.dag import REPO_ROOT

pytestmark = pytest.mark.slow
TINY = ["train.epochs=1", "train.batch_size=32", "model.width=8", "model.dense_units=16"]


@pytest.fixture(scope="module")
def faces():
    images, labels, usages = generate(240, seed=9, progress=False)
    return images, labels, usages == "PublicTest"


def tiny_params(name: str, *extra: str):
    return resolve(RECIPES[name], yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), [*TINY, *extra])[1]


@pytest.mark.parametrize("name", ["cpu-fast", "cpu-full"])
def test_a_tiny_cpu_recipe_run_trains_with_the_recipes_parts(name, faces):
    images, labels, is_val = faces
    params = tiny_params(name)
    seed_everything(0)
    result = fit(params, images[~is_val], labels[~is_val], images[is_val], labels[is_val], 7, verbose=0)
    assert [row["epoch"] for row in result.history] == [0]
    assert np.isfinite(result.history[0]["loss"]) and np.isfinite(result.history[0]["val_loss"])
    augmentation = result.model.get_layer("online_augmentation")
    affine = next(layer for layer in augmentation.layers if isinstance(layer, RandomAffine))
    erasing = [layer.probability for layer in augmentation.layers if isinstance(layer, RandomErase)]
    online = params.augment.online
    assert (affine.rotation_deg, affine.zoom, affine.width_shift) == (
        online.rotation_deg,
        online.zoom,
        online.width_shift,
    )
    assert erasing == ([online.erasing] if online.erasing else [])  # neither CPU recipe erases
    network = result.model.get_layer("vgg")
    crop = params.model.input_crop
    assert crop == RECIPES[name].values.get("model.input_crop", 0)
    if crop:  # the network sits behind the crop layer, built at the crop's size
        assert network.get_layer("face_crop").size == crop
        network = network.layers[-1]
    assert network.input_shape[1:3] == ((crop, crop) if crop else (48, 48))
    first_stage = [layer.name for layer in network.layers if layer.name.startswith("stage1") and "conv" in layer.name]
    assert len(first_stage) == params.model.first_stage_convs == RECIPES[name].values.get(
        "model.first_stage_convs", 2)  # fmt: skip
    assert network.get_layer("stage2_dropout").rate == params.model.block_dropout
    assert network.get_layer("stage2a_conv").dtype_policy.name == dtype_policy("auto")  # train.precision: auto
    assert isinstance(result.model.optimizer, keras.optimizers.AdamW)
    assert result.model.loss.get_config()["label_smoothing"] == pytest.approx(params.train.label_smoothing)
    proba = predict_proba(result.model, images[is_val])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_augmentation_is_inactive_at_inference_and_active_in_training(faces):
    images = faces[0][:8].astype(np.float32)[..., None] / 255.0
    affine, erase = RandomAffine(10, 0.1, 0.1, 0.1, seed=1), RandomErase(1.0, seed=1)
    np.testing.assert_array_equal(np.asarray(affine(images, training=False)), images)
    np.testing.assert_array_equal(np.asarray(erase(images, training=False)), images)
    moved = np.abs(np.asarray(affine(images, training=True)) - images).mean(axis=(1, 2, 3))
    erased = (np.asarray(erase(images, training=True)) != images).mean(axis=(1, 2, 3))
    assert (moved > 0.005).all()
    assert ((erased > 0.015) & (erased < 0.3)).all(), erased  # one patch of 2-25 % of the face each


GPU_RECIPE_UNDER_JAX = textwrap.dedent("""
    import json, sys
    import keras, numpy as np, yaml
    from ferflow.data.synthetic import generate
    from ferflow.errors import ParamsError
    from ferflow.models.training import data_parallel_count, data_parallel_devices, fit, predict_proba
    from ferflow.recipes import RECIPES, resolve
    raw = yaml.safe_load(open(sys.argv[1]))
    tiny = {tiny!r}
    params = resolve(RECIPES["gpu"], raw, [*tiny, "model.depth=2", "train.precision=mixed_bfloat16"])[1]
    try:
        data_parallel_devices(params.train.model_copy(update={{"batch_size": 33}}))
        refused = ""
    except ParamsError as error:
        refused = str(error)
    images, labels, usages = generate(241, seed=9, progress=False)  # odd counts: uneven last batches
    val = usages == "PublicTest"
    result = fit(params, images[~val], labels[~val], images[val], labels[val], 7, verbose=0)
    result.model.save(sys.argv[2])
    print(json.dumps({{"backend": keras.backend.backend(), "policy": keras.mixed_precision.dtype_policy().name,
                       "architecture": params.model.architecture, "epochs": len(result.history),
                       "devices": data_parallel_count(), "refused": refused,
                       "proba": predict_proba(result.model, images[val][:15]).tolist()}}))
""")


@pytest.mark.backends  # with the other backend tests (`make test-backends`, run by CI), for the test command's time
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install ferflow[jax])")
def test_the_gpu_recipe_trains_data_parallel_under_jax_in_mixed_precision_and_loads_under_tensorflow(tmp_path):
    """Two virtual JAX devices stand in for two GPUs: train.distribution auto splits each batch over both."""
    model_file = tmp_path / "gpu-tiny.keras"
    script = GPU_RECIPE_UNDER_JAX.format(tiny=TINY)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT / "params.yaml"), str(model_file)],
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["backend"] == "jax" and facts["policy"] == "mixed_bfloat16"
    assert facts["architecture"] == "vgg" and facts["epochs"] == 1 and facts["devices"] == 2
    assert facts["refused"].startswith("train.batch_size: 33 does not split evenly over the 2 devices")
    jax_proba = np.asarray(facts["proba"])
    assert jax_proba.shape == (15, 7)  # an odd count: padded for the two devices, the padding dropped
    images, _, usages = generate(241, seed=9, progress=False)
    loaded = keras.models.load_model(model_file)
    tf_proba = predict_proba(loaded, images[usages == "PublicTest"][:15])
    np.testing.assert_allclose(tf_proba.sum(axis=1), 1.0, atol=1e-3)
    assert (tf_proba.argmax(1) == jax_proba.argmax(1)).mean() >= 0.9  # same labels, bfloat16 round-off aside

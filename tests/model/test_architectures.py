"""Every architecture builds, trains a step on tiny input, saves and loads; weights come only from local files."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ferflow.errors import ParamsError
from ferflow.models.architectures import ARCHITECTURES, ModelSpec, build_model, check_weights
from ferflow.models.losses import class_weights, make_loss
from ferflow.params import parse_params


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


# Compiling a training step of the two largest backbones costs over a minute of CPU each; their forward pass
# and serialisation are checked below, and the transfer path's training through mobilenet_v2 and vgg16.
HEAVY = {"resnet50", "densenet169"}


@pytest.mark.parametrize("architecture", [name for name in ARCHITECTURES if name not in HEAVY])
def test_builds_and_trains_one_step(architecture):
    model = build_model(ModelSpec(architecture=architecture, n_classes=4))
    x = np.random.default_rng(0).random((4, 48, 48, 1), dtype=np.float32)
    y = keras.utils.to_categorical([0, 1, 2, 3], 4)
    # Eagerly: one step needs no graph, and tracing mobilenet_v2's graph alone costs 20 s on 2 cores.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(), run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    probabilities = model.predict(x, verbose=0)
    assert probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("architecture", sorted(HEAVY))
def test_heavy_backbones_build_and_predict(architecture):
    model = build_model(ModelSpec(architecture=architecture, n_classes=4))
    x = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
    probabilities = model.predict(x, verbose=0)
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.count_params() > 10_000_000


def test_mini_xception_is_about_60k_parameters():
    assert 50_000 < build_model(ModelSpec(architecture="mini_xception")).count_params() < 70_000


def test_vgg_width_and_depth_are_configurable():
    small = build_model(ModelSpec(architecture="vgg", width=16, depth=2))
    large = build_model(ModelSpec(architecture="vgg", width=32, depth=4))
    assert small.count_params() < large.count_params()
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in large.layers) == 4


def test_transfer_model_round_trips_through_a_keras_file_in_safe_mode(tmp_path):
    model = build_model(ModelSpec(architecture="mobilenet_v2", n_classes=3))
    x = np.random.default_rng(1).random((2, 48, 48, 1), dtype=np.float32)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_backbone_weights_load_from_a_local_file(tmp_path):
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(48, 48, 3), pooling="avg")
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    backbone.save_weights(path)
    model = build_model(ModelSpec(architecture="mobilenet_v2", weights=str(path)))
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for expected, actual in zip(backbone.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_weights_file_problems_are_caught_before_building(tmp_path):
    with pytest.raises(ParamsError, match=r"model.weights: file .*missing.h5 does not exist"):
        check_weights(ModelSpec(architecture="resnet50", weights=str(tmp_path / "missing.h5")))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ParamsError, match="not a Keras weights file"):
        check_weights(ModelSpec(architecture="resnet50", weights=str(tmp_path / "w.txt")))
    with pytest.raises(ParamsError, match="transfer backbones only"):
        check_weights(ModelSpec(architecture="simple_cnn", weights=str(tmp_path / "w.txt")))
    with pytest.raises(ParamsError, match="unknown architecture 'resnet18'"):
        build_model(ModelSpec(architecture="resnet18"))


def test_losses_match_hand_computed_values():
    y_true = np.array([[0.0, 1.0, 0.0]])
    y_pred = np.array([[0.2, 0.7, 0.1]])
    ce = -np.log(0.7)
    assert float(make_loss()(y_true, y_pred)) == pytest.approx(ce, rel=1e-5)
    smoothed = np.array([0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3])
    expected = -(smoothed * np.log([0.2, 0.7, 0.1])).sum()
    assert float(make_loss(label_smoothing=0.1)(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    # Focal: alpha * (1 - p_t)^gamma * CE = 0.25 * 0.3^2 * -ln 0.7
    assert float(make_loss("focal", focal_gamma=2.0, focal_alpha=0.25)(y_true, y_pred)) == pytest.approx(
        0.25 * 0.09 * ce, rel=1e-4
    )
    with pytest.raises(ParamsError, match="unknown loss 'hinge'"):
        make_loss("hinge")


def test_class_weights_are_balanced():
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), n_classes=4)
    assert weights == pytest.approx({0: 6 / (4 * 3), 1: 6 / (4 * 1), 2: 6 / (4 * 2), 3: 0.0})


def test_face_crop_is_a_random_crop_per_face_in_training_and_the_centre_at_inference():
    from ferflow.models.layers import FaceCrop

    faces = np.arange(16 * 48 * 48, dtype=np.float32).reshape(16, 48, 48, 1)
    crop = FaceCrop(40, seed=3)
    cropped = np.asarray(crop(faces, training=True))
    assert cropped.shape == (16, 40, 40, 1)
    offsets = set()
    for index, view in enumerate(cropped[..., 0]):
        first = int(view[0, 0]) - index * 48 * 48
        top, left = divmod(first, 48)
        assert 0 <= top <= 8 and 0 <= left <= 8
        np.testing.assert_array_equal(view, faces[index, top : top + 40, left : left + 40, 0])  # a whole crop
        offsets.add((top, left))
    assert len(offsets) > 4  # each face draws its own place (keras.layers.RandomCrop moves a batch alike)
    np.testing.assert_array_equal(np.asarray(crop(faces, training=False)), faces[:, 4:44, 4:44])


@pytest.mark.parametrize("architecture", ["simple_cnn", "vgg", "mini_xception"])
def test_a_cropping_model_takes_whole_faces_and_round_trips(tmp_path, architecture):
    from ferflow.models import serving
    from ferflow.models.layers import load_keras_model

    model = build_model(ModelSpec(architecture=architecture, n_classes=3, width=8, depth=2, input_crop=40))
    assert model.input_shape == (None, 48, 48, 1) and model.get_layer("face_crop").size == 40
    model.compile(optimizer="adam", loss=make_loss(), run_eagerly=True)
    faces = np.random.default_rng(0).random((6, 48, 48, 1), dtype=np.float32)
    model.fit(faces, keras.utils.to_categorical([0, 1, 2, 0, 1, 2], 3), epochs=1, verbose=0)
    # At inference only the centre counts: the 4-pixel border changes nothing.
    bordered = faces.copy()
    bordered[:, :4] = bordered[:, -4:] = bordered[:, :, :4] = bordered[:, :, -4:] = 1.0
    np.testing.assert_allclose(model.predict(bordered, verbose=0), model.predict(faces, verbose=0), atol=1e-6)
    served = serving.servable(model, ["a", "b", "c"])
    served.save(tmp_path / "model.keras")
    raw = (faces * 255).round()
    np.testing.assert_allclose(load_keras_model(tmp_path / "model.keras").predict(raw, verbose=0),
                               served.predict(raw, verbose=0), atol=1e-6)  # fmt: skip


def test_input_crop_must_leave_a_face():
    from ferflow.params import parse_params

    assert parse_params({"model": {"input_crop": 40}}).model.input_crop == 40
    with pytest.raises(ParamsError, match="model.input_crop: .*0 \\(no crop\\) or 24-47 pixels"):
        parse_params({"model": {"input_crop": 12}})
    with pytest.raises(ParamsError, match="model.input_crop"):
        parse_params({"model": {"input_crop": 48}})


def test_vgg_first_stage_convs_and_block_dropout_shape_the_network():
    def conv_names(model):
        return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    two = build_model(ModelSpec(architecture="vgg", n_classes=7, width=8, depth=3))
    one = build_model(ModelSpec(architecture="vgg", n_classes=7, width=8, depth=3, first_stage_convs=1,
                                block_dropout=0.0))  # fmt: skip
    assert conv_names(two) == ["stage1a_conv", "stage1b_conv", "stage2a_conv", "stage2b_conv", "stage3a_conv",
                               "stage3b_conv"]  # fmt: skip
    assert conv_names(one) == ["stage1a_conv", "stage2a_conv", "stage2b_conv", "stage3a_conv", "stage3b_conv"]
    assert two.count_params() - one.count_params() == 8 * 8 * 9 + 4 * 8  # one 8->8 conv and its batch norm
    assert {two.get_layer(f"stage{s}_dropout").rate for s in (1, 2, 3)} == {0.15}  # params' default
    assert one.get_layer("stage1_dropout").rate == 0.0 and one.get_layer("head_dropout").rate == 0.3


def test_vgg_stage_convs_deepens_the_later_stages_only():
    three = build_model(ModelSpec(architecture="vgg", n_classes=7, width=8, depth=3, stage_convs=3))
    names = [layer.name for layer in three.layers if isinstance(layer, keras.layers.Conv2D)]
    assert names == ["stage1a_conv", "stage1b_conv", "stage2a_conv", "stage2b_conv", "stage2c_conv",
                     "stage3a_conv", "stage3b_conv", "stage3c_conv"]  # fmt: skip
    two = build_model(ModelSpec(architecture="vgg", n_classes=7, width=8, depth=3))
    # one more 16->16 and one more 32->32 conv, each with its batch norm
    assert three.count_params() - two.count_params() == (16 * 16 * 9 + 4 * 16) + (32 * 32 * 9 + 4 * 32)
    assert parse_params({"model": {"stage_convs": 4}}).model.stage_convs == 4
    with pytest.raises(ParamsError, match="model.stage_convs"):
        parse_params({"model": {"stage_convs": 5}})

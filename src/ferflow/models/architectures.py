"""Architectures by name. Every model takes (48, 48, 1) grey images scaled to [0, 1] and ends in softmax.

- ``simple_cnn``: three conv blocks and a dense layer, the common FER baseline.
- ``vgg``: stages of [3x3 conv, batch norm, ReLU] x 2 with doubling width (``first_stage_convs`` 1 makes
  the 48x48 stage one conv; ``stage_convs`` 3 or 4 deepens the later stages as VGG16 and VGG19 do), then
  global average pooling and a batch-normed dense layer (the recipe behind the 72-73 % FER-2013 results,
  without the 25M-parameter dense head).
- ``mini_xception``: depthwise-separable residual blocks (Arriaga et al. 2017), about 60k parameters.
- ``vgg16``, ``resnet50``, ``mobilenet_v2``, ``densenet169``: ``keras.applications`` backbones on the grey
  image repeated to three channels; ``weights`` is ``None`` or a local weights file (nothing is downloaded).

With ``input_crop`` the model still takes the whole 48x48 face, and its first layer (``FaceCrop``) hands the
network a crop: random in training, the centre at inference; the network is built at the crop's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from ferflow.errors import ParamsError
from ferflow.models.layers import FaceCrop, GreyToImageNet
from ferflow.params import ModelParams
from ferflow.schema import IMAGE_SIZE

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
_PARAMS_DEFAULTS = ModelParams()  # declared once, in ferflow.params


@dataclass(frozen=True)
class ModelSpec:
    """What an architecture builder needs; the train stage fills it from params, whose defaults it shares."""

    architecture: str = _PARAMS_DEFAULTS.architecture
    n_classes: int = 7
    width: int = _PARAMS_DEFAULTS.width
    depth: int = _PARAMS_DEFAULTS.depth
    dropout: float = _PARAMS_DEFAULTS.dropout
    block_dropout: float = _PARAMS_DEFAULTS.block_dropout
    first_stage_convs: int = _PARAMS_DEFAULTS.first_stage_convs
    stage_convs: int = _PARAMS_DEFAULTS.stage_convs
    dense_units: int = _PARAMS_DEFAULTS.dense_units
    weights: str | None = None  # transfer backbones only: None or a local weights file
    transfer_input_size: int = _PARAMS_DEFAULTS.transfer_input_size
    freeze_backbone: bool = _PARAMS_DEFAULTS.freeze_backbone
    input_crop: int = _PARAMS_DEFAULTS.input_crop  # 0: the whole face


def _network_input(spec: ModelSpec):
    """The input of the network proper: the 48x48 face, or the crop ``FaceCrop`` hands it."""
    side = spec.input_crop or IMAGE_SIZE
    return keras.Input((side, side, 1), name="image")


def _conv_bn_relu(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # A faster-moving average than Keras' 0.99: small data sets have few steps per epoch.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _dense_bn_relu(x, units: int):
    # Batch norm before the dense ReLU: without it simple_cnn's 2,304 -> 128 layer's units die within the
    # first epoch on the default synthetic data and the model predicts the majority class (25 % accuracy).
    x = layers.Dense(units, use_bias=False, name="dense")(x)
    x = layers.BatchNormalization(momentum=0.9, name="dense_bn")(x)
    return layers.Activation("relu", name="dense_relu")(x)


def _head(x, spec: ModelSpec):
    x = layers.Dropout(spec.dropout, name="head_dropout")(x)
    return layers.Dense(spec.n_classes, activation="softmax", name="predictions", dtype="float32")(x)


def simple_cnn(spec: ModelSpec) -> keras.Model:
    inputs = _network_input(spec)
    x = inputs
    for block in range(3):
        x = _conv_bn_relu(x, spec.width * 2**block, f"block{block + 1}")
        x = layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)
        x = layers.Dropout(spec.block_dropout, name=f"block{block + 1}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense_bn_relu(x, spec.dense_units)
    return keras.Model(inputs, _head(x, spec), name="simple_cnn")


def vgg(spec: ModelSpec) -> keras.Model:
    inputs = _network_input(spec)
    x = inputs
    for stage in range(spec.depth):
        filters = spec.width * 2**stage
        convs = spec.first_stage_convs if stage == 0 else spec.stage_convs
        for conv in "abcd"[:convs]:
            x = _conv_bn_relu(x, filters, f"stage{stage + 1}{conv}")
        x = layers.MaxPooling2D(name=f"stage{stage + 1}_pool")(x)
        x = layers.Dropout(spec.block_dropout, name=f"stage{stage + 1}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = _dense_bn_relu(x, spec.dense_units)
    return keras.Model(inputs, _head(x, spec), name="vgg")


def mini_xception(spec: ModelSpec) -> keras.Model:
    regulariser = keras.regularizers.L2(0.01)
    inputs = _network_input(spec)
    x = inputs
    for i in range(2):
        x = layers.Conv2D(8, 3, use_bias=False, kernel_regularizer=regulariser, name=f"stem{i}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"stem{i}_bn")(x)
        x = layers.Activation("relu", name=f"stem{i}_relu")(x)
    for filters in (16, 32, 64, 128):
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False, name=f"res{filters}_skip")(x)
        residual = layers.BatchNormalization(momentum=0.9, name=f"res{filters}_skip_bn")(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"res{filters}_sep1")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"res{filters}_bn1")(x)
        x = layers.Activation("relu", name=f"res{filters}_relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"res{filters}_sep2")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"res{filters}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"res{filters}_pool")(x)
        x = layers.Add(name=f"res{filters}_add")([x, residual])
    x = layers.Conv2D(spec.n_classes, 3, padding="same", name="class_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Activation("softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="mini_xception")


# name -> (keras.applications constructor name, preprocessing mode)
TRANSFER_BACKBONES: dict[str, tuple[str, str]] = {
    "vgg16": ("VGG16", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    "densenet169": ("DenseNet169", "torch"),
}


def check_weights(spec: ModelSpec) -> Path | None:
    """The weights file of a transfer backbone, checked before any training starts."""
    if spec.weights in (None, "", "none"):
        return None
    if spec.architecture not in TRANSFER_BACKBONES:
        raise ParamsError(f"model.weights applies to transfer backbones only, not to {spec.architecture!r}")
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise ParamsError(
            f"model.weights: file {path} does not exist; give the path of a local weights file for "
            f"{spec.architecture} without its top (ImageNet weights cannot be downloaded here), or none"
        )
    if not path.name.endswith(".h5"):
        raise ParamsError(f"model.weights: {path} is not a Keras weights file (.h5 or .weights.h5)")
    return path


def transfer(spec: ModelSpec) -> keras.Model:
    constructor, mode = TRANSFER_BACKBONES[spec.architecture]
    weights = check_weights(spec)
    size = spec.transfer_input_size
    backbone = getattr(keras.applications, constructor)(
        include_top=False, weights=str(weights) if weights else None, input_shape=(size, size, 3), pooling="avg"
    )
    backbone.trainable = not spec.freeze_backbone
    inputs = _network_input(spec)
    x = inputs
    if size != (spec.input_crop or IMAGE_SIZE):
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    x = GreyToImageNet(mode, name="to_imagenet")(x)
    x = backbone(x, training=False if spec.freeze_backbone else None)
    return keras.Model(inputs, _head(x, spec), name=spec.architecture)


BUILDERS = {"simple_cnn": simple_cnn, "vgg": vgg, "mini_xception": mini_xception}
ARCHITECTURES: tuple[str, ...] = (*BUILDERS, *TRANSFER_BACKBONES)


def build_model(spec: ModelSpec) -> keras.Model:
    """The architecture named by ``spec.architecture``, uncompiled; it takes 48x48 faces either way."""
    if spec.architecture in BUILDERS:
        network = BUILDERS[spec.architecture](spec)
    elif spec.architecture in TRANSFER_BACKBONES:
        network = transfer(spec)
    else:
        raise ParamsError(
            f"model.architecture: unknown architecture {spec.architecture!r}; known: {list(ARCHITECTURES)}"
        )
    if not spec.input_crop:
        return network
    faces = keras.Input(INPUT_SHAPE, name="face")
    return keras.Model(faces, network(FaceCrop(spec.input_crop, name="face_crop")(faces)), name=network.name)

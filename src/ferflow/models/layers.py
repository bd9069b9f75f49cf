"""Small serialisable layers (no ``Lambda``: ``.keras`` files load with ``safe_mode=True``)."""

from __future__ import annotations

from pathlib import Path

import keras
from keras import ops

# Per-channel statistics the ImageNet backbones were trained with (RGB order).
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="ferflow")
class GreyToImageNet(keras.layers.Layer):
    """[0, 1] grey (H, W, 1) -> the 3-channel input an ImageNet backbone expects.

    ``mode`` follows ``keras.applications``: ``caffe`` (VGG16, ResNet50: BGR, 0-255, mean-centred),
    ``tf`` (MobileNetV2: -1..1) and ``torch`` (DenseNet: standardised by ImageNet mean and std).
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, inputs):
        rgb = ops.concatenate([inputs, inputs, inputs], axis=-1)
        if self.mode == "tf":
            return rgb * 2.0 - 1.0
        if self.mode == "torch":
            return (rgb - ops.convert_to_tensor(_IMAGENET_MEAN_RGB)) / ops.convert_to_tensor(_IMAGENET_STD_RGB)
        return rgb[..., ::-1] * 255.0 - ops.convert_to_tensor(_CAFFE_MEAN_BGR)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="ferflow")
class RandomAffine(keras.layers.Layer):
    """Random rotation, zoom and shift of each training face in one resampling, edges repeated.

    Keras' RandomRotation, RandomZoom and RandomTranslation resample the batch once each; composing the three
    into one affine map per face costs a third of that and blurs once instead of three times. Inactive at
    inference. ``rotation_deg`` is the largest angle either way, ``zoom`` the largest relative scale change
    (0.1: 0.9-1.1), ``shift`` the largest move as a fraction of the side.
    """

    def __init__(self, rotation_deg: float = 0.0, zoom: float = 0.0, width_shift: float = 0.0,
                 height_shift: float = 0.0, seed: int | None = None, **kwargs) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.rotation_deg, self.zoom = float(rotation_deg), float(zoom)
        self.width_shift, self.height_shift = float(width_shift), float(height_shift)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, n, limit: float):
        return keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)

    def call(self, images, training=None):
        if not training:
            return images
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        angle = self._uniform(n, self.rotation_deg * 3.141592653589793 / 180.0)
        scale = 1.0 + self._uniform(n, self.zoom)
        dx = self._uniform(n, self.width_shift) * width
        dy = self._uniform(n, self.height_shift) * height
        # Output pixel -> input pixel: undo the shift, then the zoom and rotation about the centre.
        cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        zeros = ops.zeros_like(cos)
        transform = ops.stack([
            cos, -sin, cx - cos * (cx + dx) + sin * (cy + dy),
            sin, cos, cy - sin * (cx + dx) - cos * (cy + dy),
            zeros, zeros,
        ], axis=1)  # fmt: skip
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rotation_deg": self.rotation_deg, "zoom": self.zoom,
                "width_shift": self.width_shift, "height_shift": self.height_shift, "seed": self.seed}  # fmt: skip


@keras.saving.register_keras_serializable(package="ferflow")
class RandomErase(keras.layers.Layer):
    """Random erasing (Zhong et al. 2017) as a few whole-batch tensor ops: with probability ``probability``
    a face gets one rectangle of 2-25 % of its area (aspect 0.3-3.3) filled with one random grey level.

    Written here because ``keras.layers.RandomErasing`` costs about three times the rest of the augmentation
    on CPU. Inactive at inference; expects images in [0, 1].
    """

    def __init__(self, probability: float = 0.5, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.probability = float(probability)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.probability <= 0:
            return images
        n = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(low: float, high: float):
            return keras.random.uniform((n, 1, 1, 1), low, high, seed=self.seed_generator)

        area = uniform(0.02, 0.25) * height * width
        aspect = ops.exp(uniform(-1.2, 1.2))  # log-uniform 0.3-3.3
        box_h = ops.minimum(ops.sqrt(area * aspect), height)
        box_w = ops.minimum(ops.sqrt(area / aspect), width)
        top = uniform(0.0, 1.0) * (height - box_h)
        left = uniform(0.0, 1.0) * (width - box_w)
        rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1, 1))
        cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width, 1))
        inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
        erase = inside & (uniform(0.0, 1.0) < self.probability)
        return ops.where(erase, ops.cast(uniform(0.0, 1.0), images.dtype), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "probability": self.probability, "seed": self.seed}


@keras.saving.register_keras_serializable(package="ferflow")
class FaceCrop(keras.layers.Layer):
    """The network's view of a face: a ``size`` x ``size`` crop, at a random place of each face in training
    and the centre at inference (the 40x40 crops of the FER-2013 recipes; averaging shifted views at test time
    is ``evaluate.tta``). Part of the model, not of the online augmentation, so the saved model crops too.

    ``keras.layers.RandomCrop`` draws one offset per batch, so every face of a batch moves alike; here each
    face draws its own, with two gathers instead of a resampling.
    """

    def __init__(self, size: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        height, width, side = images.shape[1], images.shape[2], self.size
        if not training:
            top, left = (height - side) // 2, (width - side) // 2
            return images[:, top : top + side, left : left + side, :]
        n, channels = ops.shape(images)[0], images.shape[3]

        def offsets(limit: int):
            drawn = keras.random.uniform((n,), 0.0, float(limit - side + 1), seed=self.seed_generator)
            return ops.minimum(ops.cast(drawn, "int32"), limit - side)[:, None] + ops.arange(side, dtype="int32")

        rows = ops.broadcast_to(offsets(height)[:, :, None, None], (n, side, width, channels))
        images = ops.take_along_axis(images, rows, axis=1)
        cols = ops.broadcast_to(offsets(width)[:, None, :, None], (n, side, side, channels))
        return ops.take_along_axis(images, cols, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, *input_shape[3:])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="ferflow")
class ClassNames(keras.layers.Layer):
    """The identity on the probabilities, carrying the class names in the saved model, in output order."""

    def __init__(self, class_names, **kwargs) -> None:
        super().__init__(**kwargs)
        self.class_names = [str(name) for name in class_names]

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "class_names": self.class_names}


def load_keras_model(path: str | Path) -> keras.Model:
    """A saved ferflow model (``.keras``). Every loader goes through here: importing this module is what
    registers ferflow's layers with Keras (a saved model holds its augmentation layers), and safe mode
    refuses ``Lambda`` layers and other arbitrary code. A file that is not such a model is a DataError naming it."""
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, OSError, zip errors... for a bad file
        # imported here: a logged model ships this module without ferflow.errors (models/serving.py)
        from ferflow.errors import DataError, first_line

        raise DataError(f"{path}: not a model ferflow can load safely: {first_line(exc)}") from None

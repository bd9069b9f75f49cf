"""Small serialisable layers (no ``Lambda``: ``.keras`` files load with ``safe_mode=True``)."""

from __future__ import annotations

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

"""Offline image augmentation with numpy/scipy: mirroring and small random affine changes."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def random_affine(
    images: np.ndarray,
    rng: np.random.Generator,
    rotation_deg: float,
    shift: float,
    zoom: float,
    horizontal_flip: bool,
) -> np.ndarray:
    """Return a randomly mirrored, rotated, shifted and zoomed copy of each (H, W) uint8 image.

    Rotation is uniform in +-``rotation_deg``, shift in +-``shift`` of the side, zoom in 1 +- ``zoom``;
    borders repeat the edge pixels (as Keras' ``fill_mode='nearest'``) so no black corners appear.
    """
    images = np.asarray(images)
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    for i, image in enumerate(images):
        if horizontal_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        angle = math.radians(rng.uniform(-rotation_deg, rotation_deg))
        scale = rng.uniform(1 - zoom, 1 + zoom)
        offset_px = rng.uniform(-shift, shift, size=2) * np.array([height, width])
        # affine_transform maps output coordinates to input ones: inverse rotation and zoom about the centre.
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        matrix = np.array([[cos, -sin], [sin, cos]])
        offset = centre - matrix @ (centre + offset_px)
        warped = ndimage.affine_transform(image.astype(np.float32), matrix, offset=offset, order=1, mode="nearest")
        out[i] = np.clip(np.rint(warped), 0, 255).astype(images.dtype)
    return out

"""ferflow: an experiment-tracked MLOps pipeline for facial expression recognition."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def predict(*args: Any, **kwargs: Any) -> Any:
    """Expressions of the faces in images, folders or URLs: see :func:`ferflow.inference.predict`.

    Imported on first use, so that ``import ferflow`` stays light (no TensorFlow, OpenCV or MLflow).
    """
    from ferflow.inference import predict as _predict

    return _predict(*args, **kwargs)

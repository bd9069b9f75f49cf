"""The model as it is saved, registered and served: self-contained.

A trained network takes faces scaled to [0, 1] and says nothing about its classes. What the train stage saves
(``models/model.keras``) and logs to MLflow wraps it: raw grey levels in (0-255, uint8 or float, shape
(N, 48, 48, 1)), the scaling inside, and a last identity layer that carries the class names in output order.
So ``keras.models.load_model(...).predict(raw_faces)`` is right without knowing any unwritten contract.

In MLflow the model is a ``python_function`` model (:class:`FerModel`) holding that ``.keras`` file: it takes
raw uint8 faces of shape (N, 48, 48), as FER-2013 stores them, and returns a table with the predicted ``label``
and one probability column per class, which ``mlflow models serve`` answers over HTTP. Its signature, input example and
requirements (Keras, the backend it was trained on, NumPy, pandas) are logged with it, and the ferflow code it
needs travels inside it, so a fresh environment can load it.

Models saved before this contract (no scaling layer, no names) still load: ferflow scales their input itself
and names their classes as before (the FER-2013 order for 7 outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferflow.schema import EMOTIONS, IMAGE_SIZE

SCALING_LAYER = "scale_to_unit"
CLASS_NAMES_LAYER = "class_names"
KERAS_FILE = "model.keras"


def servable(trained, class_names: list[str]):
    """``trained`` behind the raw-face scaling, with ``class_names`` inside. Weights are shared, not copied."""
    import keras

    from ferflow.models.layers import ClassNames

    if trained.output_shape[-1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for a model of {trained.output_shape[-1]} outputs")
    trained = _without_online_augmentation(trained)
    faces = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1), name="faces")
    unit = keras.layers.Rescaling(1 / 255, name=SCALING_LAYER)(faces)
    named = ClassNames(class_names, name=CLASS_NAMES_LAYER)(trained(unit))
    return keras.Model(faces, named, name="ferflow_fer")


def _without_online_augmentation(trained):
    """The network behind the training-time augmentation layers (``with_online_augmentation``): they do nothing
    at inference, but their random ops would still be traced into exports (ONNX has no such op)."""
    import keras

    names = [layer.name for layer in trained.layers]
    if "online_augmentation" not in names:
        return trained
    (network,) = [layer for layer in trained.layers if isinstance(layer, keras.Model)
                  and layer.name != "online_augmentation"]  # fmt: skip
    return network


def _layers_within(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model: the network inside the servable wrapper
            yield from _layers_within(layer)


def compute_precisions(model) -> list[str]:
    """The dtype policies ``model``'s layers compute in, e.g. ``['float32', 'mixed_bfloat16']`` for a model
    trained in mixed precision (its output layer stays float32)."""
    return sorted({layer.dtype_policy.name for layer in _layers_within(model)})


def _with_float32_policies(config):
    if isinstance(config, list):
        return [_with_float32_policies(item) for item in config]
    if not isinstance(config, dict):
        return config
    inner = config.get("config")
    if str(config.get("class_name", "")).endswith("DTypePolicy") and isinstance(inner, dict) and inner.get("name") in (
            "mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):  # fmt: skip
        return {**config, "config": {**inner, "name": "float32"}}
    return {key: _with_float32_policies(value) for key, value in config.items()}


def in_float32(model):
    """``model`` computing in float32 with the same weights (``model`` itself if it already does).

    A model trained in mixed precision is saved with its layers' bfloat16/float16 policies. Converters cannot
    express that: tf2onnx writes nodes that mix float16 and bfloat16 types, which onnxruntime refuses to load.
    Under mixed precision the variables are float32, so the weights carry over exactly; only the arithmetic
    changes (answers differ in the third decimal, as bfloat16 arithmetic would)."""
    import keras

    if compute_precisions(model) == ["float32"]:
        return model
    copy = keras.saving.deserialize_keras_object(_with_float32_policies(keras.saving.serialize_keras_object(model)))
    copy.set_weights(model.get_weights())
    copy(np.zeros((1, *model.inputs[0].shape[1:]), np.float32))  # Keras' exporters take called models only
    return copy


def takes_raw_faces(model) -> bool:
    return any(layer.name == SCALING_LAYER for layer in model.layers)


def face_model_problem(model, class_count: int | None = None) -> str | None:
    """What makes ``model`` unfit for 48x48 grey faces (and ``class_count`` classes, if given), or None. A model
    of the wrong shape would fail on the faces or, worse, answer with labels that mean something else."""
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else ()
    if shape[:2] != (IMAGE_SIZE, IMAGE_SIZE) or shape[2:] not in {(), (1,)}:
        return (f"the model takes inputs of shape {shape}, not 48x48 grey faces ({IMAGE_SIZE}, {IMAGE_SIZE}) or "
                f"({IMAGE_SIZE}, {IMAGE_SIZE}, 1)")  # fmt: skip
    outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if class_count is not None and outputs != class_count:
        return f"the model gives {outputs} class scores, but the data has {class_count} classes"
    return None


def class_names_of(model) -> list[str]:
    """The names the model carries; for a model saved before it carried them, the rule ferflow always used:
    the FER-2013 order for 7 outputs, ``class_<i>`` otherwise."""
    for layer in model.layers:
        if layer.name == CLASS_NAMES_LAYER:
            return list(layer.class_names)
    outputs = model.output_shape[-1]
    return list(EMOTIONS) if outputs == len(EMOTIONS) else [f"class_{i}" for i in range(outputs)]


def as_face_batch(faces: Any) -> np.ndarray:
    """(N, 48, 48), (N, 48, 48, 1), (N, 2304) or a DataFrame of 2,304 pixel columns -> float32 (N, 48, 48, 1)."""
    array = np.asarray(faces.to_numpy() if hasattr(faces, "to_numpy") else faces, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == IMAGE_SIZE * IMAGE_SIZE:
        array = array.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if array.ndim == 3:
        array = array[..., None]
    if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise ValueError(f"expected faces of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}[, 1]), got {tuple(array.shape)}")
    return array


def label_table(probabilities: np.ndarray, class_names: list[str]):
    """One row per face: ``label`` then one probability column per class."""
    import pandas as pd

    table = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=class_names)
    table.insert(0, "label", [class_names[i] for i in table.to_numpy().argmax(axis=1)])
    return table


def _python_model_class():
    import mlflow

    class FerModel(mlflow.pyfunc.PythonModel):
        """Raw 48x48 grey faces in; a table of ``label`` and per-class probabilities out."""

        def load_context(self, context) -> None:
            from ferflow.models.layers import load_keras_model

            self.keras_model = load_keras_model(context.artifacts["keras_model"])
            self.class_names = class_names_of(self.keras_model)

        def predict(self, context, model_input, params=None):
            faces = as_face_batch(model_input)
            if not takes_raw_faces(self.keras_model):
                faces = faces / 255.0
            return label_table(self.keras_model.predict(faces, batch_size=256, verbose=0), self.class_names)

    return FerModel


def requirements() -> list[str]:
    """What a fresh environment needs to load and run the logged model: pinned to what trained it."""
    from importlib.metadata import PackageNotFoundError, version

    import keras

    backend = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[keras.backend.backend()]
    pins = []
    for package in ("mlflow", "keras", backend, "numpy", "pandas", "pydantic", "pyyaml", "h5py"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


# The modules a logged model needs at load time (its layers, this wrapper, the schema they read). Only these
# travel with it: MLflow drops modules named like a shipped file's stem from sys.modules on load, and the
# whole package has an ``io.py`` and an ``http.py``.
_SERVING_MODULES = ("__init__.py", "schema.py", "models/__init__.py", "models/layers.py", "models/serving.py")


def _serving_code(folder: Path) -> Path:
    import shutil

    import ferflow

    package = Path(ferflow.__file__).parent
    for name in _SERVING_MODULES:
        (folder / "ferflow" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / name, folder / "ferflow" / name)
    return folder / "ferflow"


def log_model(model, example_faces: np.ndarray) -> Any:
    """Log the servable ``model`` as the active run's MLflow model (``name="model"``): the ``.keras`` file
    behind :class:`FerModel`, with its signature, an input example of raw faces and its requirements."""
    import tempfile

    import keras
    import mlflow
    from mlflow.models import infer_signature

    examples = np.asarray(example_faces, dtype=np.uint8)  # (N, 48, 48): faces as FER-2013 stores them
    outputs = label_table(model.predict(as_face_batch(examples), verbose=0), class_names_of(model))
    with tempfile.TemporaryDirectory() as folder:
        keras_file = Path(folder) / KERAS_FILE
        model.save(keras_file)
        code = _serving_code(Path(folder) / "code")
        interactive = keras.config.is_interactive_logging_enabled()
        keras.config.disable_interactive_logging()  # MLflow's check of the example would draw progress bars
        try:
            return mlflow.pyfunc.log_model(
                name="model", python_model=_python_model_class()(), artifacts={"keras_model": str(keras_file)},
                signature=infer_signature(examples, outputs), input_example=examples,
                pip_requirements=requirements(), code_paths=[str(code)],
            )  # fmt: skip
        finally:
            if interactive:
                keras.config.enable_interactive_logging()


def load_logged_model(uri: str):
    """The Keras model behind an MLflow model URI: a :class:`FerModel`, or a Keras-flavour model logged before."""
    import mlflow

    from ferflow.models import layers  # noqa: F401 - registers ferflow's layers for Keras' loader

    if "keras" in mlflow.models.get_model_info(uri).flavors:
        return mlflow.keras.load_model(uri)
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().keras_model

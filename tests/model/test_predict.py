"""Inference on photos: face detection, FER-style crops, folders, URLs, bad files, batching, annotation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import ferflow
from ferflow.cli import main
from ferflow.data.synthetic import generate
from ferflow.inference import LoadedModel, load_model, predict
from ferflow.models.training import fit
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from tests.conftest import PASTE_AT, PASTE_SIZE, detectable_face, photo_with


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small model trained for a few epochs on synthetic faces, saved as .keras."""
    images, labels, usages = generate(400, seed=5, progress=False)
    params = parse_params({"model": {"width": 8, "dense_units": 16}, "train": {"epochs": 3, "batch_size": 64}})
    is_val = usages == "PublicTest"
    result = fit(params, images[~is_val], labels[~is_val], images[is_val], labels[is_val], 7, verbose=0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    result.model.save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    face = detectable_face()
    Image.fromarray(photo_with(face)).convert("RGB").save(root / "a_photo.jpg", quality=95)
    Image.fromarray(face).save(root / "b_fer_crop.png")
    Image.fromarray(np.full((200, 260), 128, np.uint8)).save(root / "c_no_face.png")
    (root / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    return root


def overlap(box, x0, y0, side) -> float:
    x, y, w, h = box
    ix = max(0, min(x + w, x0 + side) - max(x, x0))
    iy = max(0, min(y + h, y0 + side) - max(y, y0))
    return ix * iy / (w * h + side * side - ix * iy)


def test_predict_on_a_folder_finds_faces_and_reports_each_file(folder, model_file):
    results = ferflow.predict(folder, model=str(model_file))
    assert [os.path.basename(r.source) for r in results] == ["a_photo.jpg", "b_fer_crop.png", "c_no_face.png",
                                                             "d_corrupt.jpg"]  # fmt: skip
    photo, crop, blank, corrupt = results
    assert photo.error is None and photo.detected and len(photo.faces) == 1
    face = photo.faces[0]
    assert overlap(face.box, *PASTE_AT, PASTE_SIZE) > 0.4
    assert face.expression in EMOTIONS and set(face.probabilities) == set(EMOTIONS)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert face.confidence == pytest.approx(max(face.probabilities.values()), abs=1e-4)
    assert not crop.detected and crop.faces[0].box == (0, 0, 48, 48)  # FER-style crop: no detection needed
    assert blank.error is None and blank.faces == []
    assert corrupt.faces == [] and "not a readable image" in corrupt.error


def test_cli_prints_a_table_or_json_and_fails_only_for_the_bad_file(folder, model_file, capsys, tmp_path):
    code = main(["predict", str(folder), "--model", str(model_file), "--annotate", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "c_no_face.png: no face found" in out and "b_fer_crop.png: face 1 (whole image)" in out
    assert "a_photo.jpg: face 1 (box x=" in out
    assert "d_corrupt.jpg: not a readable image" in err and err.count("error") == 1
    assert "d_corrupt.jpg" not in out  # each error is printed once, for people, on stderr
    annotated = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert annotated == ["001_a_photo.annotated.png", "002_b_fer_crop.annotated.png", "003_c_no_face.annotated.png"]
    assert Image.open(tmp_path / "out" / "001_a_photo.annotated.png").size == (420, 300)

    code = main(["predict", str(folder / "a_photo.jpg"), "--model", str(model_file), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 1 and rows[0]["faces"][0]["expression"] in EMOTIONS


def test_predict_a_model_file_outside_any_repository(folder, model_file, capsys, tmp_path, monkeypatch):
    """No dvc.yaml and no params.yaml around: --model FILE is all predict needs; --json keeps the error in the
    JSON and says on stderr only how many inputs failed."""
    monkeypatch.chdir(tmp_path)
    code = main(["predict", str(folder / "b_fer_crop.png"), str(folder / "d_corrupt.jpg"), "--model",
                 str(model_file), "--no-detect", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert code == 1 and rows[0]["faces"][0]["expression"] in EMOTIONS and "not a readable image" in rows[1]["error"]
    assert err.strip() == "ferflow predict: 1 of 2 inputs failed (see their \"error\" in the JSON)"


def test_the_annotated_picture_keeps_the_photos_colours(model_file, tmp_path):
    photo = np.stack([photo_with(detectable_face())] * 3, axis=-1)
    photo[..., 2] //= 3  # a warm tint: red and blue differ everywhere but in black
    Image.fromarray(photo).save(tmp_path / "colour.png")
    (result,) = predict([tmp_path / "colour.png"], model=str(model_file), annotate_dir=tmp_path / "out")
    annotated = np.asarray(Image.open(result.annotated).convert("RGB")).astype(int)
    assert annotated.shape[:2] == photo.shape[:2]
    assert (annotated[..., 0] - annotated[..., 2]).mean() > 20  # not grey


def test_predict_from_a_url_and_a_broken_url(folder, model_file, http_server):
    (http_server.root / "photo.jpg").write_bytes((folder / "a_photo.jpg").read_bytes())
    good, missing = predict([http_server.url("photo.jpg"), http_server.url("nothing.jpg")], model=str(model_file))
    assert good.error is None and len(good.faces) == 1
    assert "cannot download" in missing.error and "404" in missing.error


def test_bad_files_among_good_ones_are_named_and_the_good_ones_still_answered(folder, model_file, tmp_path,
                                                                              http_server, capsys):  # fmt: skip
    """Truncated, empty, huge, bomb-sized and non-image files, and a URL answering with a web page, each get
    their own error line; the good faces between them are still classified, and the exit code says 1."""
    from tests.data.test_sources import _png_declaring

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = (folder / "b_fer_crop.png").read_bytes()
    (mixed / "a_good.png").write_bytes(good)
    (mixed / "b_truncated.png").write_bytes(good[: len(good) // 2])
    (mixed / "c_empty.jpg").write_bytes(b"")
    with open(mixed / "d_huge.png", "wb") as handle:  # 65 MiB (sparse): over the limit, refused unread
        handle.truncate(65 << 20)
    (mixed / "e_bomb.png").write_bytes(_png_declaring(10_000, 10_000))  # 100 MP declared in 70 bytes
    (mixed / "f_text.jpg").write_text("not a picture")
    (mixed / "g_good.png").write_bytes(good)
    page = http_server.url("html/photo.jpg")

    code = main(["predict", str(mixed), page, "--model", str(model_file), "--no-detect"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "a_good.png: face 1 (whole image)" in out and "g_good.png: face 1 (whole image)" in out
    expected = {"b_truncated.png": "not a readable image", "c_empty.jpg": "not a readable image",
                "d_huge.png": "the file is 65 MiB, over the 64 MiB limit for a photo",
                "e_bomb.png": "it declares 10000x10000 pixels, over the 50,000,000-pixel limit",
                "f_text.jpg": "not a readable image",
                page: "the server sent a web page (text/html; charset=utf-8), not an image"}  # fmt: skip
    for name, message in expected.items():
        (line,) = [line for line in err.splitlines() if name in line]
        assert message in line, line
    assert len(err.strip().splitlines()) == len(expected)  # one line each, no traceback


def test_no_detect_takes_each_image_as_one_face(folder, model_file):
    (result,) = predict(folder / "c_no_face.png", model=str(model_file), detect=False)
    assert not result.detected and len(result.faces) == 1 and result.faces[0].box == (0, 0, 260, 200)


def test_faces_are_classified_in_batches_not_one_call_per_face(folder, model_file, tmp_path):
    class CountingModel:
        """The real model, counting how often it is called."""

        def __init__(self, model):
            self.model, self.calls = model, 0
            self.layers = model.layers

        def predict(self, *args, **kwargs):
            self.calls += 1
            return self.model.predict(*args, **kwargs)

    loaded = load_model(str(model_file), "unused", tmp_path)
    counting = CountingModel(loaded.model)
    crops = [folder / "b_fer_crop.png"] * 5 + [folder / "a_photo.jpg"]
    results = predict(crops, loaded=LoadedModel(counting, loaded.class_names, loaded.uri))
    assert sum(len(r.faces) for r in results) == 6 and counting.calls == 1
    predict(crops, loaded=LoadedModel(counting, loaded.class_names, loaded.uri), batch_size=4)
    assert counting.calls == 3  # 6 faces in batches of 4: two more calls


def test_a_missing_model_is_a_clear_error(tmp_path, capsys, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["predict", str(folder), "--model", "nowhere.keras"]) == 2
    assert "--model nowhere.keras: no such file" in capsys.readouterr().err
    assert main(["predict", str(folder)]) == 2
    assert "models:/ferflow-fer@champion not found" in capsys.readouterr().err


def test_model_files_that_are_unsafe_not_models_or_of_the_wrong_shape_are_refused(tmp_path, folder, capsys,
                                                                                  monkeypatch):  # fmt: skip
    """A Lambda layer carries Python code: a safe loader refuses the file without running it. The marker file
    proves it: loading the same file unsafely runs the payload and writes it."""
    import keras

    marker = tmp_path / "payload-ran"
    payload = f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]"
    evil = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Lambda(eval(payload)),
                             keras.layers.Flatten(), keras.layers.Dense(7, activation="softmax")])  # fmt: skip
    marker.unlink(missing_ok=True)  # building the model ran it once
    evil.save(tmp_path / "evil.keras")
    marker.unlink(missing_ok=True)
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("this is not a model")
    wrong_shape = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(7)])
    wrong_shape.save(tmp_path / "rgb64.keras")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    refusals = {"evil.keras": "not a model ferflow can load safely: ",
                "notes.keras": "not a model ferflow can load safely: ",
                "rgb64.keras": "the model takes inputs of shape (64, 64, 3), not 48x48 grey faces"}  # fmt: skip
    for name, message in refusals.items():
        assert main(["predict", str(folder), "--model", name]) == 2, name
        err = capsys.readouterr().err
        assert f"--model {name}: {message}" in err and err.count("error:") == 1 and "Traceback" not in err, err
    assert not marker.exists()  # refused, never executed
    keras.models.load_model(tmp_path / "evil.keras", safe_mode=False)
    assert marker.read_text() == "ran"  # the payload was live: loaded unsafely, it ran

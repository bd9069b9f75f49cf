"""The train, evaluate and cv stages on tiny synthetic arrays, tracked in a real sqlite MLflow store."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from ferflow import tracking
from ferflow.errors import DataError, ParamsError
from ferflow.io import read_json, read_npz, write_npz
from ferflow.models.layers import load_keras_model
from ferflow.models.serving import class_names_of, load_logged_model
from ferflow.models.training import (
    BestWeights,
    TimeBudget,
    _TrainingBatches,
    averaging_momentum,
    compiled_model,
    cosine_learning_rate,
    fit,
    keep_averaged_if_better,
    one_hot,
    planned_epochs,
    predict_proba,
    seed_everything,
    to_inputs,
)
from ferflow.params import parse_params
from ferflow.run_info import RunInfo
from ferflow.schema import EMOTIONS
from ferflow.stages import cv, evaluate, train
from tests.conftest import PIXEL_STEP, pixel_reader, write_stage_arrays

TINY = {
    "model": {"architecture": "vgg", "width": 4, "depth": 2, "dense_units": 8},
    "train": {"epochs": 2, "batch_size": 64},
    "cv": {"folds": 2},
}


def tiny_params(**sections) -> dict:
    merged = {key: dict(value) for key, value in TINY.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value}
    return merged


@pytest.fixture
def repo(tmp_path, synthetic_arrays, monkeypatch):
    """A folder with dvc.yaml, the clean arrays and the (not oversampled) training arrays of 400 faces."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_stage_arrays(tmp_path, *synthetic_arrays)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    yield tmp_path
    mlflow.set_tracking_uri(None)


def run_train(repo: Path, **sections) -> RunInfo:
    return train.run(
        parse_params(tiny_params(**sections)), repo / "train.npz", repo / "clean.npz", repo / "models" / "model.keras",
        repo / "history.json", repo / "run.json", repo / "curves.png", repo / "checkpoints", repo,
    )  # fmt: skip


def client_for(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def test_train_logs_params_step_metrics_tags_and_the_model(repo):
    facts = run_train(repo)
    client = client_for(repo)
    run = client.get_run(facts.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.architecture"] == "vgg"
    assert "evaluate.tta.flip" not in run.data.params  # evaluation settings belong to the evaluate stage
    tags = run.data.tags
    assert (
        tags["ferflow.device_type"] in {"CPU", "GPU"} and tags["ferflow.keras_backend"]
        and tags["mlflow.source.git.commit"]
    )
    assert tags["ferflow.dtype_policy"] == "float32"  # train.precision's default; auto is tested in test_tracking
    assert len(tags["ferflow.data_hash"]) == 16 and tags["ferflow.classes"] == ",".join(EMOTIONS)
    for key in ("loss", "accuracy", "precision", "recall", "auc", "f1_macro"):
        for metric in (key, f"val_{key}"):
            assert [m.step for m in client.get_metric_history(facts.run_id, metric)] == [0, 1], metric
    assert len(client.get_metric_history(facts.run_id, "learning_rate")) == 2
    history = json.loads((repo / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert facts.best_epoch in (0, 1) and facts.epochs_run == 2 and not facts.resumed
    assert (repo / "models" / "model.keras").stat().st_size > 10_000
    assert (repo / "curves.png").stat().st_size > 5_000
    assert not (repo / "checkpoints").exists()
    artifacts = {item.path for item in client.list_artifacts(facts.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png"}
    assert mlflow.get_tracking_uri() != tracking.tracking_uri(repo)  # training left MLflow's global URI alone
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {("train", "training"), ("val", "validation")}  # the run page's "Datasets"
    # The logged model is self-contained: raw uint8 faces in; labels and per-class probabilities out.
    faces = read_npz(repo / "clean.npz")["images"][:5]
    with tracking.store(repo):
        info = mlflow.models.get_model_info(facts.model_uri)
        table = mlflow.pyfunc.load_model(facts.model_uri).predict(faces)
        network = load_logged_model(facts.model_uri)
        requirements = Path(mlflow.pyfunc.get_model_dependencies(facts.model_uri)).read_text()
    spec = info.signature.inputs.to_dict()[0]
    assert spec["tensor-spec"] == {"dtype": "uint8", "shape": (-1, 48, 48)}
    assert [column["name"] for column in info.signature.outputs.to_dict()] == ["label", *EMOTIONS]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    assert "keras==" in requirements and "tensorflow==" in requirements and "numpy==" in requirements
    saved = load_keras_model(repo / "models" / "model.keras")
    proba = predict_proba(saved, faces)
    assert list(table.columns) == ["label", *EMOTIONS] and list(table["label"]) == [
        EMOTIONS[i] for i in proba.argmax(axis=1)]  # fmt: skip
    assert np.allclose(table[list(EMOTIONS)].to_numpy(), proba, atol=1e-5)
    assert np.allclose(saved.predict(faces[..., None].astype(np.float32), verbose=0), proba, atol=1e-6)  # raw in
    assert class_names_of(saved) == list(EMOTIONS) and class_names_of(network) == list(EMOTIONS)


def test_two_runs_with_different_params_are_comparable(repo):
    first = run_train(repo, train={"learning_rate": 0.01})
    second = run_train(repo, train={"learning_rate": 0.001})
    client = client_for(repo)
    runs = {
        run.info.run_id: run for run in client.search_runs([client.get_experiment_by_name("ferflow").experiment_id])
    }
    assert set(runs) == {first.run_id, second.run_id}
    a, b = runs[first.run_id].data, runs[second.run_id].data
    assert set(a.params) == set(b.params) and len(a.params) > 40
    assert {key for key in a.params if a.params[key] != b.params[key]} == {"train.learning_rate"}
    assert set(a.metrics) == set(b.metrics) and {"val_loss", "val_f1_macro", "best_val_loss"} <= set(a.metrics)


def test_same_params_and_seed_give_the_same_metrics(repo):
    first = run_train(repo)
    first_history = json.loads((repo / "history.json").read_text())
    second = run_train(repo)
    second_history = json.loads((repo / "history.json").read_text())
    assert first.run_id != second.run_id
    for a, b in zip(first_history, second_history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_the_ema_horizon_is_counted_in_epochs_of_batches():
    assert averaging_momentum(2.0, 100) == pytest.approx(1 - 1 / 200)  # a horizon of 200 steps
    assert averaging_momentum(2.0, 10) == pytest.approx(1 - 1 / 20)  # the same 2 epochs on a tenth of the data
    assert averaging_momentum(0.01, 10) == 0.0  # shorter than a step: the average is the last weights


def test_the_weight_average_replaces_the_epochs_weights_only_when_its_val_loss_is_lower(synthetic_arrays):
    images, labels, usages = synthetic_arrays
    params = parse_params(tiny_params(train={"epochs": 1, "ema_epochs": 5}))
    val = (to_inputs(images[usages == "PublicTest"]), one_hot(labels[usages == "PublicTest"], 7))
    seed_everything(0)
    model = compiled_model(params, 7)
    assert model.optimizer.use_ema
    # fit ends with the average in the model (Keras' finalize), which BestWeights keeps as at_end before it
    # puts the best epoch's weights back, as in fit
    best = BestWeights()
    model.fit(to_inputs(images), one_hot(labels, 7), validation_data=val, batch_size=64, epochs=1, verbose=0,
              callbacks=[best])  # fmt: skip
    # as if the best epoch were an earlier one, with other batch-norm statistics than the last epoch's
    for variable in model.non_trainable_variables:
        if "moving_mean" in variable.path:
            variable.assign(variable.numpy() + 0.05)
    trained = model.get_weights()
    trained_loss = model.evaluate(*val, verbose=0, return_dict=True)["loss"]

    higher = keep_averaged_if_better(model, best.at_end, val, -math.inf, batch_size=64)  # nothing is lower
    assert higher["kept"] == 0.0 and {"val_loss", "val_accuracy", "val_f1_macro"} <= set(higher)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), trained, strict=True))

    lower = keep_averaged_if_better(model, best.at_end, val, math.inf, batch_size=64)
    now = model.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert lower["kept"] == 1.0 and now == pytest.approx(lower["val_loss"], rel=1e-5)
    assert abs(lower["val_loss"] - trained_loss) > 1e-4  # the average is other weights
    # the average comes with the last epoch's batch-norm statistics, not those of the epoch it replaces
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best.at_end, strict=True))


def test_mixup_blends_faces_and_labels_of_a_batch_by_one_weight_and_repeats_on_request():
    rng = np.random.default_rng(3)
    faces = rng.random((10, 48, 48, 1)).astype(np.float32)
    labels = one_hot(np.arange(10) % 7, 7)
    plain = _TrainingBatches(faces, labels, batch_size=4, multiple=1, sample_weight=None, seed=0)
    mixed = _TrainingBatches(faces, labels, batch_size=4, multiple=1, sample_weight=None, seed=0, mixup_alpha=0.4)
    assert len(mixed) == 3  # 4 + 4 + 2 rows: one device takes the uneven last batch
    x, y = faces[plain.order[:4]], labels[plain.order[:4]]
    np.testing.assert_array_equal(plain[0][0], x)  # without mixup: the rows as they are
    blended, soft = mixed[0]
    # every row is w * itself + (1 - w) * a partner in the batch, one w for the batch, labels blended alike
    weights, partners = [], []
    for i in range(4):
        fits = []
        for j in range(4):
            step = (x[i] - x[j]).ravel()
            w = 1.0 if j == i else float(np.dot((blended[i] - x[j]).ravel(), step) / np.dot(step, step))
            fits.append((float(np.abs(blended[i] - (w * x[i] + (1 - w) * x[j])).max()), w, j))
        error, w, j = min(fits)
        assert error < 1e-5
        partners.append(j)
        if j != i:
            weights.append(w)
    assert weights and 0.0 < weights[0] < 1.0 and np.allclose(weights, weights[0], atol=1e-5)
    w = weights[0]
    np.testing.assert_allclose(soft, w * y + (1 - w) * y[partners], atol=1e-5)
    np.testing.assert_array_equal(mixed[0][0], blended)  # the same batch asked twice is the same blend
    mixed.on_epoch_end()
    assert not np.array_equal(mixed[0][0], blended)  # a new epoch draws new blends


def test_a_fit_with_mixup_trains_on_soft_labels(synthetic_arrays):
    images, labels, usages = synthetic_arrays
    val = usages == "PublicTest"
    params = parse_params(tiny_params(train={"epochs": 2, "mixup_alpha": 0.4}))
    seed_everything(0)
    result = fit(params, images[~val], labels[~val], images[val], labels[val], 7, verbose=0)
    assert len(result.history) == 2
    assert all(math.isfinite(epoch["loss"]) and math.isfinite(epoch["val_loss"]) for epoch in result.history)
    assert predict_proba(result.model, images[val][:5]).shape == (5, 7)


def test_a_time_budget_plans_the_epochs_that_fit_at_the_median_pace():
    settings = parse_params(tiny_params(train={"epochs": 50, "time_budget_minutes": 10})).train
    assert planned_epochs(settings, 0, []) == 50  # nothing timed yet: the most it may run
    # 600 s budget, 240 s spent; one slow epoch (120 s) does not move the median pace of 60 s: 6 more fit
    assert planned_epochs(settings, 3, [60, 60, 120]) == 3 + 6
    assert planned_epochs(settings, 9, [60.0] * 9 + [59.0]) == 9  # 1 s left: no epoch fits
    assert planned_epochs(settings, 2, [1.0, 1.0]) == 50  # never more than train.epochs
    assert planned_epochs(settings.model_copy(update={"time_budget_minutes": 0}), 3, [60, 60, 60]) == 50


def test_a_time_budget_stops_training_and_ends_the_cosine_where_the_time_runs_out(synthetic_arrays):
    images, labels, _ = synthetic_arrays
    settings = parse_params(tiny_params(train={"epochs": 40, "learning_rate": 0.01, "warmup_epochs": 1,
                                               "time_budget_minutes": 5})).train  # fmt: skip
    ticks = iter(range(0, 10_000, 30))  # every epoch takes 60 s on this clock: begin, end 30 s later, ...
    budget = TimeBudget(settings, spent=[60.0], clock=lambda: 2 * next(ticks))  # one epoch ran before a resume
    seed_everything(0)
    model = compiled_model(parse_params(tiny_params()), 7)
    history = model.fit(to_inputs(images[:64]), one_hot(labels[:64], 7), batch_size=64, epochs=40,
                        initial_epoch=1, verbose=0, callbacks=[budget, budget.stopper])  # fmt: skip
    # 5 minutes at 60 s an epoch is 5 epochs, the first of them before the resume
    assert history.epoch == [1, 2, 3, 4]
    assert history.history["planned_epochs"] == [5.0] * 4
    expected = [cosine_learning_rate(settings, epoch, 5) for epoch in (1, 2, 3, 4)]
    assert history.history["learning_rate"] == pytest.approx(expected, rel=1e-6)
    assert expected[-1] < 0.2 * settings.learning_rate  # the decay ran its course in the budget
    assert cosine_learning_rate(settings, 4, 40) > 0.9 * settings.learning_rate  # where epochs: 40 would be


def test_the_train_stage_stops_within_its_time_budget_and_logs_the_plan(repo, capsys):
    facts = run_train(repo, train={"epochs": 100, "time_budget_minutes": 0.1, "early_stopping_patience": 100})
    history = read_json(repo / "history.json")
    assert 1 <= facts.epochs_run == len(history) < 100
    seconds = [row["epoch_seconds"] for row in history]
    # every epoch after the first started only with a median epoch's time left in the 6 s (the budget times
    # whole epochs, callbacks included, so the history's epoch_seconds, timed inside them, are no longer)
    for done in range(1, len(seconds)):
        assert sum(seconds[:done]) + float(np.median(seconds[:done])) <= 6.0
    assert history[-1]["planned_epochs"] >= len(history)
    logged = client_for(repo).get_metric_history(facts.run_id, "planned_epochs")
    assert [int(metric.value) for metric in logged] == [int(row["planned_epochs"]) for row in history]
    assert f"train: vgg, {len(history)} epochs in a 0.1-minute budget" in capsys.readouterr().out


def saved_val_loss(repo: Path) -> float:
    """Cross-entropy of the saved model on the val split (the tiny params have no label smoothing)."""
    clean = read_npz(repo / "clean.npz")
    is_val = clean["splits"] == "val"
    proba = predict_proba(load_keras_model(repo / "models" / "model.keras"), clean["images"][is_val])
    return float(-np.log(proba[np.arange(len(proba)), clean["labels"][is_val]]).mean())


def test_restore_best_weights_false_saves_the_last_epoch_and_a_worse_average_is_logged_not_saved(repo, capsys):
    # A horizon of 100 epochs over 4 is still mostly the initial weights: far worse than any trained epoch.
    facts = run_train(repo, train={"epochs": 4, "learning_rate": 0.05, "restore_best_weights": False,
                                   "ema_epochs": 100})  # fmt: skip
    history = read_json(repo / "history.json")
    losses = [row["val_loss"] for row in history]
    assert facts.best_epoch == int(np.argmin(losses)) != len(losses) - 1  # else this test could not tell
    run = client_for(repo).get_run(facts.run_id)
    assert facts.weights == run.data.tags["ferflow.weights"] == "last_epoch"
    assert saved_val_loss(repo) == pytest.approx(losses[-1], rel=1e-3)
    metrics = run.data.metrics
    assert metrics["averaged_val_loss"] > losses[-1] + 0.05
    assert 0.0 <= metrics["averaged_val_accuracy"] < history[-1]["val_accuracy"]
    assert "against" in (out := capsys.readouterr().out) and "not lower, the last epoch is saved" in out


def test_missing_weights_file_fails_before_any_run(repo):
    with pytest.raises(ParamsError, match="model.weights: file .* does not exist"):
        run_train(repo, model={"architecture": "mobilenet_v2", "weights": str(repo / "none.h5")})
    assert not (repo / "mlflow.db").exists()


def test_evaluate_writes_metrics_plots_and_logs_into_the_training_run(repo):
    facts = run_train(repo)
    out = repo / "eval"
    metrics = evaluate.run(
        parse_params({"evaluate": {"tta": {"flip": True}, "sample_faces": 6}}).evaluate,
        repo / "models" / "model.keras", repo / "clean.npz", repo / "run.json", out / "metrics.json",
        out / "records.json", out / "confusion.json", out / "report.txt", out / "plots", repo,
    )  # fmt: skip
    written = read_json(out / "metrics.json")
    assert written == metrics
    assert set(written) >= {"accuracy", "f1_macro", "f1_weighted", "auc", "loss", "f1_per_class", "test_rows"}
    assert 0.0 <= written["accuracy"] <= 1.0 and set(written["f1_per_class"]) == set(EMOTIONS)
    records = read_json(out / "records.json")
    assert len(records) == written["test_rows"] and set(records[0]) == {"actual", "predicted"}
    matrices = read_json(out / "confusion.json")
    assert np.sum(matrices["counts"]) == written["test_rows"]
    assert sum(r["actual"] == r["predicted"] for r in records) == pytest.approx(written["accuracy"] * len(records))
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "confusion_matrix.png", "confusion_matrix_normalised.png", "samples_correct.png", "samples_incorrect.png",
    ]  # fmt: skip
    report = (out / "report.txt").read_text()
    assert "test-time augmentation (flip)" in report or "test-time augmentation: used" in report
    assert written["val"]["rows"] == int((read_npz(repo / "clean.npz")["splits"] == "val").sum())
    assert written["tta"]["setting"] == "flip" and 0.0 <= written["val"]["accuracy"] <= 1.0

    client = client_for(repo)
    run = client.get_run(facts.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(written["accuracy"])
    assert run.data.metrics["test_f1_macro"] == pytest.approx(written["f1_macro"])
    assert "test_f1_disgust" in run.data.metrics and run.data.tags["ferflow.evaluated"] == "true"
    assert run.data.metrics["valid_accuracy"] == pytest.approx(written["val"]["accuracy"])
    assert run.data.metrics["valid_tta_accuracy"] == pytest.approx(written["tta"]["val_accuracy_tta"])
    logged = {item.path for item in client.list_artifacts(facts.run_id, "evaluate")}
    assert {"evaluate/confusion_matrix.json", "evaluate/confusion_matrix.png", "evaluate/classification_report.txt",
            "evaluate/samples_incorrect.png", "evaluate/per_class.json"} <= logged  # fmt: skip
    # The figure in MLflow is the file the stage wrote, byte for byte (rendered once, not twice).
    downloaded = Path(client.download_artifacts(facts.run_id, "evaluate/confusion_matrix.png", str(repo / "dl")))
    assert downloaded.read_bytes() == (out / "plots" / "confusion_matrix.png").read_bytes()


@pytest.mark.parametrize("guard", [True, False])
def test_a_tta_that_lowers_val_accuracy_is_never_silent(repo, capsys, guard):
    """A model that reads the class from the top-left pixel is perfect on plain faces; the mirror puts another
    class there, so flip TTA lowers val accuracy. The guard drops it; without the guard it is used, with a
    warning either way."""
    clean = read_npz(repo / "clean.npz")
    flat = clean["images"].reshape(len(clean["images"]), -1)
    flat[:, 0] = clean["labels"] * PIXEL_STEP
    flat[:, 47] = (clean["labels"] + 1) % 7 * PIXEL_STEP  # what the mirrored face shows in that pixel
    write_npz(repo / "clean.npz", **clean)
    run_train(repo, train={"epochs": 1})
    pixel_reader(0).save(repo / "models" / "model.keras")
    out = repo / "eval"
    metrics = evaluate.run(
        parse_params({"evaluate": {"tta": {"flip": True, "guard": guard}, "sample_faces": 6}}).evaluate,
        repo / "models" / "model.keras", repo / "clean.npz", repo / "run.json", out / "metrics.json",
        out / "records.json", out / "confusion.json", out / "report.txt", out / "plots", repo,
    )  # fmt: skip
    assert metrics["val"]["accuracy"] == 1.0 and metrics["accuracy"] == 1.0
    assert metrics["tta"]["val_accuracy_tta"] < 1.0
    warning = capsys.readouterr().err
    assert "evaluate: WARNING: test-time augmentation" in warning and "val accuracy 1.0000 without" in warning
    run = client_for(repo).get_run(read_json(repo / "run.json")["run_id"])
    assert run.data.tags["ferflow.evaluate.tta_used"] == str(not guard).lower()
    if guard:
        assert not metrics["tta"]["used"] and "NOT used on test" in (out / "report.txt").read_text()
        assert "test_tta_accuracy" not in run.data.metrics
    else:
        assert metrics["tta"]["used"] and metrics["tta"]["test"]["accuracy"] < 1.0
        assert run.data.metrics["test_tta_accuracy"] < 1.0


def test_cv_logs_a_parent_run_with_one_nested_run_per_fold(repo):
    params = parse_params(tiny_params(train={"epochs": 1, "ema_epochs": 1}))
    metrics = cv.run(params, repo / "train.npz", repo / "clean.npz", repo / "cv.json", repo)
    assert read_json(repo / "cv.json") == metrics
    per_fold = metrics["per_fold"]
    assert sorted(per_fold) == ["fold1", "fold2"]
    assert metrics["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in per_fold.values()]))
    assert metrics["std"]["accuracy"] == pytest.approx(np.std([f["accuracy"] for f in per_fold.values()], ddof=1))
    assert 0.0 <= metrics["ensemble_test"]["accuracy"] <= 1.0

    client = client_for(repo)
    runs = client.search_runs([client.get_experiment_by_name("ferflow").experiment_id])
    parents = [run for run in runs if run.data.tags.get("ferflow.stage") == "cv"]
    folds = [run for run in runs if run.data.tags.get("ferflow.stage") == "cv_fold"]
    assert len(parents) == 1 and len(folds) == 2
    parent = parents[0]
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in folds)
    assert parent.data.metrics["cv_accuracy_mean"] == pytest.approx(metrics["mean"]["accuracy"])
    assert parent.data.params["cv.folds"] == "2" and "ensemble_test_accuracy" in parent.data.metrics
    held_out = sorted(int(run.data.params["held_out_rows"]) for run in folds)
    assert sum(held_out) == len(np.load(repo / "train.npz")["labels"])
    assert all(run.info.status == "FINISHED" for run in runs)
    for fold in folds:  # each fold's weight average was scored on val and kept or not
        assert fold.data.metrics["averaged_kept"] in (0.0, 1.0) and fold.data.metrics["averaged_val_loss"] > 0


def test_cv_disabled_writes_a_note_and_trains_nothing(repo, capsys):
    params = parse_params(tiny_params(cv={"enabled": False}))
    metrics = cv.run(params, repo / "train.npz", repo / "clean.npz", repo / "cv.json", repo)
    assert read_json(repo / "cv.json") == metrics == {"enabled": False,
                                                      "note": "cross-validation skipped (cv.enabled: false)"}
    assert "cv: skipped (cv.enabled: false)" in capsys.readouterr().out
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()  # no MLflow run either


def test_cv_fold_indices_are_stratified_disjoint_and_complete():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    folds = cv.fold_indices(labels, folds=5, repeats=2, seed=0)
    assert len(folds) == 10
    for fit_rows, held_out in folds:
        assert not set(fit_rows) & set(held_out) and len(fit_rows) + len(held_out) == 100
        assert np.bincount(labels[held_out]).tolist() == [2, 4, 6, 8]
    first_repeat = np.concatenate([held for _, held in folds[:5]])
    assert sorted(first_repeat.tolist()) == list(range(100))
    with pytest.raises(ParamsError, match="cv.folds: 50 folds"):
        cv.fold_indices(labels, folds=50, repeats=1, seed=0)
    # A class with fewer rows than folds would be missing from some folds' scores: refused, naming it.
    with pytest.raises(ParamsError, match=r"cv.folds: 15 folds need at least 15 training rows of every class; "
                                          r"class angry has 10 \(lower cv.folds"):  # fmt: skip
        cv.fold_indices(labels, folds=15, repeats=1, seed=0, class_names=["angry", "disgust", "fear", "happy"])


# -- killed and interrupted training, through the real command ------------------------------------------------


def start_training(repo: Path, epochs: int) -> subprocess.Popen:
    # with a weight average: its moving averages and its val scores must survive a kill too
    params = tiny_params(train={"epochs": epochs, "batch_size": 16, "ema_epochs": 1}, model={"width": 8})
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "ferflow", "--params", str(repo / "params.yaml"), "train",
               "--train-arrays", "train.npz", "--clean", "clean.npz", "--model", "model.keras",
               "--history", "history.json", "--run-info", "run.json", "--curves", "curves.png",
               "--checkpoints", "checkpoints"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epochs(repo: Path, process: subprocess.Popen, count: int, timeout: float = 240) -> None:
    history = repo / "checkpoints" / "history.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history.is_file() and len(history.read_text().splitlines()) >= count:
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended early:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("training never reached the epoch")


@pytest.mark.slow
def test_killed_training_resumes_in_the_same_run_even_when_killed_after_fit(repo):
    """A kill during training resumes from the last finished epoch, in the same MLflow run. Keras deletes its
    backup when fit ends; the checkpoint keeps the fitted weights until the run is complete, so a second kill
    while the result is being logged neither retrains nor leaves a second run behind."""
    process = start_training(repo, epochs=5)
    wait_for_epochs(repo, process, 2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done_before = len((repo / "checkpoints" / "history.jsonl").read_text().splitlines())
    assert 2 <= done_before < 5 and not (repo / "run.json").exists()

    resumed = start_training(repo, epochs=5)
    fitted = repo / "checkpoints" / "fitted.weights.h5"
    deadline = time.monotonic() + 240
    while not fitted.is_file():
        assert resumed.poll() is None and time.monotonic() < deadline, "fit never returned before the end"
        time.sleep(0.01)
    resumed.send_signal(signal.SIGKILL)
    output, _ = resumed.communicate(timeout=30)
    assert "resuming MLflow run" in output
    # The resumed fit started after the last finished epoch: its progress counts from there, not from 1.
    assert "Epoch 1/5" not in output and f"Epoch {done_before + 1}/5" in output
    assert not (repo / "run.json").exists() and not (repo / "checkpoints" / "backup").exists()

    finished = start_training(repo, epochs=5)
    output, _ = finished.communicate(timeout=300)
    assert finished.returncode == 0, output
    assert "the fit had finished before the stop" in output and not re.search(r"Epoch \d+/5", output)
    facts = RunInfo.read(repo / "run.json")
    assert facts.resumed and facts.epochs_run == 5
    assert [row["epoch"] for row in read_json(repo / "history.json")] == list(range(5))
    client = client_for(repo)
    run = client.get_run(facts.run_id)
    assert run.info.status == "FINISHED"
    # the weight average was scored in the killed process and recorded with the fitted weights
    assert facts.weights == run.data.tags["ferflow.weights"]
    assert (run.data.metrics["averaged_val_loss"] < run.data.metrics["best_val_loss"]) == (facts.weights == "averaged")
    steps = [m.step for m in client.get_metric_history(facts.run_id, "val_loss")]
    assert sorted(set(steps)) == list(range(5))
    assert len(client.search_runs([facts.experiment_id])) == 1
    assert not (repo / "checkpoints").exists()


@pytest.mark.slow
def test_terminated_training_is_marked_failed_not_left_running(repo):
    process = start_training(repo, epochs=50)
    wait_for_epochs(repo, process, 1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    assert "ferflow train: terminated" in output
    run_id = (repo / "checkpoints" / "mlflow_run_id").read_text().strip()
    assert client_for(repo).get_run(run_id).info.status == "FAILED"
    assert not (repo / "model.keras").exists() and not (repo / "run.json").exists()


@pytest.mark.slow
def test_evaluate_killed_while_logging_or_writing_leaves_no_half_metrics_and_the_rerun_finishes(repo):
    """SIGKILL to the real `ferflow evaluate` at two points: while it logs into the training run (the run is
    left RUNNING, not yet marked evaluated, so register cannot pick it), and as it moves metrics.json into
    place. Neither leaves a metrics file; the rerun logs into the same run, ends it FINISHED and writes it."""
    facts = run_train(repo)
    (repo / "params.yaml").write_text("{}\n")
    out = repo / "eval"
    # A model that does not fit the data (5 class scores for 7 classes) is refused before anything is written.
    import keras

    five = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    five.save(repo / "five.keras")
    with pytest.raises(DataError, match=r"five.keras: the model gives 5 class scores, but the data has 7 classes"):
        evaluate.run(parse_params({}).evaluate, repo / "five.keras", repo / "clean.npz", repo / "run.json",
                     out / "metrics.json", out / "records.json", out / "confusion.json", out / "report.txt",
                     out / "plots", repo)  # fmt: skip
    assert not out.exists()
    evaluate_args = ["evaluate", "--model", "models/model.keras", "--clean", "clean.npz", "--run-info", "run.json",
                     "--metrics", "eval/metrics.json", "--confusion-records", "eval/records.json", "--confusion",
                     "eval/confusion.json", "--report", "eval/report.txt", "--plots", "eval/plots"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # for tests.killpoints
    client = client_for(repo)

    def evaluate_killed(target: str, match: str) -> None:
        command = [sys.executable, "-m", "tests.killpoints", target, "before", match, "--", *evaluate_args]
        killed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert not (out / "metrics.json").exists()

    evaluate_killed("mlflow:set_tags", "ferflow.evaluated")
    run = client.get_run(facts.run_id)
    assert run.info.status == "RUNNING" and "ferflow.evaluated" not in run.data.tags
    assert "test_accuracy" in run.data.metrics  # it was killed part-way through logging

    evaluate_killed("os:replace", "metrics.json")
    assert client.get_run(facts.run_id).info.status == "FINISHED"
    assert len(list(out.glob(".metrics.json.*.tmp"))) == 1  # the killed writer's complete but unplaced file

    rerun = subprocess.run([sys.executable, "-m", "ferflow", *evaluate_args], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    written = read_json(out / "metrics.json")
    run = client.get_run(facts.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ferflow.evaluated"] == "true"
    assert run.data.metrics["test_accuracy"] == pytest.approx(written["accuracy"])
    assert [r.info.run_id for r in client.search_runs([facts.experiment_id])] == [facts.run_id]  # no stray run
    assert not list(out.glob(".*.tmp"))

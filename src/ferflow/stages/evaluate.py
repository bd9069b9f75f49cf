"""Stage ``evaluate``: score the trained model on the val and test splits and log it into the training's MLflow
run.

The model as it is registered and served (no test-time augmentation) is scored on val (``valid_*`` metrics:
what the register stage ranks runs by) and on test (``test_*``: reported, and what the promotion gate compares
on the same faces). Optional test-time augmentation (``evaluate.tta``: mirror and shifted or zoomed crops)
is judged on val first: with ``evaluate.tta.guard`` a setting that lowers val accuracy is not used on test,
and a warning says so; otherwise its scores are logged beside the plain ones (``valid_tta_*``,
``test_tta_*``). Writes the DVC metric file, confusion records for DVC's ``confusion`` plot template,
confusion matrix images (counts and row-normalised), grids of correctly and wrongly classified faces and a
classification report; the same files and the metrics go to the training's MLflow run.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ferflow import tracking
from ferflow.errors import DataError
from ferflow.io import CLEAN_KEYS, array_digest, atomic_open, read_npz, write_json
from ferflow.models.evaluation import (
    classification_metrics,
    confusion,
    describe_tta,
    flat_metrics,
    predict_with_tta,
)
from ferflow.params import EvaluateParams
from ferflow.plots import confusion_heatmap, labelled_faces, png_bytes, write_png
from ferflow.run_info import RunInfo


def _sample_grids(images, labels, proba, class_names, per_grid: int, rng) -> dict[str, Any]:
    predicted = proba.argmax(axis=1)
    grids = {}
    for name, chosen in (("correct", predicted == labels), ("incorrect", predicted != labels)):
        rows = np.flatnonzero(chosen)
        picks = np.sort(rng.choice(rows, size=min(per_grid, len(rows)), replace=False)) if len(rows) else rows
        captions = [
            f"true {class_names[labels[i]]}\npred {class_names[predicted[i]]} {proba[i, predicted[i]]:.2f}"
            for i in picks
        ]
        title = f"{name}ly classified test faces ({len(picks)} of {len(rows)})"
        grids[name] = labelled_faces([images[i] for i in picks], captions, title)
    return grids


def _report_text(scores: dict[str, Any], tta: str) -> str:
    """The per-class table of the model without TTA on the test split, and the TTA verdict."""
    lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in scores["per_class"].items():
        lines.append(
            f"{name:<12}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10d}"
        )
    support = sum(row["support"] for row in scores["per_class"].values())
    lines += [
        "",
        f"{'accuracy':<12}{scores['accuracy']:>30.3f}{support:>10d}",
        f"{'macro F1':<12}{scores['f1_macro']:>30.3f}",
        f"{'weighted F1':<12}{scores['f1_weighted']:>30.3f}",
        f"{'AUC (ovr)':<12}{scores['auc']:>30.3f}",
        f"{'log loss':<12}{scores['loss']:>30.3f}",
        "(the model as registered and served, without test-time augmentation)",
        f"test-time augmentation: {tta}",
    ]
    return "\n".join(lines) + "\n"


def _settings_digest(params: EvaluateParams) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


def _where_to_log(params: EvaluateParams, facts: RunInfo, repo_root: Path) -> dict[str, Any]:
    """The training run, unless it was already evaluated with other settings (an evaluate-only experiment,
    e.g. ``dvc exp run -S evaluate.tta.flip=true``): then a new run nested under it, so that the earlier
    experiment's figures and artifacts are never rewritten. The plain model's val and test metrics, which
    register ranks on, do not depend on these settings; the training run keeps the first ones."""
    with tracking.store(repo_root) as client:
        trained = tracking.existing_run(client, facts.run_id)
        experiment = client.get_experiment(trained.info.experiment_id).name
    earlier = trained.data.tags.get("ferflow.evaluate.settings")
    if trained.data.tags.get("ferflow.evaluated") != "true" or earlier == _settings_digest(params):
        return {"run_id": facts.run_id}
    tags = {"ferflow.stage": "evaluate", "ferflow.model_run_id": facts.run_id, "ferflow.test_hash": facts.test_hash}
    return {"experiment": experiment, "run_name": f"evaluate-{facts.architecture}", "tags": tags,
            "parent_run_id": facts.run_id}  # fmt: skip


def run(
    params: EvaluateParams,
    model_path: Path,
    clean_arrays: Path,
    run_info: Path,
    metrics_out: Path,
    confusion_records_out: Path,
    confusion_out: Path,
    report_out: Path,
    plots_dir: Path,
    repo_root: Path,
) -> dict[str, Any]:
    import mlflow

    from ferflow.models.layers import load_keras_model
    from ferflow.models.serving import face_model_problem

    facts = RunInfo.read(run_info)
    clean = read_npz(clean_arrays, CLEAN_KEYS)
    class_names = [str(name) for name in clean["class_names"]]
    if class_names != facts.class_names:
        raise DataError(f"{model_path} was trained on classes {facts.class_names}, but {clean_arrays} has "
                        f"{class_names}; rerun the train stage")  # fmt: skip
    is_test, is_val = clean["splits"] == "test", clean["splits"] == "val"
    if not is_test.any() or not is_val.any():
        raise DataError(f"{clean_arrays}: no {'test' if not is_test.any() else 'val'} rows; rerun the validate stage")
    images, labels = clean["images"][is_test], clean["labels"][is_test]
    test_hash = array_digest(images, labels)
    if test_hash != facts.test_hash:
        raise DataError(f"{clean_arrays}: its test split (hash {test_hash}) is not the one {run_info} was trained "
                        f"beside ({facts.test_hash}); rerun the train stage")  # fmt: skip
    val_images, val_labels = clean["images"][is_val], clean["labels"][is_val]

    model = load_keras_model(model_path)  # a file that is not a safe model is a DataError naming it
    problem = face_model_problem(model, len(class_names))
    if problem:
        raise DataError(f"{model_path}: {problem} ({clean_arrays}: {', '.join(class_names)}); rerun the train stage")
    where = _where_to_log(params, facts, repo_root)  # a run missing from the store fails here, before scoring
    proba = predict_with_tta(model, images)
    scores = classification_metrics(labels, proba, class_names)
    val_scores = classification_metrics(val_labels, predict_with_tta(model, val_images), class_names)
    tta_facts = _judge_tta(model, params.tta, val_images, val_labels, val_scores, images, labels, class_names)
    predicted = proba.argmax(axis=1)
    counts, normalised = confusion(labels, predicted, len(class_names))

    metrics = {**_scalars(scores),
               "f1_per_class": {name: row["f1"] for name, row in scores["per_class"].items()},
               "test_rows": int(is_test.sum()),
               "val": {**_scalars(val_scores), "rows": int(is_val.sum())},
               "tta": {key: value for key, value in tta_facts.items() if not key.endswith("_scores")}}  # fmt: skip
    records = [{"actual": class_names[t], "predicted": class_names[p]} for t, p in zip(labels, predicted, strict=True)]
    matrices = {"class_names": class_names, "counts": counts.tolist(), "normalised": normalised.round(4).tolist()}
    figures = {
        "confusion_matrix.png": confusion_heatmap(counts, class_names, "test confusion matrix (counts)", False),
        "confusion_matrix_normalised.png": confusion_heatmap(
            normalised, class_names, "test confusion matrix (row-normalised: recall)", True
        ),
        **{f"samples_{name}.png": figure for name, figure in _sample_grids(
            images, labels, proba, class_names, params.sample_faces, np.random.default_rng(params.seed)
        ).items()},
    }  # fmt: skip
    pngs = {name: png_bytes(figure) for name, figure in figures.items()}  # rendered once: for MLflow and the folder
    report = _report_text(scores, tta_facts["verdict"])

    with tracking.tracked_run(repo_root, **where) as active:
        tracking.log_dataset(images, labels, "test", clean_arrays, "testing")
        mlflow.log_metrics(flat_metrics(scores, prefix="test_"))
        mlflow.log_metrics(flat_metrics(val_scores, prefix="valid_"))
        for key, prefix in (("val_scores", "valid_tta_"), ("test_scores", "test_tta_")):
            if key in tta_facts:
                mlflow.log_metrics(flat_metrics(tta_facts[key], prefix=prefix))
        mlflow.log_dict(matrices, "evaluate/confusion_matrix.json")
        mlflow.log_dict(scores["per_class"], "evaluate/per_class.json")
        mlflow.log_text(report, "evaluate/classification_report.txt")
        for name, png in pngs.items():
            tracking.log_bytes(png, f"evaluate/{name}")
        # Last: only a completely logged evaluation makes the run eligible for registration.
        mlflow.set_tags({"ferflow.evaluated": "true", "ferflow.evaluate.settings": _settings_digest(params),
                         "ferflow.evaluate.tta": tta_facts["setting"],
                         "ferflow.evaluate.tta_used": str(tta_facts["used"]).lower(),
                         "ferflow.evaluate.tta_verdict": tta_facts["verdict"]})  # fmt: skip

    for name, png in pngs.items():
        write_png(png, plots_dir / name)
    write_json(confusion_records_out, records)
    write_json(confusion_out, matrices)
    with atomic_open(report_out) as handle:
        handle.write(report)
    write_json(metrics_out, metrics)
    tta_line = ""
    if "test_scores" in tta_facts:
        tta_line = (f"; with TTA ({tta_facts['setting']}): test accuracy {tta_facts['test_scores']['accuracy']:.3f}, "
                    f"macro-F1 {tta_facts['test_scores']['f1_macro']:.3f}")  # fmt: skip
    print(f"evaluate: val accuracy {val_scores['accuracy']:.3f}, macro-F1 {val_scores['f1_macro']:.3f} on "
          f"{int(is_val.sum())} faces; test accuracy {scores['accuracy']:.3f}, macro-F1 {scores['f1_macro']:.3f} on "
          f"{len(labels)} faces{tta_line}; logged to MLflow run {active.info.run_id}")  # fmt: skip
    return metrics


def _judge_tta(model, tta, val_images, val_labels, val_scores, images, labels, class_names) -> dict[str, Any]:
    """Score the TTA setting on val; use it on test only if it does not lower val accuracy (or the guard is off).

    The verdict is said out loud: a TTA that makes the model worse never passes silently.
    """
    setting = describe_tta(tta.flip, tta.crops, tta.crop_fraction, tta.crop_mode)
    facts: dict[str, Any] = {"setting": setting, "used": False, "verdict": "none configured"}
    if setting == "none":
        return facts
    views = (tta.flip, tta.crops, tta.crop_fraction, tta.crop_mode)
    val_tta = classification_metrics(val_labels, predict_with_tta(model, val_images, *views), class_names)
    plain, augmented = val_scores["accuracy"], val_tta["accuracy"]
    facts.update(val_scores=val_tta, val_accuracy_plain=plain, val_accuracy_tta=augmented,
                 val=_scalars(val_tta))  # fmt: skip
    change = f"val accuracy {plain:.4f} without, {augmented:.4f} with {setting}"
    if augmented >= plain:
        facts["verdict"] = f"used: {change}"
    elif tta.guard:
        facts["verdict"] = f"NOT used on test: it lowers {change} (evaluate.tta.guard)"
        print(f"evaluate: WARNING: test-time augmentation {facts['verdict']}", file=sys.stderr)
        return facts
    else:
        facts["verdict"] = f"used although it lowers {change} (evaluate.tta.guard is false)"
        print(f"evaluate: WARNING: test-time augmentation {facts['verdict']}", file=sys.stderr)
    facts["used"] = True
    facts["test_scores"] = classification_metrics(labels, predict_with_tta(model, images, *views), class_names)
    facts["test"] = _scalars(facts["test_scores"])
    return facts


def _scalars(scores: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of ``classification_metrics``, without the per-class table."""
    return {key: value for key, value in scores.items() if key != "per_class"}

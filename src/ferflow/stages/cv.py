"""Stage ``cv``: stratified (optionally repeated) K-fold cross-validation of the training recipe.

Folds are drawn over the original training rows. Each fold trains with exactly the ``train`` recipe on the
other folds' rows, together with the augmented copies made from them (a copy always follows its source row,
so no face leaks into the fold that scores it), and is scored on its held-out original rows.

MLflow gets one parent run with one nested run per fold; the parent carries the mean and standard deviation
of every metric. With ``cv.ensemble`` the fold models' averaged probabilities are also scored on the test
split. One DVC stage, not a ``matrix`` of fold stages: every fold depends on the same params and data, so a
change that reruns one fold reruns all of them, and a matrix would only multiply the ``dvc.lock`` entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferflow import tracking
from ferflow.errors import DataError, ParamsError
from ferflow.io import read_training_arrays, write_json
from ferflow.models.evaluation import classification_metrics, flat_metrics
from ferflow.params import Params

SUMMARISED = ("accuracy", "f1_macro", "f1_weighted", "auc", "loss")


def fold_indices(labels: np.ndarray, folds: int, repeats: int, seed: int,
                 class_names: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """(train rows, held-out rows) per fold, stratified by label; ``repeats`` reshuffles the whole split.
    Every class present needs a row in each fold: otherwise a fold is scored without that class (scikit-learn
    only warns), so it is refused, before any training, naming the class."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    if not len(labels):
        raise ParamsError(f"cv.folds: {folds} folds of no training rows")
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    smallest = int(present[np.argmin(counts[present])])
    if counts[smallest] < folds:
        name = class_names[smallest] if class_names else f"label {smallest}"
        raise ParamsError(f"cv.folds: {folds} folds need at least {folds} training rows of every class; class "
                          f"{name} has {counts[smallest]} (lower cv.folds, or set cv.enabled: false)")  # fmt: skip
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def summarise(fold_scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        "mean": {key: float(np.nanmean([s[key] for s in fold_scores])) for key in SUMMARISED},
        "std": {key: float(np.nanstd([s[key] for s in fold_scores], ddof=1)) if len(fold_scores) > 1 else 0.0
                for key in SUMMARISED},
    }  # fmt: skip


def run(params: Params, train_arrays: Path, clean_arrays: Path, metrics_out: Path, repo_root: Path) -> dict[str, Any]:
    if not params.cv.enabled:
        skipped = {"enabled": False, "note": "cross-validation skipped (cv.enabled: false)"}
        write_json(metrics_out, skipped)
        print("cv: skipped (cv.enabled: false); the model card will have no cross-validation section")
        return skipped
    # Imported here, not at the top: they load Keras (over 10 s on 2 cores), which a skipped cv does not need.
    from ferflow.models.architectures import check_weights
    from ferflow.models.training import configure_runtime, fit, model_spec, predict_proba, seed_everything

    train, clean, class_names = read_training_arrays(train_arrays, clean_arrays)
    n_classes = len(class_names)
    check_weights(model_spec(params, n_classes))
    original = ~train["is_augmented"]
    originals = np.flatnonzero(original)  # row k of the train split is train row originals[k]
    source = train["source_index"]
    labels = train["labels"][originals]
    settings = params.cv
    folds = fold_indices(labels, settings.folds, settings.repeats, settings.seed, class_names)
    is_test, is_val = clean["splits"] == "test", clean["splits"] == "val"
    if not is_val.any():
        raise DataError(f"{clean_arrays}: no validation rows (split 'val'); rerun the validate stage")
    if settings.ensemble and not is_test.any():
        raise DataError(f"{clean_arrays}: no test rows (split 'test') for the cv ensemble; rerun validate")

    import mlflow

    data_tags = tracking.data_tags(train, clean)
    architecture = params.model.architecture
    configure_runtime(params.train)  # before the run's tags, which report the policy and the devices
    parent_tags = {**tracking.runtime_tags(repo_root), **data_tags, "ferflow.stage": "cv",
                   "ferflow.architecture": architecture}  # fmt: skip
    fold_rows: list[dict[str, Any]] = []
    ensemble_proba = np.zeros((int(is_test.sum()), n_classes))
    with tracking.tracked_run(repo_root, params.mlflow.experiment, f"cv-{architecture}", tags=parent_tags) as parent:
        mlflow.log_params(tracking.flatten(tracking.training_params(params)))
        mlflow.log_params(tracking.flatten({"cv": params.cv.model_dump()}))
        for number, (fit_rows, held_out) in enumerate(folds):
            repeat, fold = divmod(number, settings.folds)
            name = f"fold {fold + 1}/{settings.folds}" + (f" (repeat {repeat + 1})" if settings.repeats > 1 else "")
            print(f"cv: {name}: training on {len(fit_rows)} rows (+ their augmented copies), scoring {len(held_out)}")
            chosen = np.isin(source, fit_rows)
            with tracking.tracked_run(
                repo_root, params.mlflow.experiment, f"cv-{architecture}-fold{number + 1}",
                tags={"ferflow.stage": "cv_fold", "ferflow.fold": str(fold), "ferflow.repeat": str(repeat)},
                parent_run_id=parent.info.run_id,
            ):  # fmt: skip
                mlflow.log_params({"fold": fold, "repeat": repeat, "fit_rows": int(chosen.sum()),
                                   "held_out_rows": len(held_out)})  # fmt: skip
                seed_everything(params.train.seed + number)
                # Epochs are chosen on the val split, as in train; the held-out fold is only scored.
                result = fit(
                    params, train["images"][chosen], train["labels"][chosen],
                    clean["images"][is_val], clean["labels"][is_val], n_classes,
                    extra_callbacks=[tracking.epoch_logger()],
                )  # fmt: skip
                scores = classification_metrics(
                    labels[held_out], predict_proba(result.model, train["images"][originals[held_out]]), class_names
                )
                flat = flat_metrics(scores)
                row = {"fold": fold, "repeat": repeat, "epochs_run": len(result.history),
                       "train_seconds": round(result.seconds, 2), **flat}  # fmt: skip
                mlflow.log_metrics({f"fold_{key}": value for key, value in flat.items()})
                mlflow.log_metric("train_seconds", result.seconds)
                if result.averaged is not None:  # train.ema_epochs: the average's val scores, kept (1) or not (0)
                    mlflow.log_metrics({f"averaged_{key}": value for key, value in result.averaged.items()})
                if settings.ensemble:
                    ensemble_proba += predict_proba(result.model, clean["images"][is_test]) / len(folds)
            fold_rows.append(row)
            print(f"cv: {name}: held-out accuracy {row['accuracy']:.3f}, macro-F1 {row['f1_macro']:.3f}")

        summary = summarise(fold_rows)
        metrics: dict[str, Any] = {**summary, "folds": settings.folds, "repeats": settings.repeats,
                                   "per_fold": {f"fold{number + 1}": {key: row[key] for key in SUMMARISED}
                                                for number, row in enumerate(fold_rows)}}  # fmt: skip
        mlflow.log_metrics(
            {f"cv_{key}_{stat}": value for stat, values in summary.items() for key, value in values.items()}
        )
        if settings.ensemble:
            ensemble = classification_metrics(clean["labels"][is_test], ensemble_proba, class_names)
            metrics["ensemble_test"] = {key: ensemble[key] for key in SUMMARISED}
            mlflow.log_metrics({f"ensemble_test_{key}": ensemble[key] for key in SUMMARISED})
        mlflow.log_dict(metrics, "cv/metrics.json")
        write_json(metrics_out, metrics)
    mean, std = summary["mean"], summary["std"]
    ensemble_text = f"; ensemble on test: accuracy {ensemble['accuracy']:.3f}" if settings.ensemble else ""
    print(f"cv: {len(folds)} folds, accuracy {mean['accuracy']:.3f} ± {std['accuracy']:.3f}, macro-F1 "
          f"{mean['f1_macro']:.3f} ± {std['f1_macro']:.3f}{ensemble_text}")  # fmt: skip
    return metrics

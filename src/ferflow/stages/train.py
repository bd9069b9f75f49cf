"""Stage ``train``: fit the architecture from ``model`` params with the ``train`` recipe, tracked in MLflow.

Reads the balanced training arrays (augment stage) and the validation split (validate stage). Online
augmentation (``augment.online``) runs inside the model as Keras preprocessing layers, inactive at inference.

A run killed part-way resumes from its last finished epoch when rerun, in the same MLflow run, instead of
starting over: ``keras.callbacks.BackupAndRestore`` keeps the epoch, weights and optimiser state in the
checkpoint folder, beside the run id, the best weights so far and the history. The folder is only reused
when it was made by the same params on the same data (its fingerprint matches); it is removed on success.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ferflow import tracking
from ferflow.errors import DataError
from ferflow.io import atomic_path, read_training_arrays, write_json
from ferflow.models import serving
from ferflow.models.architectures import check_weights
from ferflow.models.checkpoint import TrainingCheckpoint
from ferflow.models.training import (
    compiled_model,
    data_parallel_count,
    fit,
    model_spec,
    saved_weights,
    seed_everything,
)
from ferflow.params import Params
from ferflow.plots import png_bytes, training_curves, write_png
from ferflow.run_info import RunInfo


def _fingerprint(params: Params, data_tags: dict[str, str]) -> str:
    recipe = {"model": params.model.model_dump(), "train": params.train.model_dump(),
              "online": params.augment.online.model_dump(), "data": data_tags}  # fmt: skip
    blob = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _class_counts(clean: dict, class_names: list[str]) -> dict[str, dict[str, int]]:
    """Images per class in each split of the clean data (before oversampling), for model cards."""
    return {
        split: dict(zip(class_names, np.bincount(clean["labels"][clean["splits"] == split],
                                                 minlength=len(class_names)).tolist(), strict=True))
        for split in ("train", "val", "test")
    }  # fmt: skip


def run(
    params: Params,
    train_arrays: Path,
    clean_arrays: Path,
    model_out: Path,
    history_out: Path,
    run_info_out: Path,
    curves_out: Path,
    checkpoint_dir: Path,
    repo_root: Path,
) -> RunInfo:
    """Train, save the model (the weights of the epoch with the lowest val_loss, or of the last one with
    ``train.restore_best_weights: false``; their moving average with ``train.ema_epochs`` when its val loss is
    lower) and log the run; returns the run facts."""
    train, clean, class_names = read_training_arrays(train_arrays, clean_arrays)
    n_classes = len(class_names)
    spec = model_spec(params, n_classes)
    check_weights(spec)  # a missing weights file fails here, before any training or tracking
    is_val = clean["splits"] == "val"
    if not is_val.any():
        raise DataError(f"{clean_arrays}: no validation rows (split 'val'); rerun the validate stage")

    import mlflow

    data_tags = tracking.data_tags(train, clean)
    checkpoint = TrainingCheckpoint(checkpoint_dir, _fingerprint(params, data_tags))
    resumed_run = checkpoint.resumable_run_id()
    seed_everything(params.train.seed)
    model = compiled_model(params, n_classes)
    tags = {
        **tracking.runtime_tags(repo_root), **data_tags,
        "ferflow.stage": "train", "ferflow.architecture": spec.architecture,
    }  # fmt: skip
    with tracking.tracked_run(repo_root, params.mlflow.experiment, f"train-{spec.architecture}", tags=tags,
                              run_id=resumed_run) as active:  # fmt: skip
        checkpoint.record_run(active.info.run_id)
        if resumed_run is None:
            tracking.log_dataset(train["images"], train["labels"], "train", train_arrays, "training")
            tracking.log_dataset(clean["images"][is_val], clean["labels"][is_val], "val", clean_arrays, "validation")
            mlflow.log_params(tracking.flatten(tracking.training_params(params)))
            mlflow.log_params({"data.train_rows": len(train["labels"]), "data.val_rows": int(is_val.sum()),
                               "parameter_count": model.count_params()})  # fmt: skip
        else:
            print(f"train: resuming MLflow run {resumed_run} from its last finished epoch")
        if checkpoint.fit_finished():
            print("train: the fit had finished before the stop; logging its result without training again")
            averaged = checkpoint.restore_fitted(model)
        else:
            averaged = fit(
                params, train["images"], train["labels"], clean["images"][is_val], clean["labels"][is_val], n_classes,
                extra_callbacks=checkpoint.callbacks(tracking.epoch_logger()), best_weights=checkpoint.best_weights,
                model=model, spent_seconds=[row["epoch_seconds"] for row in checkpoint.previous_history()],
            ).averaged  # fmt: skip
            checkpoint.mark_fit_finished(model, averaged)
        history = checkpoint.previous_history()
        best = min(history, key=lambda row: row["val_loss"])
        seconds = sum(row["epoch_seconds"] for row in history)  # across resumes too
        weights = saved_weights(params.train, averaged)
        summary = {
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
            "train_seconds": round(seconds, 2),
            **{f"best_{key}": value for key, value in best.items() if key not in {"epoch", "epoch_seconds"}},
            **{f"averaged_{key}": value for key, value in (averaged or {}).items() if key != "kept"},
        }
        mlflow.log_metrics({key: float(value) for key, value in summary.items()})
        mlflow.set_tag("ferflow.weights", weights)  # which weights the saved model holds
        curves = png_bytes(training_curves(history))  # rendered once, logged and written
        tracking.log_bytes(curves, "plots/training_curves.png")
        mlflow.log_dict(history, "history.json")
        # What is saved, registered and served: raw faces in, class names inside (ferflow.models.serving).
        served = serving.servable(model, class_names)
        # two faces per device: a data-parallel model predicts only batches that split evenly
        model_info = serving.log_model(served, clean["images"][is_val][: 2 * data_parallel_count()])
        mlflow.set_tag("ferflow.model_uri", model_info.model_uri)  # what the register stage registers
        mlflow.log_dict(_class_counts(clean, class_names), "data/class_counts.json")
        with atomic_path(model_out) as tmp:
            staged = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
            try:
                served.save(staged)
                staged.replace(tmp)
            finally:
                staged.unlink(missing_ok=True)
        write_json(history_out, history)
        write_png(curves, curves_out)
        facts = RunInfo(
            run_id=active.info.run_id,
            experiment_id=active.info.experiment_id,
            model_uri=model_info.model_uri,
            architecture=spec.architecture,
            class_names=class_names,
            data_hash=tags["ferflow.data_hash"],
            train_data_hash=tags["ferflow.train_data_hash"],
            test_hash=tags["ferflow.test_hash"],
            resumed=resumed_run is not None,
            best_epoch=summary["best_epoch"],
            epochs_run=summary["epochs_run"],
            train_seconds=summary["train_seconds"],
            best={key: float(value) for key, value in best.items() if key not in {"epoch", "epoch_seconds"}},
            weights=weights,
            keras_backend=tags["ferflow.keras_backend"],
            device_type=tags["ferflow.device_type"],
            device_name=tags["ferflow.device_name"],
            data_parallel_devices=int(tags["ferflow.data_parallel_devices"]),
            git_commit=tags["mlflow.source.git.commit"],
        )
        facts.write(run_info_out)
    checkpoint.clear()  # finished: the next run starts fresh
    epoch, kept_row = ("the best epoch", best) if params.train.restore_best_weights else ("the last epoch", history[-1])
    average = f"; {epoch}'s weights are saved" if averaged is None else (
        f"; weight average over {params.train.ema_epochs:g} epochs: val_accuracy {averaged['val_accuracy']:.3f}, "
        f"val_loss {averaged['val_loss']:.4f} against {kept_row['val_loss']:.4f} for {epoch}: "
        + (f"saved instead of {epoch}" if weights == "averaged" else f"not lower, {epoch} is saved")
    )  # fmt: skip
    budget = params.train.time_budget_minutes
    within = f" in a {budget:g}-minute budget" if budget else ""
    print(
        f"train: {spec.architecture}, {len(history)} epochs{within} (best {best['epoch'] + 1}: val_accuracy "
        f"{best.get('val_accuracy', float('nan')):.3f}){average} in {seconds:.0f} s; MLflow run {facts.run_id} "
        f"-> {model_out}"
    )
    return facts

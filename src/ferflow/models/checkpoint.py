"""Everything a killed training needs to go on where it stopped, in one folder owned by one object.

``TrainingCheckpoint`` holds the Keras backup (model, optimizer and epoch after each finished epoch), the best
weights so far, the per-epoch history, the MLflow run id and, once ``fit`` has returned, the fitted weights.
A rerun with the same params and data therefore resumes:

- during ``fit``: from the last finished epoch, in the same MLflow run;
- after ``fit`` returned but before the run was complete (logging, saving): without training again, from the
  fitted weights, in the same MLflow run.

A folder made by other params or data is wiped first: it must not leak into this training.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import keras


class TrainingCheckpoint:
    def __init__(self, folder: Path, fingerprint: str):
        self.folder = folder
        self.backup = folder / "backup"
        self.best_weights = folder / "best.weights.h5"
        self.fitted_weights = folder / "fitted.weights.h5"
        self.fitted_averaging = folder / "fitted.averaging.json"  # FitResult.averaged, for the fitted weights
        self.history = folder / "history.jsonl"
        self.run_id_file = folder / "mlflow_run_id"
        stamp = folder / "fingerprint"
        if folder.exists() and not (stamp.is_file() and stamp.read_text() == fingerprint):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)

    # -- what a rerun finds --------------------------------------------------------------------------------
    def resumable_run_id(self) -> str | None:
        """The MLflow run to go on with: one that was killed during or after ``fit``."""
        if (self.backup.exists() or self.fit_finished()) and self.run_id_file.is_file():
            return self.run_id_file.read_text().strip() or None
        return None

    def fit_finished(self) -> bool:
        return self.fitted_weights.is_file()

    def previous_history(self) -> list[dict[str, float]]:
        if not self.history.is_file():
            return []
        rows = {}
        for line in self.history.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["epoch"]] = row  # an epoch redone after a kill keeps its last record
        return [rows[epoch] for epoch in sorted(rows)]

    # -- what a training writes ----------------------------------------------------------------------------
    def record_run(self, run_id: str) -> None:
        self.run_id_file.write_text(run_id)

    def callbacks(self, *between: keras.callbacks.Callback) -> list[keras.callbacks.Callback]:
        """For ``fit(..., best_weights=self.best_weights)``, whose best-weights keeper runs first: the history,
        then ``between`` (e.g. MLflow's epoch logger), the backup last. A kill in between makes the epoch run
        again (and be recorded twice, the last record winning), never leaves a finished epoch unrecorded. The
        backup keeps its previous copy, which Keras falls back to if a kill corrupted the latest one."""
        return [
            self._history_writer(), *between,
            keras.callbacks.BackupAndRestore(str(self.backup), double_checkpoint=True),
        ]  # fmt: skip

    def mark_fit_finished(self, model: keras.Model, averaged: dict[str, float] | None = None) -> None:
        """``fit`` returned and ``model`` holds its result (``averaged``: the weight average's val scores, when
        there was one): keep both, so that a kill from here on does not train again. (Keras deletes its backup
        when ``fit`` ends.) The weights file is written last: while it is missing the fit has not finished."""
        self.fitted_averaging.write_text(json.dumps(averaged))
        staged = self.fitted_weights.with_name(f"staged.{self.fitted_weights.name}")
        model.save_weights(str(staged))
        os.replace(staged, self.fitted_weights)

    def restore_fitted(self, model: keras.Model) -> dict[str, float] | None:
        """The fitted weights into ``model``; the weight average's val scores recorded with them, if any."""
        model.load_weights(str(self.fitted_weights))
        return json.loads(self.fitted_averaging.read_text()) if self.fitted_averaging.is_file() else None

    def clear(self) -> None:
        """The training is complete (outputs written): the next one starts fresh."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _history_writer(self) -> keras.callbacks.Callback:
        history_file = self.history

        class HistoryWriter(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                row = {"epoch": epoch, **{key: float(value) for key, value in (logs or {}).items()},
                       "epoch_seconds": time.perf_counter() - self.started}  # fmt: skip
                with history_file.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")

        return HistoryWriter()

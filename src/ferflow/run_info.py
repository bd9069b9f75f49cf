"""``reports/train/run.json``: what the train stage tells evaluate and register, as one typed record.

The train stage writes it; evaluate and register read it, and nothing else: which MLflow run holds the model,
which data it saw and which test split it is judged on. A missing or malformed file stops the reader with a
message naming the file and the field, instead of a KeyError three stages later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ferflow.errors import DataError
from ferflow.io import atomic_open


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    experiment_id: str
    model_uri: str  # the logged MLflow model register would register
    architecture: str
    class_names: list[str]
    data_hash: str  # all of clean.npz (images, labels, splits)
    train_data_hash: str  # the (oversampled) training arrays
    test_hash: str  # the test split's faces and labels: runs are compared only on the same one
    resumed: bool
    best_epoch: int
    epochs_run: int
    train_seconds: float
    best: dict[str, float]  # the epoch with the lowest val_loss: its losses and metrics
    # what the saved model holds: that epoch's weights, the last epoch's (train.restore_best_weights: false),
    # or (train.ema_epochs) the moving average, whose val loss was lower (the run's averaged_val_* metrics)
    weights: Literal["best_epoch", "last_epoch", "averaged"] = "best_epoch"
    keras_backend: str
    device_type: str  # as the backend reported it: CPU | GPU
    device_name: str
    data_parallel_devices: int
    git_commit: str

    @property
    def classes(self) -> str:
        """The class names as the run's ``ferflow.classes`` tag spells them."""
        return ",".join(self.class_names)

    def write(self, path: Path) -> None:
        with atomic_open(path) as handle:
            handle.write(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> RunInfo:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise DataError(f"{path}: no such file; run the train stage first") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}" for error in exc.errors()
            )
            raise DataError(
                f"{path}: not a run record of this ferflow version ({problems}); rerun the train stage"
            ) from None

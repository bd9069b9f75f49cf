"""Where the pipeline's files live, relative to the repository root (``dvc.yaml`` names the same paths).

Only constants and pure functions: importing this module creates nothing.
"""

from pathlib import Path

RAW_TABLE = Path("data/raw/fer2013.csv")
RAW_MANIFEST = Path("data/raw/manifest.json")
DOWNLOAD_CACHE = Path("data/external")

SUBSAMPLE_TABLE = Path("data/interim/subsample.csv")
SUBSAMPLE_SUMMARY = Path("data/interim/subsample.json")

CLEAN_ARRAYS = Path("data/processed/clean.npz")
QUARANTINE = Path("data/interim/quarantine.csv")
VALIDATION_REPORT = Path("reports/validate/gx_result.json")
VALIDATION_SUMMARY = Path("reports/validate/summary.md")
VALIDATION_METRICS = Path("reports/validate/metrics.json")

TRAIN_ARRAYS = Path("data/processed/train.npz")
AUGMENT_SUMMARY = Path("reports/augment/summary.json")
AUGMENT_PREVIEW = Path("reports/augment/preview.png")
AUGMENT_CLASS_COUNTS = Path("reports/augment/class_counts.png")

MODEL = Path("models/model.keras")
TRAIN_HISTORY = Path("reports/train/history.json")
TRAIN_RUN = Path("reports/train/run.json")
TRAIN_CURVES = Path("reports/train/training_curves.png")
TRAIN_CHECKPOINTS = Path("models/.checkpoints")

EVALUATE_METRICS = Path("reports/evaluate/metrics.json")
EVALUATE_CONFUSION_RECORDS = Path("reports/evaluate/confusion_records.json")
EVALUATE_CONFUSION = Path("reports/evaluate/confusion_matrix.json")
EVALUATE_REPORT = Path("reports/evaluate/classification_report.txt")
EVALUATE_PLOTS = Path("reports/evaluate/plots")

CV_METRICS = Path("reports/cv/metrics.json")

REGISTRATION = Path("reports/register/registration.json")
MODEL_CARD = Path("reports/register/model_card.md")
RETRAIN_LOCK = Path(".ferflow-retrain.lock")
REGISTRY_LOCK = Path(".ferflow-registry.lock")  # held while registering or promoting

MLFLOW_DB = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlruns")


def find_workspace_root(start: Path | None = None) -> Path:
    """The workspace the pipeline runs in: the nearest folder at or above ``start`` holding ``dvc.yaml``.
    Its ``params.yaml`` and default paths are the ones a stage uses; inside a DVC experiment's copy, the copy's
    (``dvc exp run -S`` changed the copy's params.yaml, not the project's)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


def find_repo_root(start: Path | None = None) -> Path:
    """The project's root, which owns the MLflow store and the registry locks: the workspace root, except in
    a DVC experiment's copy.

    ``dvc exp run --temp`` and queued experiments run in a copy under ``<root>/.dvc/tmp/exps/``; that copy
    has its own ``dvc.yaml``, but results belong to the real project, so a copy inside ``.dvc`` resolves to
    the folder that holds that ``.dvc``.
    """
    start = (start or Path.cwd()).resolve()
    if ".dvc" in start.parts:
        return Path(*start.parts[: start.parts.index(".dvc")])
    return find_workspace_root(start)

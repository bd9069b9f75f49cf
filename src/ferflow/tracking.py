"""MLflow store resolution and run bookkeeping, in one place.

The default store is ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlruns/``, both resolved
from the repository root (see :func:`ferflow.paths.find_repo_root`) so that DVC's temporary experiment
copies log to the same place; ``MLFLOW_TRACKING_URI`` overrides the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferflow import paths
from ferflow.errors import DataError, Terminated
from ferflow.io import array_digest, exclusive_lock

if TYPE_CHECKING:
    from ferflow.params import Params


def tracking_uri(repo_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(repo_root / paths.MLFLOW_DB).resolve()}"


# Columns where MLflow's sqlite store writes absolute artifact locations (MLflow 3.x schema).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"), ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"), ("model_versions", "storage_location"), ("model_versions", "source"),
)  # fmt: skip


def relocate_store(repo_root: Path) -> str | None:
    """Point a moved or copied repository's store at its own artifacts; the old root if it moved, else None.

    MLflow's sqlite store records absolute artifact locations (it resolves relative ones when it creates an
    experiment), so a clone that is moved or copied would keep reading, or lose, the artifacts under the old
    path. The store's root is read from ferflow's experiments' locations (``<root>/mlruns``); when it is not this
    repository, every location under the old ``<root>/mlruns`` is rewritten to this one, in one transaction.
    Only the project's own sqlite store is touched, never a store named by ``MLFLOW_TRACKING_URI``.
    """
    import re
    import sqlite3

    database = repo_root / paths.MLFLOW_DB
    if os.environ.get("MLFLOW_TRACKING_URI") or not database.is_file():
        return None
    here = str((repo_root / paths.MLFLOW_ARTIFACTS).resolve())
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection, connection:
        try:
            # ferflow's experiments: MLflow's own "Default" one sits wherever the first client's cwd was
            locations = [row[0] for row in connection.execute(
                "SELECT artifact_location FROM experiments WHERE name != 'Default'")]  # fmt: skip
        except sqlite3.OperationalError:
            return None  # not an MLflow store yet
        old = None
        for location in locations:
            match = re.fullmatch(r"file://(/.*/mlruns)", location or "")  # as experiment_id() creates them
            if match and match.group(1) != here:
                old = match.group(1)
                break
        if old is None:
            return None
        for table, column in _LOCATION_COLUMNS:
            with contextlib.suppress(sqlite3.OperationalError):  # a table an older MLflow did not have
                connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? OR {column} LIKE ?",
                    (here, len(old) + 1, old, f"{old}/%"),
                )  # fmt: skip
                connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR {column} LIKE ?",
                    (f"file://{here}", len(old) + 8, f"file://{old}", f"file://{old}/%"),
                )  # fmt: skip
    return old.removesuffix("/mlruns")


def client(repo_root: Path) -> Any:
    """A client of the project's store that leaves MLflow's global URI alone."""
    import mlflow

    uri = tracking_uri(repo_root)
    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(uri)
    # Parallel experiments (`dvc queue start -j N`) open the store at the same moment. MLflow creates a new
    # sqlite store's tables, or migrates an old one, on first use, and two processes doing that at once fail
    # ("duplicate column name", alembic "expected to match one row"): measured, 4 processes on a new store,
    # 3 failed. So the first use happens under a lock beside the database; writes after that are safe (sqlite
    # waits for its own lock).
    database = Path(uri.removeprefix("sqlite:///"))
    with exclusive_lock(database.with_name(database.name + ".lock")):
        relocate_store(repo_root)
        project_client = mlflow.MlflowClient(uri)
        project_client.search_experiments(max_results=1)  # creates or migrates the tracking tables
        project_client.search_registered_models(max_results=1)  # and the registry's
    return project_client


@contextlib.contextmanager
def store(repo_root: Path) -> Iterator[Any]:
    """MLflow pointed at the project's store for the length of the block, with a client of it: the one place
    that sets MLflow's tracking URI. The caller's URI (and ``MLFLOW_TRACKING_URI``, which MLflow's setter also
    writes) come back afterwards, so a library call such as ``ferflow.predict`` never changes the caller's
    MLflow setup, and a process that works on two repositories never logs into the wrong one."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as service

    uri = tracking_uri(repo_root)
    previous_uri, previous_env = service._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    project_client = client(repo_root)
    mlflow.set_tracking_uri(uri)
    try:
        yield project_client
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def artifact_location(repo_root: Path) -> str:
    return (repo_root / paths.MLFLOW_ARTIFACTS).resolve().as_uri()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"train.learning_rate": "0.001", ...}`` as MLflow stores them (strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit(repo_root: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


def device() -> tuple[str, str]:
    """("GPU", model name) when the Keras backend sees a GPU, else ("CPU", processor name)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return "GPU", str(details.get("device_name", gpus[0].name))
        elif backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                return "GPU", str(gpus[0].device_kind)
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return "GPU", torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a device probe must never stop training
        pass
    return "CPU", _cpu_name()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def runtime_tags(repo_root: Path) -> dict[str, str]:
    """What the run ran on, as the backend reports it; ``ferflow.data_parallel_devices`` is how many devices
    each batch is split over under the distribution Keras holds now (set by ``compiled_model``)."""
    import keras

    from ferflow.models.training import data_parallel_count

    device_type, device_name = device()
    return {
        "mlflow.source.git.commit": git_commit(repo_root),  # MLflow's own key: the UI links it
        "ferflow.keras_backend": keras.backend.backend(),
        "ferflow.keras_version": keras.__version__,
        "ferflow.device_type": device_type,
        "ferflow.device_name": device_name,
        "ferflow.data_parallel_devices": str(data_parallel_count()),
        # what train.precision resolved to (auto differs by machine), set by compiled_model like the distribution
        "ferflow.dtype_policy": keras.mixed_precision.dtype_policy().name,
    }


def experiment_id(client, name: str, repo_root: Path) -> str:
    """The id of experiment ``name``, created if it is new: with its artifacts under ``<repo>/mlruns`` for a
    local store; where the server says for a tracking server (``--serve-artifacts``: uploaded through it)."""
    from mlflow.exceptions import MlflowException

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None if tracking_uri(repo_root).startswith(("http://", "https://")) else artifact_location(repo_root)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        created = client.get_experiment_by_name(name)  # a parallel experiment created it first
        if created is None:
            raise
        return created.experiment_id


def log_bytes(data: bytes, artifact_file: str) -> None:
    """``data`` as the active run's artifact ``artifact_file`` (``plots/curves.png``): MLflow logs files, text,
    dicts and figures, not bytes, so they pass through a temporary file."""
    import tempfile

    import mlflow

    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        staged.write_bytes(data)
        mlflow.log_artifact(str(staged), artifact_path=folder or None)


def log_dataset(images: np.ndarray, labels: np.ndarray, name: str, source: Path, context: str) -> None:
    """Record a split as an MLflow dataset input of the active run (the run page's "Datasets"): its name,
    digest (``ferflow.io.array_digest``), file, schema and size. The faces themselves are not uploaded."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (schemes "" and "file": the same class) and warns
        # on every local path that it "can be interpreted in multiple ways"; either reading is this file.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = mlflow.data.from_numpy(
            np.asarray(images), targets=np.asarray(labels), source=str(Path(source).resolve()), name=name,
            digest=array_digest(images, labels),
        )  # fmt: skip
    mlflow.log_input(dataset, context=context)


def data_tags(train: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> dict[str, str]:
    """Tags that say which data a model saw and which test split it is judged on (for fair comparisons)."""
    is_test = clean["splits"] == "test"
    return {
        "ferflow.data_hash": array_digest(clean["images"], clean["labels"], clean["splits"]),
        "ferflow.train_data_hash": array_digest(train["images"], train["labels"]),
        "ferflow.test_hash": array_digest(clean["images"][is_test], clean["labels"][is_test]),
        "ferflow.classes": ",".join(str(name) for name in clean["class_names"]),
        **quality_tags(clean),
    }


def quality_tags(clean: dict[str, np.ndarray]) -> dict[str, str]:
    """What validation found in the data (copies per pair of splits, label conflicts, where val and test came
    from), as tags, so that runs show the leakage that was removed."""
    if "quality" not in clean:
        return {}
    quality = json.loads(str(clean["quality"]))
    duplicates = quality.get("duplicates", {})
    tags = {f"ferflow.data.copies.{pair}": str(count) for pair, count in duplicates.get("pairs", {}).items()}
    tags["ferflow.data.label_conflict_faces"] = str(duplicates.get("label_conflict_faces", 0))
    tags["ferflow.data.malformed_rows"] = str(quality.get("malformed_rows", 0))
    for split, provenance in quality.get("split_provenance", {}).items():
        tags[f"ferflow.data.{split}_from"] = provenance[:500]
    return tags


def training_params(params: Params) -> dict[str, Any]:
    """The params that shape a trained model (logged on its run): exactly the ones the train stage declares
    in ``dvc.yaml``. Evaluation and cv settings are logged by their own stages; the preview grid's size shapes
    no model."""
    dumped = params.model_dump(by_alias=True)
    dumped["augment"].pop("preview_images", None)
    return {key: value for key, value in dumped.items() if key not in {"evaluate", "cv", "register"}}


def existing_run(client, run_id: str) -> Any:
    """The run ``run_id`` of the store; a DataError naming the store if it holds no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise DataError(f"MLflow run {run_id} is not in the store {client.tracking_uri}: the run facts name a "
                        "run of another store or a deleted one; rerun the train stage") from None


@contextlib.contextmanager
def tracked_run(
    repo_root: Path, experiment: str = "ferflow", run_name: str | None = None,
    tags: Mapping[str, str] | None = None, parent_run_id: str | None = None, run_id: str | None = None,
) -> Iterator[Any]:  # fmt: skip
    """A started MLflow run that ends FINISHED, or FAILED (never left RUNNING) if the block raises.

    ``run_id`` reopens an existing run (evaluation logging into its training run, a resumed training);
    otherwise a new run of ``experiment`` starts, nested under ``parent_run_id`` if given.
    """
    import mlflow

    with store(repo_root) as client:
        status_on_error = "FAILED"
        if run_id is not None:
            # A finished run reopened to add to it (evaluation) stays finished if the addition fails: the
            # training itself did not fail. A run being resumed (RUNNING or FAILED before) ends FAILED.
            if existing_run(client, run_id).info.status == "FINISHED":
                status_on_error = "FINISHED"
            run = mlflow.start_run(run_id=run_id, tags=dict(tags or {}))
        else:
            exp_id = experiment_id(client, experiment, repo_root)
            dvc_experiment = os.environ.get("DVC_EXP_NAME")  # set by `dvc exp run` for the stages it runs
            if dvc_experiment:
                run_name = f"{run_name} [{dvc_experiment}]" if run_name else dvc_experiment
                tags = {**(tags or {}), "ferflow.dvc_experiment": dvc_experiment}
            run = mlflow.start_run(
                experiment_id=exp_id, run_name=run_name, tags=dict(tags or {}), nested=parent_run_id is not None,
                parent_run_id=parent_run_id,
            )  # fmt: skip
        try:
            yield run
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, Terminated)):
                _release_interrupted_frames(exc)
            mlflow.end_run(status=status_on_error)
            raise
        mlflow.end_run(status="FINISHED")


def _release_interrupted_frames(exc: BaseException) -> None:
    """Ctrl-C or SIGTERM can land inside an MLflow write, whose sqlite connection then still holds the write
    lock from the frames the exception's traceback keeps alive, so ending the run FAILED would find the
    database locked. Clearing those frames' locals (the traceback's lines stay) and collecting lets the
    connection roll back and go."""
    import gc
    import traceback

    traceback.clear_frames(exc.__traceback__)
    gc.collect()


def log_keras_model(model, input_example, pip_requirements: list[str]) -> Any:
    """Log ``model`` as the run's MLflow model (Keras flavour), with its signature and an input example.

    ``mlflow.keras.log_model(..., input_example=...)`` in MLflow 3.x writes the example before it creates
    the model folder and fails with FileNotFoundError; the same save behind a flavour shim that creates the
    folder first logs the identical model (a LoggedModel with the keras and python_function flavours).
    """
    import types

    import mlflow
    from mlflow.models import Model

    def save_model(path: str, **kwargs: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, **kwargs)

    import keras

    flavor = types.SimpleNamespace(__name__=mlflow.keras.__name__, save_model=save_model)
    signature = mlflow.models.infer_signature(input_example, model.predict(input_example, verbose=0))
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # MLflow's own check of the example would draw progress bars
    try:
        return Model.log(
            artifact_path=None, name="model", flavor=flavor, model=model, signature=signature,
            input_example=input_example, pip_requirements=pip_requirements,
        )  # fmt: skip
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


def epoch_logger(prefix: str = ""):
    """A Keras callback logging every epoch's losses and metrics, and the learning rate, as MLflow step metrics
    of the active run (``prefix`` names them apart, e.g. per fold)."""
    import keras
    import mlflow
    import numpy as np

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            metrics = {key: float(value) for key, value in (logs or {}).items() if np.isscalar(value)}
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            mlflow.log_metrics({f"{prefix}{key}": value for key, value in metrics.items()}, step=epoch)

    return MlflowEpochLogger()

"""MLflow store resolution and run bookkeeping, in one place.

The default store is ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlruns/``, both resolved
from the repository root (see :func:`ferflow.paths.find_repo_root`) so that DVC's temporary experiment
copies log to the same place; ``MLFLOW_TRACKING_URI`` overrides the store.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ferflow import paths


def tracking_uri(repo_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(repo_root / paths.MLFLOW_DB).resolve()}"


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
    import keras

    device_type, device_name = device()
    return {
        "ferflow.git_commit": git_commit(repo_root),
        "ferflow.keras_backend": keras.backend.backend(),
        "ferflow.keras_version": keras.__version__,
        "ferflow.device_type": device_type,
        "ferflow.device_name": device_name,
    }


def experiment_id(client, name: str, repo_root: Path) -> str:
    """The id of experiment ``name``, created with its artifacts under ``<repo>/mlruns`` if it is new."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(repo_root))


@contextlib.contextmanager
def tracked_run(
    repo_root: Path, experiment: str, run_name: str, tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Any]:  # fmt: skip
    """A started MLflow run that ends FINISHED, or FAILED (never left RUNNING) if the block raises."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(repo_root))
    client = mlflow.MlflowClient()
    exp_id = experiment_id(client, experiment, repo_root)
    run = mlflow.start_run(
        experiment_id=exp_id, run_name=run_name, tags=dict(tags or {}), nested=parent_run_id is not None,
        parent_run_id=parent_run_id,
    )  # fmt: skip
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")

"""The whole DAG under each Keras backend on the CPU, and the saved models read across backends.

`make test-backends` runs this file (marker ``backends``, left out of `make test` for its time): it installs
the CPU build of PyTorch beside the locked TensorFlow and JAX. A backend that is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ferflow import tracking
from tests.e2e.dag import STAGES, make_repo, run, stages_run

pytestmark = [pytest.mark.slow, pytest.mark.backends]

BACKENDS = ("tensorflow", "jax", "torch")


def installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def with_backend(backend: str):
    missing = f"{backend} is not installed (make test-backends installs it)"
    return pytest.param(backend, marks=pytest.mark.skipif(not installed(backend), reason=missing))


ALL = [with_backend(backend) for backend in BACKENDS]

# Loads a .keras file under the backend named by KERAS_BACKEND and prints its labels for the given faces.
PREDICT_UNDER_BACKEND = """
import json, sys
import keras, numpy as np
from ferflow.models.layers import load_keras_model
from ferflow.models.serving import class_names_of, takes_raw_faces
from ferflow.models.training import predict_proba
model = load_keras_model(sys.argv[1])
faces = np.load(sys.argv[2])
proba = predict_proba(model, faces)
names = class_names_of(model)
print(json.dumps({"backend": keras.backend.backend(), "raw": takes_raw_faces(model),
                  "labels": [names[i] for i in proba.argmax(1)], "proba": proba.tolist()}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """backend -> its temporary repository, after `dvc repro` under that backend (each backend once per module)."""
    repos: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in repos:
            repo = make_repo(tmp_path_factory.mktemp(backend))
            result = run(["dvc", "repro"], repo, env={"KERAS_BACKEND": backend})
            repos[backend] = repo
            (repo / "repro.log").write_text(result.stdout + result.stderr)
        return repos[backend]

    return get


@pytest.mark.parametrize("backend", ALL)
def test_the_whole_dag_runs_under_the_backend(trained, backend):
    repo = trained(backend)
    assert stages_run((repo / "repro.log").read_text()) == STAGES
    run_info = json.loads((repo / "reports/train/run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    training = client.get_run(run_info["run_id"])
    # What ran is what the backend reported in that process, not what the environment asked for.
    assert training.data.tags["ferflow.keras_backend"] == backend
    assert training.data.tags["ferflow.device_type"] == "CPU" and training.data.tags["ferflow.device_name"]
    assert training.info.status == "FINISHED" and "test_accuracy" in training.data.metrics
    assert len(client.get_metric_history(training.info.run_id, "val_loss")) == 2  # one per epoch
    registration = json.loads((repo / "reports/register/registration.json").read_text())
    assert registration["champion_version"] == 1
    version = client.get_model_version_by_alias(registration["model_name"], "champion")
    assert version.run_id == run_info["run_id"] and version.tags["keras_backend"] == backend
    with tracking.store(repo):  # the logged model's pip requirements pin the backend that trained it
        requirements = Path(mlflow.pyfunc.get_model_dependencies(run_info["model_uri"])).read_text()
    assert any(line.startswith(f"{backend}==") for line in requirements.splitlines()), requirements


def test_each_backends_model_predicts_the_same_labels_under_every_backend(trained, tmp_path):
    available = [backend for backend in BACKENDS if installed(backend)]
    if len(available) < 2:
        pytest.skip("needs at least two backends installed")
    clean = np.load(trained(available[0]) / "data/processed/clean.npz")
    faces = clean["images"][clean["splits"] == "test"][:24]
    np.save(tmp_path / "faces.npy", faces)
    for trained_under in available:
        model_file = trained(trained_under) / "models/model.keras"
        answers = {}
        for loaded_under in available:
            result = subprocess.run([sys.executable, "-c", PREDICT_UNDER_BACKEND, str(model_file),
                                     str(tmp_path / "faces.npy")], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "KERAS_BACKEND": loaded_under})  # fmt: skip
            assert result.returncode == 0, f"{trained_under} model under {loaded_under}:\n{result.stderr[-3000:]}"
            answers[loaded_under] = json.loads(result.stdout.strip().splitlines()[-1])
            assert answers[loaded_under]["backend"] == loaded_under and answers[loaded_under]["raw"]
        reference = answers[trained_under]
        for loaded_under, answer in answers.items():
            assert answer["labels"] == reference["labels"], f"{trained_under} model under {loaded_under}"
            np.testing.assert_allclose(answer["proba"], reference["proba"], atol=1e-4)

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
from tests.e2e.dag import STAGES, edit_params, make_repo, run, stages_run

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


@pytest.mark.skipif(not installed("jax"), reason="jax is not installed (make test-backends installs it)")
def test_the_gpu_recipe_dag_runs_under_jax_on_two_virtual_devices_and_registers_only_gpu_runs(tmp_path):
    """Without a GPU, the gpu recipe's whole DAG under JAX with 2 virtual devices standing in for 2 GPUs, in
    mixed bfloat16: each batch is split over both devices. `register.require_gpu: true` (the recipe's) then
    refuses the CPU-trained run, naming why, and registers nothing; with it off the run becomes champion."""
    repo = make_repo(tmp_path)
    run(["ferflow", "recipe", "apply", "gpu"], repo)
    edit_params(repo, model__width=8, model__depth=2, model__dense_units=16, train__epochs=2,
                train__batch_size=64, train__precision="mixed_bfloat16", cv__folds=2)  # fmt: skip
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    refused = run(["dvc", "repro"], repo, check=False, env=env)
    assert refused.returncode != 0
    assert "no finished, evaluated run trained on a GPU (register.require_gpu is true)" in refused.stderr
    assert not (repo / "reports/register/registration.json").exists()
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert client.search_registered_models() == []

    run_info = json.loads((repo / "reports/train/run.json").read_text())
    tags = client.get_run(run_info["run_id"]).data.tags
    assert tags["ferflow.keras_backend"] == "jax" and tags["ferflow.device_type"] == "CPU"
    assert tags["ferflow.data_parallel_devices"] == "2"
    assert client.get_run(run_info["run_id"]).data.params["train.precision"] == "mixed_bfloat16"
    cv_metrics = json.loads((repo / "reports/cv/metrics.json").read_text())
    assert cv_metrics["folds"] == 2 and "ensemble" in json.dumps(cv_metrics)

    edit_params(repo, register__require_gpu=False)
    registered = run(["dvc", "repro"], repo, env=env)
    assert stages_run(registered.stdout) == ["register"]
    assert json.loads((repo / "reports/register/registration.json").read_text())["champion_version"] == 1

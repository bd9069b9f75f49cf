"""Registration, the promotion gate and rollback against a real sqlite MLflow store in a temporary folder.

Runs are real MLflow runs with a real (tiny) Keras model logged; their tags and test metrics are set the way
the train and evaluate stages set them, so each rule can be tried on chosen numbers.
"""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pytest

from ferflow import registry, tracking
from ferflow.cli import main
from ferflow.io import write_json
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from ferflow.stages import register

CLASSES = ",".join(EMOTIONS)


@pytest.fixture(scope="module")
def tiny_model():
    return keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")])


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")  # every default, for the `ferflow` commands
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.fixture
def make_run(repo, tiny_model):
    def make(f1: float, data_hash="d1", test_hash="t1", device="CPU", classes=CLASSES, evaluated=True) -> str:
        tags = {"ferflow.stage": "train", "ferflow.data_hash": data_hash, "ferflow.test_hash": test_hash,
                "ferflow.classes": classes, "ferflow.device_type": device, "ferflow.architecture": "cnn"}  # fmt: skip
        if evaluated:
            tags["ferflow.evaluated"] = "true"
        with tracking.tracked_run(repo, "ferflow", "train-simple_cnn", tags=tags) as run:
            mlflow.log_params({"model.architecture": "simple_cnn", "data.source": "synthetic"})
            mlflow.log_metrics({"test_f1_macro": f1, "test_accuracy": f1 + 0.01, "train_seconds": 3.0})
            info = tracking.log_keras_model(tiny_model, np.zeros((1, 48, 48, 1), np.float32), ["keras"])
            mlflow.set_tag("ferflow.model_uri", info.model_uri)
        write_json(repo / "run.json", {"run_id": run.info.run_id, "data_hash": data_hash, "test_hash": test_hash,
                                       "classes": classes, "device_type": device})  # fmt: skip
        return run.info.run_id

    return make


def client_for(repo):
    mlflow.set_tracking_uri(tracking.tracking_uri(repo))
    return mlflow.MlflowClient()


def run_register(repo, **settings) -> dict:
    params = parse_params({"register": settings})
    return register.run(params, repo / "run.json", repo / "clean.npz", repo / "registration.json",
                        repo / "model_card.md", repo)  # fmt: skip


def aliases(repo) -> dict[str, str]:
    return {alias: str(v) for alias, v in client_for(repo).get_registered_model("ferflow-fer").aliases.items()}


def test_only_runs_on_the_same_data_classes_and_test_split_are_eligible(repo, make_run):
    best = make_run(0.70)
    make_run(0.95, data_hash="other")
    make_run(0.96, test_hash="other")
    make_run(0.97, classes="happy,sad")
    make_run(0.98, evaluated=False)
    make_run(0.60)  # writes run.json last: the pipeline's own run is this one, on d1/t1
    client = client_for(repo)
    experiment = client.get_experiment_by_name("ferflow").experiment_id
    runs = registry.eligible_runs(client, experiment, "d1", CLASSES, "t1", require_gpu=False)
    assert len(runs) == 2
    assert registry.best_run(runs, "test_f1_macro").info.run_id == best
    summary = run_register(repo)
    assert summary["run_id"] == best and summary["eligible_runs"] == 2
    assert summary["challenger_version"] == 1 and summary["champion_version"] == 1 and summary["promoted"]
    version = client.get_model_version("ferflow-fer", "1")
    assert version.tags["run_id"] == best and version.tags["data_hash"] == "d1"
    assert float(version.tags["test_f1_macro"]) == pytest.approx(0.70)
    assert version.tags["device_type"] == "CPU" and "git_commit" in version.tags
    card = (repo / "model_card.md").read_text()
    assert card.startswith("# Model card: ferflow-fer version 1") and "## Out of scope" in card
    assert "macro-F1 0.7000" in card and "Synthetic data" in card
    artifacts = {a.path for a in client.list_artifacts(best)}
    assert "model_card.md" in artifacts
    assert json.loads((repo / "registration.json").read_text()) == summary


def test_a_registered_run_is_not_registered_again(repo, make_run):
    make_run(0.7)
    first = run_register(repo)
    second = run_register(repo)
    assert first["registered_new_version"] and not second["registered_new_version"]
    assert len(client_for(repo).search_model_versions("name = 'ferflow-fer'")) == 1
    assert "already the champion" in second["gate"]


def test_require_gpu_admits_only_gpu_trained_runs(repo, make_run):
    make_run(0.9, device="CPU")
    with pytest.raises(registry.RegistryError, match="trained on a GPU .register.require_gpu is true"):
        run_register(repo, require_gpu=True)
    assert client_for(repo).search_registered_models() == []  # the registry was not touched
    assert not (repo / "registration.json").exists()
    gpu = make_run(0.5, device="GPU")
    summary = run_register(repo, require_gpu=True)
    assert summary["run_id"] == gpu  # the better CPU run is not eligible


def test_gate_promotes_a_better_challenger_and_keeps_the_champion_otherwise(repo, make_run):
    make_run(0.70)
    run_register(repo)
    make_run(0.80)  # better by more than the margin
    promoted = run_register(repo, promotion_margin=0.05)
    assert promoted["promoted"] and aliases(repo) == {"champion": "2", "challenger": "2"}
    make_run(0.83)  # better, but by less than the margin
    kept = run_register(repo, promotion_margin=0.05)
    assert not kept["promoted"] and "does not beat champion version 2" in kept["gate"]
    assert aliases(repo) == {"champion": "2", "challenger": "3"}
    code = main(["promote"])  # the default margin 0.005 lets version 3 through
    assert code == 0 and aliases(repo)["champion"] == "3"


def test_no_auto_promote_leaves_champion_to_the_promote_command(repo, make_run, capsys):
    make_run(0.7)
    summary = run_register(repo, auto_promote=False)
    assert summary["champion_version"] is None and aliases(repo) == {"challenger": "1"}
    assert main(["promote"]) == 0
    assert "promoted to champion (there was no champion)" in capsys.readouterr().out
    assert aliases(repo) == {"champion": "1", "challenger": "1"}
    assert main(["promote"]) == 10  # nothing left to promote: kept
    assert "already the champion" in capsys.readouterr().out


def test_rollback_walks_back_through_earlier_champions(repo, make_run, capsys):
    for f1 in (0.6, 0.7, 0.8):
        make_run(f1)
        run_register(repo)
    assert aliases(repo)["champion"] == "3"
    assert main(["promote", "--rollback"]) == 0
    assert aliases(repo)["champion"] == "2"
    assert main(["promote", "--rollback"]) == 0
    assert aliases(repo)["champion"] == "1"
    assert main(["promote", "--rollback"]) == 1
    assert "no earlier champion to roll back to" in capsys.readouterr().err
    assert aliases(repo)["champion"] == "1"


@pytest.mark.parametrize("stop_after", ["history", "alias"])
def test_an_interrupted_promotion_leaves_champion_on_a_valid_version(repo, make_run, stop_after):
    make_run(0.6)
    run_register(repo)
    make_run(0.9)
    run_register(repo, auto_promote=False)
    client = client_for(repo)

    def crash(step: str) -> None:
        if step == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.promote(client, "ferflow-fer", "test_f1_macro", 0.0, on_step=crash)
    champion = client.get_model_version_by_alias("ferflow-fer", "champion")
    assert str(champion.version) == ("1" if stop_after == "history" else "2")
    assert client.get_model_version("ferflow-fer", champion.version).status == "READY"
    # Finishing the job (or rolling back) afterwards still works from that state.
    registry.promote(client, "ferflow-fer", "test_f1_macro", 0.0)
    assert str(client.get_model_version_by_alias("ferflow-fer", "champion").version) == "2"
    assert registry.rollback(client, "ferflow-fer").champion == "1"


def test_champion_on_another_test_split_is_rescored_or_the_gate_refuses(repo, make_run):
    make_run(0.7, test_hash="old")
    run_register(repo)
    make_run(0.75, test_hash="new")
    run_register(repo, auto_promote=False)
    client = client_for(repo)
    refused = registry.promote(client, "ferflow-fer", "test_f1_macro", 0.0)
    assert not refused.promoted and "no test_f1_macro on the challenger's test split" in refused.reason
    kept = registry.promote(client, "ferflow-fer", "test_f1_macro", 0.0, rescore=lambda version: 0.9)
    assert not kept.promoted and kept.metrics["champion_test_f1_macro"] == 0.9
    won = registry.promote(client, "ferflow-fer", "test_f1_macro", 0.0, rescore=lambda version: 0.5)
    assert won.promoted and won.champion == "2"


def test_models_lists_versions_with_aliases_and_metrics(repo, make_run, capsys):
    assert main(["models"]) == 0
    assert "no versions of 'ferflow-fer' are registered yet" in capsys.readouterr().out
    make_run(0.5)
    run_register(repo)
    make_run(0.6)
    run_register(repo, auto_promote=False)
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "registered model ferflow-fer"
    assert lines[2].split()[:3] == ["2", "challenger", "0.6000"]
    assert lines[3].split()[:3] == ["1", "champion", "0.5000"]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["aliases"]) for r in rows] == [(2, ["challenger"]), (1, ["champion"])]

"""Registration, the promotion gate and rollback against a real sqlite MLflow store in a temporary folder.

Runs are real MLflow runs with a real (tiny) Keras model logged; their tags and val/test metrics are set the
way the train and evaluate stages set them, so each rule can be tried on chosen numbers. Each model reads
its prediction from one pixel of the face (``reader``), so the gate's paired test can be given two models
whose predictions on the same test faces are chosen face by face.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ferflow import registry, tracking
from ferflow.cli import main
from ferflow.errors import DataError
from ferflow.io import write_npz
from ferflow.params import parse_params
from ferflow.run_info import RunInfo
from ferflow.schema import EMOTIONS
from ferflow.stages import register
from tests.conftest import PIXEL_STEP as STEP
from tests.conftest import pixel_reader as reader

CLASSES = ",".join(EMOTIONS)
N_FACES = 400
LABELS = np.arange(N_FACES) % 7


def predictions(right: int, skip: int = 0) -> np.ndarray:
    """Predicted labels that are right on the first ``right`` faces after the first ``skip`` (and on none of
    those) and wrong (label + 1) on the rest."""
    wrong = (LABELS + 1) % 7
    faces = np.arange(N_FACES)
    return np.where((faces >= skip) & (faces < skip + right), LABELS, wrong)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")  # every default, for the `ferflow` commands
    (tmp_path / "data/processed").mkdir(parents=True)
    write_faces(tmp_path, {})
    yield tmp_path
    mlflow.set_tracking_uri(None)


def write_faces(repo, answers: dict[int, np.ndarray]) -> None:
    """The clean arrays' test split: face i holds, in pixel p, the answer of the model that reads p."""
    images = np.full((N_FACES, 48, 48), 7, np.uint8)
    for pixel, predicted in answers.items():
        images.reshape(N_FACES, -1)[:, pixel] = predicted * STEP
    clean = {"images": images, "labels": LABELS, "splits": np.array(["test"] * N_FACES),
             "class_names": np.array(EMOTIONS)}  # fmt: skip
    write_npz(repo / "clean.npz", **clean)
    write_npz(repo / "data/processed/clean.npz", **clean)  # where `ferflow promote` looks by default


@pytest.fixture
def make_run(repo):
    def make(valid_f1: float, test_f1: float | None = None, reads: int = 0, data_hash="d1", test_hash=None,
             device="CPU", classes=CLASSES, evaluated=True) -> str:  # fmt: skip
        test_hash = test_hash or faces_hash(repo)  # by default, judged on the test faces in clean.npz
        tags = {"ferflow.stage": "train", "ferflow.data_hash": data_hash, "ferflow.test_hash": test_hash,
                "ferflow.classes": classes, "ferflow.device_type": device, "ferflow.architecture": "cnn"}  # fmt: skip
        if evaluated:
            tags["ferflow.evaluated"] = "true"
        test_f1 = valid_f1 if test_f1 is None else test_f1
        with tracking.tracked_run(repo, "ferflow", "train-simple_cnn", tags=tags) as run:
            mlflow.log_params({"model.architecture": "simple_cnn", "data.source": "synthetic"})
            mlflow.log_metrics({"valid_f1_macro": valid_f1, "valid_accuracy": valid_f1 + 0.01,
                                "test_f1_macro": test_f1, "test_accuracy": test_f1 + 0.01, "train_seconds": 3.0})
            info = tracking.log_keras_model(reader(reads), np.zeros((1, 48, 48, 1), np.float32), ["keras"])
            mlflow.set_tag("ferflow.model_uri", info.model_uri)
        RunInfo(
            run_id=run.info.run_id, experiment_id=run.info.experiment_id, model_uri=info.model_uri,
            architecture="cnn", class_names=classes.split(","), data_hash=data_hash, train_data_hash="t",
            test_hash=test_hash, resumed=False, best_epoch=0, epochs_run=1, train_seconds=3.0, best={},
            keras_backend="tensorflow", device_type=device, device_name=device, data_parallel_devices=1, git_commit="c",
        ).write(repo / "run.json")  # fmt: skip
        return run.info.run_id

    return make


def faces_hash(repo) -> str:
    return register.test_faces("ferflow-fer", repo / "clean.npz")[2]


def client_for(repo):
    mlflow.set_tracking_uri(tracking.tracking_uri(repo))
    return mlflow.MlflowClient()


def run_register(repo, **settings) -> dict:
    params = parse_params({"register": settings})
    return register.run(params, repo / "run.json", repo / "clean.npz", repo / "registration.json",
                        repo / "model_card.md", repo)  # fmt: skip


def aliases(repo) -> dict[str, str]:
    return {alias: str(v) for alias, v in client_for(repo).get_registered_model("ferflow-fer").aliases.items()}


def champion_and_challenger(repo, make_run, champion_right: int, challenger_right: int, **champion_run):
    """Version 1 champion (reads pixel 0), version 2 challenger (reads pixel 1) not yet gated; they get
    ``champion_right`` and ``challenger_right`` of the test faces right."""
    write_faces(repo, {0: predictions(champion_right), 1: predictions(challenger_right)})
    make_run(0.5, reads=0, **champion_run)
    run_register(repo)
    make_run(0.7, reads=1)
    run_register(repo, auto_promote=False)
    return client_for(repo)


def gate_params(**settings):
    return parse_params({"register": {"gate": settings}}).registry.gate


def test_only_runs_on_the_same_data_classes_and_test_split_are_eligible(repo, make_run):
    best = make_run(0.70)
    make_run(0.95, data_hash="other")
    make_run(0.96, test_hash="other")
    make_run(0.97, classes="happy,sad")
    make_run(0.98, evaluated=False)
    make_run(0.60)  # writes run.json last: the pipeline's own run is this one, on d1/t1
    client = client_for(repo)
    experiment = client.get_experiment_by_name("ferflow").experiment_id
    runs = registry.eligible_runs(client, experiment, "d1", CLASSES, faces_hash(repo), require_gpu=False)
    assert len(runs) == 2
    assert registry.best_run(runs, "valid_f1_macro").info.run_id == best
    summary = run_register(repo)
    assert summary["run_id"] == best and summary["eligible_runs"] == 2
    assert summary["challenger_version"] == 1 and summary["champion_version"] == 1 and summary["promoted"]
    version = client.get_model_version("ferflow-fer", "1")
    assert version.tags["run_id"] == best and version.tags["data_hash"] == "d1"
    assert float(version.tags["valid_f1_macro"]) == pytest.approx(0.70)
    assert version.tags["device_type"] == "CPU" and "git_commit" in version.tags
    assert version.tags["ranked_by"] == "valid_f1_macro"
    card = (repo / "model_card.md").read_text()
    assert card.startswith("# Model card: ferflow-fer version 1") and "## Out of scope" in card
    assert "chosen on val (macro-F1 0.7000)" in card and "Synthetic data" in card
    assert "## How each split was used" in card and "It chose nothing else" in card
    assert "Promoted: there was no champion." in card
    assert client.get_model_version("ferflow-fer", "1").description == card  # the whole card, not its head
    artifacts = {a.path for a in client.list_artifacts(best)}
    assert "model_card.md" in artifacts
    assert json.loads((repo / "registration.json").read_text()) == summary


def test_register_ranks_by_val_even_when_test_disagrees(repo, make_run):
    by_val = make_run(0.70, test_f1=0.55)
    make_run(0.60, test_f1=0.90)  # the better test score must not choose it
    summary = run_register(repo)
    assert summary["run_id"] == by_val and summary["metric"] == "valid_f1_macro"
    assert summary["value"] == pytest.approx(0.70)


def test_register_metric_is_a_val_metric(repo):
    with pytest.raises(Exception, match=r"register.metric: Input should be 'valid_f1_macro'"):
        parse_params({"register": {"metric": "test_f1_macro"}})
    with pytest.raises(Exception, match=r"register.gate: .*mcnemar.* compares correctness"):
        parse_params({"register": {"gate": {"test": "mcnemar", "metric": "f1_macro"}}})


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


@pytest.mark.parametrize("test", ["bootstrap", "mcnemar"])
def test_gate_keeps_the_champion_for_noise_and_promotes_a_significant_win(repo, make_run, test):
    # 60 %; 61.5 % but right and wrong on other faces (40 faces only the champion gets, 46 only the challenger);
    # 75 % including every face the champion gets right.
    write_faces(repo, {0: predictions(240), 1: predictions(246, skip=40), 2: predictions(300)})
    make_run(0.60, reads=0)
    run_register(repo)
    gate = {"test": test, "metric": "accuracy"}
    make_run(0.62, reads=1)  # better by 1.5 points on 400 faces: more than the margin, but noise
    kept = run_register(repo, gate=gate)
    assert not kept["promoted"] and "kept out (not significant)" in kept["gate"]
    assert aliases(repo) == {"champion": "1", "challenger": "2"}
    version = client_for(repo).get_model_version("ferflow-fer", "2")
    assert float(version.tags["gate.difference"]) == pytest.approx(0.015)
    assert float(version.tags["gate.p_value"]) > 0.05 and version.tags["gate.promoted"] == "false"
    assert "not promoted" in (repo / "model_card.md").read_text()
    make_run(0.70, reads=2)  # 15 points better on the same faces: significant
    won = run_register(repo, gate=gate)
    assert won["promoted"] and aliases(repo) == {"champion": "3", "challenger": "3"}
    version = client_for(repo).get_model_version("ferflow-fer", "3")
    assert float(version.tags["gate.p_value"]) < 0.001 and version.tags["gate.champion_version"] == "1"
    assert float(version.tags["gate.ci_low"]) > 0 and version.tags["gate.test"] == test
    card = (repo / "model_card.md").read_text()
    assert "Compared with champion version 1 on the same 400 test faces" in card and ": promoted." in card


def test_gate_needs_the_margin_as_well_as_significance(repo, make_run):
    write_faces(repo, {0: predictions(240), 1: predictions(300)})
    make_run(0.6, reads=0)
    run_register(repo)
    make_run(0.7, reads=1)
    kept = run_register(repo, gate={"margin": 0.5})
    assert not kept["promoted"] and "kept out (not better by the margin)" in kept["gate"]
    client = client_for(repo)
    # `ferflow promote` reads the default gate from params.yaml (margin 0.005) and the clean arrays.
    assert main(["promote"]) == 0 and aliases(repo)["champion"] == "2"
    assert client.get_model_version("ferflow-fer", "2").tags["gate.promoted"] == "true"


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
    write_faces(repo, {0: predictions(150), 1: predictions(250), 2: predictions(350)})
    for reads, f1 in enumerate((0.6, 0.7, 0.8)):
        make_run(f1, reads=reads)
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
    client = champion_and_challenger(repo, make_run, 200, 350)
    predict, _, _ = register.test_faces("ferflow-fer", repo / "clean.npz")

    def crash(step: str) -> None:
        if step == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.promote(client, "ferflow-fer", gate_params(margin=0.0), predict, LABELS, on_step=crash)
    champion = client.get_model_version_by_alias("ferflow-fer", "champion")
    assert str(champion.version) == ("1" if stop_after == "history" else "2")
    assert client.get_model_version("ferflow-fer", champion.version).status == "READY"
    # Finishing the job (or rolling back) afterwards still works from that state.
    registry.promote(client, "ferflow-fer", gate_params(margin=0.0), predict, LABELS)
    assert str(client.get_model_version_by_alias("ferflow-fer", "champion").version) == "2"
    assert registry.rollback(client, "ferflow-fer").champion == "1"


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_promotion_killed_around_the_alias_move_leaves_a_valid_champion_and_the_rerun_completes(repo, make_run,
                                                                                                 when):  # fmt: skip
    """SIGKILL to the real `ferflow promote` just before or just after it moves the champion alias: champion
    is on a READY version either way (the old one, or the new one with its promotion not yet recorded), and
    rerunning the command completes the promotion, which rollback can then undo."""
    client = champion_and_challenger(repo, make_run, 200, 350)
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # for tests.killpoints
    target = "mlflow.tracking.client:MlflowClient.set_registered_model_alias"
    command = [sys.executable, "-m", "tests.killpoints", target, when, "champion", "--", "promote"]
    killed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    champion = client.get_model_version_by_alias("ferflow-fer", "champion")
    assert str(champion.version) == ("1" if when == "before" else "2") and champion.status == "READY"
    assert client.get_model_version("ferflow-fer", "2").tags["gate.promoted"] == "false"  # not recorded yet

    assert main(["promote"]) == 0
    assert aliases(repo)["champion"] == "2"
    assert client.get_model_version("ferflow-fer", "2").tags["gate.promoted"] == "true"
    assert main(["promote", "--rollback"]) == 0 and aliases(repo)["champion"] == "1"


def test_champion_judged_on_another_test_split_is_compared_on_the_challengers_faces(repo, make_run):
    client = champion_and_challenger(repo, make_run, 100, 300, test_hash="old")
    refused = registry.promote(client, "ferflow-fer", gate_params())
    assert not refused.promoted and "no test faces to compare" in refused.reason
    predict, labels, faces = register.test_faces("ferflow-fer", repo / "clean.npz")
    # Faces other than the challenger's own test split: it may have trained on them.
    leaky = registry.promote(client, "ferflow-fer", gate_params(), predict, labels, "0123456789abcdef")
    assert not leaky.promoted and "are not challenger version 2's test split" in leaky.reason
    won = registry.promote(client, "ferflow-fer", gate_params(), predict, labels, faces)
    assert won.promoted and won.champion == "2"
    assert won.metrics["reference"] < 0.3 and won.metrics["candidate"] > 0.7


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
    assert lines[2].split()[:4] == ["2", "challenger", "0.6000", "0.6000"]
    assert lines[3].split()[:4] == ["1", "champion", "0.5000", "0.5000"]
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["aliases"]) for r in rows] == [(2, ["challenger"]), (1, ["champion"])]


def test_a_champion_that_cannot_be_scored_is_kept_and_registration_finishes(repo, make_run):
    client = champion_and_challenger(repo, make_run, 100, 300)
    predict, labels, faces = register.test_faces("ferflow-fer", repo / "clean.npz")

    def champion_unreadable(version):
        if str(version.version) == "1":
            raise OSError("model artifacts missing")
        return predict(version)

    kept = registry.promote(client, "ferflow-fer", gate_params(), champion_unreadable, labels, faces)
    assert not kept.promoted and "champion version 1 could not be scored" in kept.reason
    assert "model artifacts missing" in kept.reason and aliases(repo)["champion"] == "1"


def test_a_card_too_long_for_mlflow_keeps_whole_sections_and_says_where_the_rest_is():
    card = "# Model card\n\nintro\n" + "".join(f"\n## Section {i}\n\n" + "x" * 900 + "\n" for i in range(8))
    description = register.version_description(card, "r1")
    assert len(card) > register.DESCRIPTION_LIMIT >= len(description)
    assert description.startswith("# Model card") and "## Section 4" in description
    assert "## Section 5" not in description
    assert description.endswith("(The whole card is the `model_card.md` artifact of run r1.)")
    assert register.version_description("# short card", "r1") == "# short card"


@pytest.mark.parametrize("damage", ["missing", "not an archive", "no test faces' arrays"])
def test_a_bad_clean_file_fails_register_before_the_registry_changes(repo, make_run, damage):
    make_run(0.7)
    clean = repo / "clean.npz"
    if damage == "missing":
        clean.unlink()
    elif damage == "not an archive":
        clean.write_text("images,labels\n")
    else:
        write_npz(clean, images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(DataError, match=r"clean\.npz: (cannot be read|lacks the arrays labels, splits, class_names)"):
        run_register(repo)
    assert client_for(repo).search_registered_models() == []  # nothing registered, no alias set
    assert not (repo / "registration.json").exists() and not (repo / "model_card.md").exists()


def test_rollback_to_a_deleted_version_says_so_and_keeps_the_champion(repo, make_run, capsys):
    write_faces(repo, {0: predictions(150), 1: predictions(350)})
    for reads, f1 in enumerate((0.6, 0.8)):
        make_run(f1, reads=reads)
        run_register(repo)
    assert aliases(repo)["champion"] == "2"
    client_for(repo).delete_model_version("ferflow-fer", "1")
    assert main(["promote", "--rollback"]) == 1
    assert "cannot roll 'ferflow-fer' back to version 1, the previous champion: that version no longer exists" in (
        capsys.readouterr().err)  # fmt: skip
    assert aliases(repo)["champion"] == "2"

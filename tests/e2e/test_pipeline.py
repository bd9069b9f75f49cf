"""End to end on synthetic faces: the real `dvc repro` in a temporary copy of the repository, as a user runs it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from ferflow.schema import EMOTIONS
from tests.conftest import detectable_face, photo_with
from tests.e2e.dag import STAGES, edit_params, run, stages_run

pytestmark = pytest.mark.slow

def test_repro_runs_all_stages_then_nothing_then_only_what_changed(repo, tmp_path):
    first = run(["dvc", "repro"], repo)
    assert stages_run(first.stdout) == STAGES
    for start_up_line in ("oneDNN custom operations", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard"):
        assert start_up_line not in first.stdout + first.stderr  # TensorFlow's C++ chatter is filtered out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    metrics = json.loads((repo / "reports/validate/metrics.json").read_text())
    assert metrics["passed"] and sum(metrics["split_sizes"].values()) == metrics["rows"] == 350  # half of 560 + 70 + 70
    assert (repo / "data/processed/train.npz").stat().st_size > 10_000
    assert (repo / "reports/augment/preview.png").is_file()
    assert (repo / "models/model.keras").stat().st_size > 10_000

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    by_file = next(iter(shown.values()))["data"]
    test_metrics = by_file["reports/evaluate/metrics.json"]["data"]
    assert 0.0 <= test_metrics["accuracy"] <= 1.0 and test_metrics["test_rows"] == 35
    cv_metrics = by_file["reports/cv/metrics.json"]["data"]
    assert cv_metrics["folds"] == 2 and set(cv_metrics["per_fold"]) == {"fold1", "fold2"}
    records = json.loads((repo / "reports/evaluate/confusion_records.json").read_text())
    assert len(records) == 35

    # Training and evaluation went to the repository's own MLflow store, into one run; cv into a parent run.
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ferflow").experiment_id])
    by_stage = sorted(run.data.tags["ferflow.stage"] for run in runs)
    assert by_stage == ["cv", "cv_fold", "cv_fold", "train"]
    trained = next(run for run in runs if run.data.tags["ferflow.stage"] == "train")
    run_info = json.loads((repo / "reports/train/run.json").read_text())
    assert trained.info.run_id == run_info["run_id"] and trained.info.status == "FINISHED"
    assert trained.data.metrics["test_accuracy"] == pytest.approx(test_metrics["accuracy"])
    assert any(Path(p).is_dir() for p in (repo / "mlruns").iterdir())

    # The first run leaves a champion, with a model card built from the logged facts.
    registration = json.loads((repo / "reports/register/registration.json").read_text())
    assert registration["run_id"] == run_info["run_id"] and registration["champion_version"] == 1
    card = (repo / "reports/register/model_card.md").read_text()
    assert "# Model card: ferflow-fer version 1" in card and "Confusion matrix" in card
    assert "2-fold stratified" in card and f"{test_metrics['f1_macro']:.4f}" in card
    models = run(["ferflow", "models"], repo).stdout.splitlines()
    assert models[2].split()[:2] == ["1", "challenger,champion"]

    # The champion reads the face in a photo: a synthetic face pasted into a larger picture.
    Image.fromarray(photo_with(detectable_face())).save(repo / "photo.png")
    predicted = json.loads(run(["ferflow", "predict", "photo.png", "--json"], repo).stdout)
    assert len(predicted) == 1 and len(predicted[0]["faces"]) == 1
    assert predicted[0]["faces"][0]["expression"] in EMOTIONS

    second = run(["dvc", "repro"], repo)
    assert stages_run(second.stdout) == []
    assert "Data and pipelines are up to date" in second.stdout

    # The code is a dependency: a change to the architectures reruns training and what follows, nothing upstream.
    architectures = repo / "src/ferflow/models/architectures.py"
    original = architectures.read_text()
    architectures.write_text(original + "\n# a one-line change\n")
    changed = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert sorted(changed) == sorted(["train", "evaluate", "cv", "register"])
    architectures.write_text(original)
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}

    # History in git: the lock and the small metrics files are committed, so `dvc metrics diff` compares commits.
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first"], repo)  # raises on failure
    tracked = run(["git", "ls-files"], repo).stdout.splitlines()
    assert {"dvc.lock", "reports/evaluate/metrics.json", "reports/cv/metrics.json"} <= set(tracked)
    assert not [path for path in tracked if path.endswith((".npz", ".keras")) or "samples_" in path
                or path.endswith("preview.png") or path.startswith(("data/", "models/", "mlruns/"))]  # fmt: skip
    assert "reports/evaluate/plots/confusion_matrix.png" in tracked  # counts, no face: it may be in git

    # The default remote (a folder beside the clone) round-trips the cached outputs.
    run(["dvc", "push"], repo)
    model_bytes = (repo / "models/model.keras").read_bytes()
    shutil.rmtree(repo / ".dvc/cache")
    (repo / "models/model.keras").unlink()
    (repo / "data/processed/clean.npz").unlink()
    run(["dvc", "pull"], repo)
    assert (repo / "models/model.keras").read_bytes() == model_bytes
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
    assert (tmp_path / "ferflow-dvc-remote").is_dir()

    # Scheduled retraining with nothing new: the source is read again, nothing else reruns, champion kept.
    unchanged = run(["ferflow", "retrain"], repo, check=False)
    assert unchanged.returncode == 10, unchanged.stderr
    assert stages_run(unchanged.stdout) == ["download"]
    assert "retrain: KEPT: champion of ferflow-fer stays version 1; the pipeline was up to date" in unchanged.stdout

    # An experiment, as DVC users run one: only evaluate and register rerun, and DVC's own tables compare it.
    experiment = run(["dvc", "exp", "run", "-n", "flip", "-S", "evaluate.tta.flip=true"], repo)
    assert stages_run(experiment.stdout) == ["evaluate", "register"]
    assert "test-time augmentation: " in (repo / "reports/evaluate/classification_report.txt").read_text()
    assert json.loads((repo / "reports/evaluate/metrics.json").read_text())["tta"]["setting"] == "flip"
    # The evaluate-only change is logged in a run of its own, nested under the training run it evaluated; the
    # training run keeps the figures of its first evaluation.
    runs = client.search_runs([trained.info.experiment_id])
    (evaluation,) = [r for r in runs if r.data.tags["ferflow.stage"] == "evaluate"]
    assert evaluation.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert evaluation.data.tags["ferflow.evaluate.tta"] == "flip" != client.get_run(trained.info.run_id).data.tags[
        "ferflow.evaluate.tta"]  # fmt: skip
    assert client.get_run(trained.info.run_id).data.metrics["test_accuracy"] == trained.data.metrics["test_accuracy"]
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--json"], repo).stdout)
    assert "reports/evaluate/metrics.json" in diff and "tta.setting" not in diff  # numbers only
    flip = json.loads(run(["dvc", "params", "diff", "HEAD", "--json"], repo).stdout)["params.yaml"]["evaluate.tta.flip"]
    assert (flip["old"], flip["new"]) == (False, True)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    (flip_experiment,) = [exp for commit in shown for exp in commit.get("experiments") or []
                          if exp.get("name") == "flip"]  # fmt: skip
    (flip_data,) = [rev["data"] for rev in flip_experiment["revs"]]
    flip_metrics = flip_data["metrics"]["reports/evaluate/metrics.json"]["data"]  # numbers, not DVC's "!"
    assert flip_metrics["accuracy"] == pytest.approx(test_metrics["accuracy"])  # the plain model's, as before
    assert flip_metrics["tta"]["setting"] == "flip"
    assert flip_data["params"]["params.yaml"]["data"]["evaluate"]["tta"]["flip"] is True
    exp_diff = json.loads(run(["dvc", "exp", "diff", "HEAD", "flip", "--json"], repo).stdout)
    flip_change = exp_diff["params"]["params.yaml"]["evaluate.tta.flip"]
    assert (flip_change["old"], flip_change["new"]) == (False, True)
    assert "reports/evaluate/metrics.json" in exp_diff["metrics"]
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo).stdout)
    # Every plot reads at both revisions: the confusion-matrix images are in git (they show no face), so the
    # plots folder exists at HEAD; the grids of sample faces stay out of git and show for the workspace only.
    assert plots.get("errors", []) == []
    for name in ("Training loss", "Test confusion matrix", "reports/evaluate/plots/confusion_matrix.png"):
        assert {rev for plot in plots["data"][name] for rev in plot["revisions"]} == {"HEAD", "workspace"}, name
    assert [plot["revisions"] for plot in plots["data"]["reports/evaluate/plots/samples_correct.png"]] == [
        ["workspace"]]  # fmt: skip

    # Retraining after a change: the new run is registered; it becomes champion only if it beats the margin.
    # (cv off this time: the stage reruns and writes its note, and the test spends no time on folds.)
    edit_params(repo, augment__oversample__target_ratio=0.8, cv__enabled=False)
    assert "augment" in run(["dvc", "status"], repo).stdout
    retrained = run(["ferflow", "retrain"], repo, check=False)
    assert stages_run(retrained.stdout) == ["download", "augment", "train", "evaluate", "cv", "register"]
    assert json.loads((repo / "reports/augment/summary.json").read_text())["target_ratio"] == 0.8
    assert json.loads((repo / "reports/cv/metrics.json").read_text())["enabled"] is False
    registration = json.loads((repo / "reports/register/registration.json").read_text())
    # The decision follows from the figures: the better run by val macro-F1 is the challenger, and it is promoted
    # exactly when the gate finds it better than the champion by the margin and significantly so.
    if registration["registered_new_version"]:
        gate = re.search(r"difference ([-+][\d.]+) \(margin ([\d.]+)\), .* one-sided p = ([\d.]+) "
                         r"\(alpha ([\d.]+)\)", registration["gate"])  # fmt: skip
        assert gate and registration["challenger_version"] == 2, registration
        difference, margin, p_value, alpha = map(float, gate.groups())
        assert registration["promoted"] == (difference >= margin and p_value < alpha), registration["gate"]
    else:  # the first run still ranks first: it stays challenger and champion
        assert registration["challenger_version"] == 1 and not registration["promoted"], registration
        assert registration["gate"] == "version 1 is already the champion"
    if retrained.returncode == 0:
        assert registration["promoted"] and "retrain: PROMOTED: champion of ferflow-fer is now version 2" in (
            retrained.stdout
        )
    else:
        assert retrained.returncode == 10 and not registration["promoted"], retrained.stderr
        assert "retrain: KEPT: champion of ferflow-fer stays version 1" in retrained.stdout


def test_bad_param_fails_before_work_and_names_the_key(repo):
    edit_params(repo, subsample__fraction=1.5)
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "subsample.fraction: Input should be less than or equal to 1" in result.stderr + result.stdout
    assert not (repo / "data/interim/subsample.csv").exists()


def test_validation_failure_stops_the_pipeline(repo, tmp_path, synthetic_table):
    bad = synthetic_table.copy()
    bad.loc[:40, "emotion"] = "9"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    edit_params(repo, data__source=str(tmp_path / "bad.csv"), subsample__fraction=1.0)
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "validation failed" in result.stderr and "validate.max_malformed_fraction" in result.stderr
    assert not (repo / "data/processed/clean.npz").exists()
    assert not (repo / "data/processed/train.npz").exists()
    assert "validate" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]

"""End to end: the real `dvc repro` in a temporary copy of the repository, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ferflow.schema import EMOTIONS
from tests.conftest import REPO_ROOT, detectable_face, photo_with

pytestmark = pytest.mark.slow

PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"]
STAGES = ["download", "subsample", "validate", "augment", "train", "evaluate", "cv", "register"]
TINY_TRAINING = {
    "model__architecture": "vgg", "model__width": 4, "model__depth": 2, "model__dense_units": 8,
    "train__epochs": 2, "train__batch_size": 64, "cv__folds": 2,
}  # fmt: skip


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each temporary repository has its own store
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def edit_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git + DVC checkout of the pipeline files, set to tiny sizes."""
    copy = tmp_path / "repo"
    for name in PIPELINE_FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)
    run(["git", "init", "-q"], copy)
    edit_params(copy, data__synthetic__n_images=700, subsample__fraction=0.5, **TINY_TRAINING)
    return copy


# The longest tests, in two groups that `pytest -n 2 --dist loadgroup` (make test) runs on different workers.
SYNTHETIC_DAG = pytest.mark.xdist_group("e2e-synthetic")
REAL_DAG = pytest.mark.xdist_group("e2e-real")


@SYNTHETIC_DAG
def test_repro_runs_all_stages_then_nothing_then_only_what_changed(repo):
    first = run(["dvc", "repro"], repo)
    assert stages_run(first.stdout) == STAGES
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

    # Scheduled retraining with nothing new: the source is read again, nothing else reruns, champion kept.
    unchanged = run(["ferflow", "retrain"], repo, check=False)
    assert unchanged.returncode == 10, unchanged.stderr
    assert stages_run(unchanged.stdout) == ["download"]
    assert "retrain: KEPT: champion of ferflow-fer stays version 1; the pipeline was up to date" in unchanged.stdout

    edit_params(repo, evaluate__tta__flip=True)
    assert stages_run(run(["dvc", "repro"], repo).stdout) == ["evaluate", "register"]
    assert "test-time augmentation: " in (repo / "reports/evaluate/classification_report.txt").read_text()
    assert json.loads((repo / "reports/evaluate/metrics.json").read_text())["tta"]["setting"] == "flip"

    # Retraining after a change: the new run is registered; it becomes champion only if it beats the margin.
    edit_params(repo, augment__oversample__target_ratio=0.8)
    assert "augment" in run(["dvc", "status"], repo).stdout
    retrained = run(["ferflow", "retrain"], repo, check=False)
    assert stages_run(retrained.stdout) == ["download", "augment", "train", "evaluate", "cv", "register"]
    assert json.loads((repo / "reports/augment/summary.json").read_text())["target_ratio"] == 0.8
    registration = json.loads((repo / "reports/register/registration.json").read_text())
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


@REAL_DAG
@pytest.mark.real_data
def test_repro_on_the_shared_full_file_with_default_data_settings(repo, real_full):
    """All of Training + PublicTest, every data param at its default (10 % subsample): FER-2013's own copies and
    blank faces pass the gate with a note, and the pipeline goes on through registration (tiny model)."""
    edit_params(repo, data__source=str(real_full), subsample__fraction=0.1)
    result = run(["dvc", "repro"], repo)
    assert "validate: note:" in result.stdout
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert manifest["by_usage"] == {"PublicTest": 3589, "Training": 28709}
    metrics = json.loads((repo / "reports/validate/metrics.json").read_text())
    assert metrics["passed"] and metrics["rows"] == pytest.approx(3230, abs=5)
    assert "carved from Training" in metrics["split_provenance"]["test"]
    assert metrics["split_provenance"]["val"] == "Usage PublicTest"
    test_metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert test_metrics["test_rows"] == metrics["split_sizes"]["test"] and 0.0 <= test_metrics["f1_macro"] <= 1.0
    assert test_metrics["val"]["rows"] == metrics["split_sizes"]["val"]
    assert json.loads((repo / "reports/register/registration.json").read_text())["champion_version"] == 1


def three_split_fer(full: Path, out: Path) -> dict[str, list[str]]:
    """A complete three-split FER-2013 file in miniature, from the shared full file: a stratified 6 % of it, a
    stratified 15 % of those Training rows relabelled PrivateTest, and planted defects. Returns the pixels of
    each planted kind of copy."""
    table = pd.read_csv(full, dtype={"pixels": str})
    part = table.groupby(["Usage", "emotion"], group_keys=False).sample(frac=0.06, random_state=0)
    part = part.reset_index(drop=True)
    training = part[part["Usage"] == "Training"]
    private = training.groupby("emotion", group_keys=False).sample(frac=0.15, random_state=1).index
    part.loc[private, "Usage"] = "PrivateTest"
    rows = {usage: part.index[part["Usage"] == usage].tolist() for usage in ("Training", "PublicTest", "PrivateTest")}
    train, val, test = rows["Training"], rows["PublicTest"], rows["PrivateTest"]
    planted: dict[str, list[str]] = {"train-test": [], "val-test": [], "train-val": [], "test-test": [], "conflict": []}

    def plant(kind: str, copies: list[int], originals: list[int], relabel: bool = False) -> None:
        for copy, original in zip(copies, originals, strict=True):
            part.at[copy, "pixels"] = part.at[original, "pixels"]
            label = part.at[original, "emotion"]
            part.at[copy, "emotion"] = (label + 1) % 7 if relabel else label
            planted[kind].append(part.at[original, "pixels"])

    plant("train-test", train[:20], test[:20])
    plant("val-test", val[:10], test[20:30])
    plant("train-val", train[20:30], val[10:20])
    plant("test-test", test[30:33], test[33:36])
    plant("conflict", train[30:34], test[36:40], relabel=True)
    for row in train[40:45]:
        part.at[row, "pixels"] = " ".join(["0"] * 2304)
    part.to_csv(out, index=False)
    return planted


@REAL_DAG
@pytest.mark.real_data
def test_repro_on_a_complete_three_split_fer_file_keeps_the_test_split_and_removes_leaks(repo, real_full, tmp_path):
    source = tmp_path / "fer2013.csv"
    planted = three_split_fer(real_full, source)
    table = pd.read_csv(source, dtype={"pixels": str})
    n_test = int((table["Usage"] == "PrivateTest").sum())
    edit_params(repo, data__source=str(source), subsample__fraction=1.0)
    run(["dvc", "repro"], repo)

    metrics = json.loads((repo / "reports/validate/metrics.json").read_text())
    assert metrics["passed"] and metrics["split_sizes"]["test"] == n_test  # every test row kept
    assert metrics["split_provenance"]["test"] == "Usage PrivateTest"
    pairs = metrics["duplicates"]["pairs"]
    assert pairs["train-test"] >= 20 and pairs["val-test"] >= 10 and pairs["train-val"] >= 10
    assert pairs["test-test"] >= 3 and metrics["duplicates"]["label_conflict_faces"] >= 4
    assert metrics["malformed_rows"] >= 5
    quarantined = pd.read_csv(repo / "data/interim/quarantine.csv", dtype=str, keep_default_na=False)
    assert set(quarantined["Usage"]) <= {"Training", "PublicTest"}  # nothing taken from the test split
    by_pixels = quarantined.groupby("pixels")["reason"].apply(" | ".join)
    for pixels in planted["train-test"] + planted["val-test"]:
        assert "would leak the test split into" in by_pixels[pixels]
    for pixels in planted["train-val"]:
        assert "would leak the val split into train" in by_pixels[pixels]
    for pixels in planted["conflict"]:
        assert "label conflict: same face labelled" in by_pixels[pixels]
    assert not any(pixels in by_pixels.index for pixels in planted["test-test"])  # test copies stay

    clean = np.load(repo / "data/processed/clean.npz")
    is_test = clean["splits"] == "test"
    test_faces = {face.tobytes() for face in clean["images"][is_test]}
    other_faces = {face.tobytes() for face in clean["images"][~is_test]}
    assert not test_faces & other_faces  # no test face left in train or val

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run_info = json.loads((repo / "reports/train/run.json").read_text())
    tags = client.get_run(run_info["run_id"]).data.tags
    assert int(tags["ferflow.data.copies.train-test"]) == pairs["train-test"]
    registration = json.loads((repo / "reports/register/registration.json").read_text())
    assert registration["champion_version"] == 1 and registration["metric"] == "valid_f1_macro"
    card = (repo / "reports/register/model_card.md").read_text()
    assert "- **test** (Usage PrivateTest): reported below, once" in card


@pytest.mark.real_data
def test_repro_on_a_zip_of_image_folders_made_from_the_real_sample(repo, real_sample, tmp_path):
    table = pd.read_csv(real_sample).groupby(["Usage", "emotion"]).head(25)
    archive = tmp_path / "fer_images.zip"
    folder = {"Training": "train", "PublicTest": "test"}
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    with zipfile.ZipFile(archive, "w") as zf:
        for i, row in enumerate(table.itertuples()):
            image = Image.fromarray(pd.Series(row.pixels.split()).astype("uint8").to_numpy().reshape(48, 48))
            path = tmp_path / "face.png"
            image.save(path)
            zf.write(path, f"{folder[row.Usage]}/{names[row.emotion]}/{i}.png")
    edit_params(repo, data__source=str(archive), subsample__fraction=1.0)
    run(["dvc", "repro", "validate"], repo)  # the source and the data gate; training is covered above
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert manifest["kind"] == "image_zip" and manifest["rows"] == len(table)
    metrics = json.loads((repo / "reports/validate/metrics.json").read_text())
    assert metrics["passed"] and "carved from Training" in metrics["split_provenance"]["val"]

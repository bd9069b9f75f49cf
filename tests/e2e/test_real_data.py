"""End to end on real FER-2013 from ``../shared/data`` (skipped when it is absent): the real `dvc repro` in a
temporary copy of the repository. Its own file, so that `pytest -n 2 --dist loadfile` (make test) can run it
beside the synthetic end-to-end tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.e2e.dag import edit_params, run

pytestmark = pytest.mark.slow


@pytest.mark.real_data
def test_repro_on_the_shared_full_file_with_default_data_settings(repo, real_full):
    """All of Training + PublicTest, every data param at its default (10 % subsample): FER-2013's own copies and
    blank faces pass the gate with a note, and the training data is written. (Training, evaluation and
    registration on real faces are covered by the three-split test below.)"""
    edit_params(repo, data__source=str(real_full), subsample__fraction=0.1)
    result = run(["dvc", "repro", "augment"], repo)
    assert "validate: note:" in result.stdout
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert manifest["by_usage"] == {"PublicTest": 3589, "Training": 28709}
    metrics = json.loads((repo / "reports/validate/metrics.json").read_text())
    assert metrics["passed"] and metrics["rows"] == pytest.approx(3230, abs=5)
    assert "carved from Training" in metrics["split_provenance"]["test"]
    assert metrics["split_provenance"]["val"] == "Usage PublicTest"
    summary = json.loads((repo / "reports/augment/summary.json").read_text())
    assert summary["rows_before"] == metrics["split_sizes"]["train"] and summary["rows_after"] >= summary["rows_before"]


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


@pytest.mark.real_data
def test_repro_on_a_complete_three_split_fer_file_keeps_the_test_split_and_removes_leaks(repo, real_full, tmp_path):
    source = tmp_path / "fer2013.csv"
    planted = three_split_fer(real_full, source)
    table = pd.read_csv(source, dtype={"pixels": str})
    n_test = int((table["Usage"] == "PrivateTest").sum())
    edit_params(repo, data__source=str(source), subsample__fraction=1.0, cv__enabled=False)  # cv: synthetic e2e
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
    test_metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert test_metrics["test_rows"] == n_test and 0.0 <= test_metrics["f1_macro"] <= 1.0
    assert test_metrics["val"]["rows"] == metrics["split_sizes"]["val"]
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

"""Each Great Expectations check catches its planted defect; the quarantine keeps the rows and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferflow.errors import ValidationFailed
from ferflow.io import read_npz, write_json
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from ferflow.stages import validate


def run_validate(tmp_path: Path, table: pd.DataFrame, class_names=EMOTIONS, **settings) -> dict:
    table.to_csv(tmp_path / "sub.csv", index=False)
    write_json(tmp_path / "sub.json", {"class_names": list(class_names)})
    return validate.run(
        parse_params({"validate": settings}).validation,
        tmp_path / "sub.csv", tmp_path / "sub.json", tmp_path / "clean.npz", tmp_path / "quarantine.csv",
        tmp_path / "gx.json", tmp_path / "summary.md", tmp_path / "metrics.json",
    )  # fmt: skip


def quarantine(tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "quarantine.csv", dtype=str, keep_default_na=False)


def replace_pixel(pixels: str, index: int, value: str) -> str:
    tokens = pixels.split()
    tokens[index] = value
    return " ".join(tokens)


def with_row_3(column: str, make_value):
    """A defect planter: sets row 3's ``column`` to ``make_value(table)`` (None plants a null)."""

    def plant(table: pd.DataFrame) -> None:
        table[column] = table[column].astype(object)
        table.at[3, column] = make_value(table)

    return plant


DEFECTS = {
    "missing label": with_row_3("emotion", lambda t: None),
    "missing pixels": with_row_3("pixels", lambda t: None),
    "missing Usage": with_row_3("Usage", lambda t: None),
    "label not in 0..6": with_row_3("emotion", lambda t: "9"),
    "Usage not one of": with_row_3("Usage", lambda t: "Validation"),
    "pixel count is not 2304": with_row_3("pixels", lambda t: " ".join(t.at[3, "pixels"].split()[:-1])),
    "pixel count is not 2304 (long)": with_row_3("pixels", lambda t: t.at[3, "pixels"] + " 17"),
    "pixels are not all integers": with_row_3("pixels", lambda t: replace_pixel(t.at[3, "pixels"], 10, "12.5")),
    "pixel value above 255": with_row_3("pixels", lambda t: replace_pixel(t.at[3, "pixels"], 10, "256")),
    "pixel value below 0": with_row_3("pixels", lambda t: replace_pixel(t.at[3, "pixels"], 10, "-3")),
    "near-blank or constant image": with_row_3("pixels", lambda t: " ".join(["128"] * 2304)),
}


@pytest.mark.parametrize("reason", list(DEFECTS))
def test_each_row_check_quarantines_its_defect(tmp_path, synthetic_table, reason):
    table = synthetic_table.copy()
    DEFECTS[reason](table)
    facts = run_validate(tmp_path, table)
    bad = quarantine(tmp_path)
    assert bad["row"].tolist() == ["3"]
    assert reason.removesuffix(" (long)") in bad.at[0, "reason"]
    assert facts["quarantined_rows"] == 1 and facts["passed"]
    # The quarantined row is kept exactly as it was (nothing lost), and left out of the clean arrays.
    original = table.loc[3, ["emotion", "pixels", "Usage"]].fillna("").astype(str).tolist()
    assert bad.loc[0, ["emotion", "pixels", "Usage"]].tolist() == original
    clean = read_npz(tmp_path / "clean.npz")
    assert 3 not in clean["source_rows"] and len(clean["labels"]) == len(table) - 1
    gx = json.loads((tmp_path / "gx.json").read_text())
    assert gx["success"] is True and gx["suites"]["rows"]["success"] is False
    assert facts["malformed_rows"] == 1 and facts["duplicates"]["copies"] == 0


def test_row_with_several_defects_lists_every_reason(tmp_path, synthetic_table):
    table = synthetic_table.copy()
    table.loc[5, "emotion"] = "9"
    table.loc[5, "pixels"] = " ".join(["0"] * 2303)
    run_validate(tmp_path, table)
    reasons = quarantine(tmp_path).at[0, "reason"].split("; ")
    assert reasons == [
        "label not in 0..6",
        "pixel count is not 2304",
        "near-blank or constant image (pixel std below 2)",
    ]


def test_too_many_bad_rows_fail_the_stage_without_clean_arrays(tmp_path, synthetic_table):
    table = synthetic_table.copy()
    table.loc[0:29, "emotion"] = "9"  # 30 of ~400 rows = 7.5 %
    with pytest.raises(ValidationFailed) as error:
        run_validate(tmp_path, table, max_malformed_fraction=0.05)
    message = str(error.value)
    assert f"30 of {len(table)} rows" in message and "validate.max_malformed_fraction 5.00%" in message
    assert "row 0: label not in 0..6" in message
    assert not (tmp_path / "clean.npz").exists() and not (tmp_path / "metrics.json").exists()
    assert len(quarantine(tmp_path)) == 30  # diagnostics are written for inspection
    assert "FAILED" in (tmp_path / "summary.md").read_text()


def test_class_minimum_is_a_dataset_check(tmp_path, synthetic_table):
    with pytest.raises(ValidationFailed, match=r"classes below validate.min_class_count=50 clean rows: .*disgust \("):
        run_validate(tmp_path, synthetic_table, min_class_count=50)


def rows_of(table: pd.DataFrame, usage: str) -> list[int]:
    return table.index[table["Usage"] == usage].tolist()


def test_duplicates_within_and_across_every_pair_of_splits(tmp_path, synthetic_table):
    """Test rows are never removed; train/val copies of test faces and train copies of val faces are; extra
    copies within a split are; counts come per pair of splits."""
    table = synthetic_table.copy()
    train, val, test = rows_of(table, "Training"), rows_of(table, "PublicTest"), rows_of(table, "PrivateTest")
    plants = {  # copy row -> original row
        train[1]: train[0],  # train-train
        train[3]: val[0],  # train-val
        train[5]: test[0],  # train-test
        val[2]: val[1],  # val-val
        val[4]: test[1],  # val-test
        test[3]: test[2],  # test-test: kept
    }
    for copy, original in plants.items():
        table.at[copy, "pixels"] = table.at[original, "pixels"]
        table.at[copy, "emotion"] = table.at[original, "emotion"]
    facts = run_validate(tmp_path, table)
    bad = quarantine(tmp_path).set_index("row")
    assert sorted(bad.index.astype(int)) == sorted([train[1], train[3], train[5], val[2], val[4]])
    assert bad.at[str(train[1]), "reason"] == f"duplicate image (same pixels as train row {train[0]})"
    assert bad.at[str(train[3]), "reason"] == f"copy of val row {val[0]} (would leak the val split into train)"
    assert bad.at[str(train[5]), "reason"] == f"copy of test row {test[0]} (would leak the test split into train)"
    assert bad.at[str(val[2]), "reason"] == f"duplicate image (same pixels as val row {val[1]})"
    assert bad.at[str(val[4]), "reason"] == f"copy of test row {test[1]} (would leak the test split into val)"
    assert facts["duplicates"]["pairs"] == {"train-train": 1, "train-val": 1, "train-test": 1, "val-val": 1,
                                            "val-test": 1, "test-test": 1}  # fmt: skip
    assert facts["duplicates"]["copies"] == 6 and facts["malformed_rows"] == 0
    assert facts["split_sizes"]["test"] == len(test)  # every test row kept, its own copy too
    clean = read_npz(tmp_path / "clean.npz")
    kept_test = clean["source_rows"][clean["splits"] == "test"]
    assert sorted(kept_test.tolist()) == test
    assert json.loads(str(clean["quality"]))["duplicates"]["pairs"]["train-test"] == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| train copy of a test face | 1 | quarantined |" in summary
    assert "| test copy of a test face | 1 | kept (the test split is never edited) |" in summary
    assert "> Note: 6 exact copies" in summary


def test_the_same_face_with_two_labels_is_a_label_conflict(tmp_path, synthetic_table):
    table = synthetic_table.copy()
    train, test = rows_of(table, "Training"), rows_of(table, "PrivateTest")
    table.at[train[7], "pixels"] = table.at[train[6], "pixels"]
    table.at[train[6], "emotion"], table.at[train[7], "emotion"] = "3", "4"
    table.at[train[8], "pixels"] = table.at[test[0], "pixels"]
    table.at[test[0], "emotion"], table.at[train[8], "emotion"] = "0", "6"
    facts = run_validate(tmp_path, table)
    bad = quarantine(tmp_path).set_index("row")
    # Both train copies go (which label is right is unknown); the test row stays, its train copy goes.
    assert bad.at[str(train[6]), "reason"] == f"label conflict: same face labelled sad in train row {train[7]}"
    assert bad.at[str(train[7]), "reason"] == (f"duplicate image (same pixels as train row {train[6]}); "
                                               f"label conflict: same face labelled happy in train row {train[6]}")
    assert "label conflict: same face labelled angry in test row" in bad.at[str(train[8]), "reason"]
    assert facts["duplicates"]["label_conflict_faces"] == 2 and facts["duplicates"]["label_conflict_rows"] == 4
    assert facts["split_sizes"]["test"] == len(test)


def test_blank_faces_are_malformed_not_duplicates(tmp_path, synthetic_table):
    table = synthetic_table.copy()
    for row in (11, 12, 13):
        table.at[row, "pixels"] = " ".join(["0"] * 2304)
    facts = run_validate(tmp_path, table)
    assert facts["malformed_rows"] == 3 and facts["duplicates"]["copies"] == 0
    assert set(quarantine(tmp_path)["reason"]) == {"near-blank or constant image (pixel std below 2)"}


@pytest.mark.parametrize("defect", ["duplicates", "malformed"])
def test_a_file_with_30_percent_bad_rows_fails_with_defaults(tmp_path, synthetic_table, defect):
    table = synthetic_table.copy()
    rows = table.index[: int(0.3 * len(table))]
    if defect == "duplicates":
        table.loc[rows, "pixels"] = table.at[len(table) - 1, "pixels"]
        match = r"duplicate rate 3\d\.\d% .* exceeds validate.max_duplicate_fraction 10\.0%"
    else:
        table.loc[rows, "pixels"] = "1 2 3"
        match = r"are malformed or blank, above validate.max_malformed_fraction 2\.00%"
    with pytest.raises(ValidationFailed, match=match):
        run_validate(tmp_path, table)
    assert not (tmp_path / "clean.npz").exists()


def test_wrong_columns_fail_the_gate(tmp_path, synthetic_table):
    with pytest.raises(ValidationFailed, match=r"columns: expected exactly \['emotion', 'pixels', 'Usage'\]"):
        run_validate(tmp_path, synthetic_table.rename(columns={"Usage": "usage"}))


def test_splits_follow_usage_and_missing_ones_are_carved(tmp_path, synthetic_table, synthetic_arrays):
    facts = run_validate(tmp_path, synthetic_table)
    _, labels, usages = synthetic_arrays
    assert facts["split_sizes"] == {
        "train": int((usages == "Training").sum()),
        "val": int((usages == "PublicTest").sum()),
        "test": int((usages == "PrivateTest").sum()),
    }
    clean = read_npz(tmp_path / "clean.npz")
    assert clean["images"].dtype == np.uint8 and clean["images"].shape[1:] == (48, 48)
    assert clean["labels"].tolist() == labels.tolist()

    no_private = synthetic_table[synthetic_table["Usage"] != "PrivateTest"].reset_index(drop=True)
    facts = run_validate(tmp_path, no_private, carve_fraction=0.2)
    n_train = int((usages == "Training").sum())
    assert facts["split_sizes"]["test"] == pytest.approx(0.2 * n_train, abs=4)
    assert facts["split_sizes"]["train"] + facts["split_sizes"]["test"] == n_train
    assert "carved from Training" in facts["split_provenance"]["test"]
    assert facts["split_provenance"]["val"] == "Usage PublicTest"
    assert "carved from Training" in (tmp_path / "summary.md").read_text()
    test_labels = read_npz(tmp_path / "clean.npz")["labels"][read_npz(tmp_path / "clean.npz")["splits"] == "test"]
    assert set(test_labels.tolist()) >= {0, 2, 3, 4, 5, 6}  # stratified: every common class is represented


def test_class_subset_labels(tmp_path, synthetic_table):
    subset = synthetic_table[synthetic_table["emotion"].isin(["3", "4"])].copy()
    subset["emotion"] = subset["emotion"].map({"3": "0", "4": "1"})
    subset.loc[subset.index[0], "emotion"] = "2"  # valid in 7 classes, not in a binary task
    facts = run_validate(tmp_path, subset.reset_index(drop=True), class_names=("happy", "sad"))
    assert quarantine(tmp_path).at[0, "reason"] == "label not in 0..1"
    assert facts["class_counts"]["train"].keys() == {"happy", "sad"}

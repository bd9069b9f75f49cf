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
    "pixels are not all integers": with_row_3("pixels", lambda t: replace_pixel(t.at[3, "pixels"], 10, "12.5")),
    "pixel value above 255": with_row_3("pixels", lambda t: replace_pixel(t.at[3, "pixels"], 10, "256")),
    "near-blank or constant image": with_row_3("pixels", lambda t: " ".join(["128"] * 2304)),
    "duplicate image (same pixels as row 2)": with_row_3("pixels", lambda t: t.at[2, "pixels"]),
}


@pytest.mark.parametrize("reason", list(DEFECTS))
def test_each_row_check_quarantines_its_defect(tmp_path, synthetic_table, reason):
    table = synthetic_table.copy()
    DEFECTS[reason](table)
    facts = run_validate(tmp_path, table)
    bad = quarantine(tmp_path)
    assert bad["row"].tolist() == ["3"]
    assert reason in bad.at[0, "reason"]
    assert facts["quarantined_rows"] == 1 and facts["passed"]
    # The quarantined row is kept exactly as it was (nothing lost), and left out of the clean arrays.
    original = table.loc[3, ["emotion", "pixels", "Usage"]].fillna("").astype(str).tolist()
    assert bad.loc[0, ["emotion", "pixels", "Usage"]].tolist() == original
    clean = read_npz(tmp_path / "clean.npz")
    assert 3 not in clean["source_rows"] and len(clean["labels"]) == len(table) - 1
    gx = json.loads((tmp_path / "gx.json").read_text())
    # One duplicate is within validate.max_duplicate_fraction (a "mostly" expectation); the rest are strict.
    assert gx["success"] is True
    assert gx["suites"]["rows"]["success"] is reason.startswith("duplicate")


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
        run_validate(tmp_path, table, max_bad_fraction=0.05)
    message = str(error.value)
    assert f"30 of {len(table)} rows" in message and "validate.max_bad_fraction 5.00%" in message
    assert "row 0: label not in 0..6" in message
    assert not (tmp_path / "clean.npz").exists() and not (tmp_path / "metrics.json").exists()
    assert len(quarantine(tmp_path)) == 30  # diagnostics are written for inspection
    assert "FAILED" in (tmp_path / "summary.md").read_text()


def test_class_minimum_and_duplicate_rate_are_dataset_checks(tmp_path, synthetic_table):
    with pytest.raises(ValidationFailed, match=r"classes below validate.min_class_count=50 clean rows: .*disgust \("):
        run_validate(tmp_path, synthetic_table, min_class_count=50)
    table = synthetic_table.copy()
    table.loc[10:29, "pixels"] = table.at[9, "pixels"]  # 20 copies = 5 % duplicates
    with pytest.raises(ValidationFailed, match=r"duplicate rate 5\.0% exceeds validate.max_duplicate_fraction 2\.0%"):
        run_validate(tmp_path, table, max_duplicate_fraction=0.02, max_bad_fraction=0.5)


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

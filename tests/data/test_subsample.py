import json

import numpy as np
import pandas as pd
import pytest

from ferflow.data.table import write_table
from ferflow.params import parse_params
from ferflow.stages import subsample
from ferflow.stages.subsample import filter_classes, stratified_subsample


def big_table(n_per_class: list[int], usages=("Training", "PublicTest", "PrivateTest"), scale=(8, 1, 1)):
    rows = []
    for usage, factor in zip(usages, scale, strict=True):
        for label, n in enumerate(n_per_class):
            rows += [{"emotion": str(label), "pixels": f"{label} {usage}", "Usage": usage}] * (n * factor)
    return pd.DataFrame(rows)


def test_fraction_per_split_and_class_with_largest_remainder():
    # FER-like imbalance: Disgust (label 1) is rare.
    table = big_table([50, 5, 51, 90, 61, 40, 62])
    sample = stratified_subsample(table, 0.1, seed=1)
    for usage, factor in (("Training", 8), ("PublicTest", 1)):
        rows = sample[sample["Usage"] == usage]
        counts = rows["emotion"].astype(int).value_counts().sort_index().tolist()
        n_usage = (table["Usage"] == usage).sum()
        assert len(rows) == max(round(0.1 * n_usage), 7)  # exact split total (every class >= 1)
        expected = np.array([50, 5, 51, 90, 61, 40, 62]) * factor * 0.1
        assert np.all(np.abs(np.array(counts) - expected) < 1.0 + (expected < 1))
    # The rare class is kept in every split.
    assert set(sample.groupby("Usage")["emotion"].apply(lambda s: "1" in set(s))) == {True}


def test_seeded_and_order_preserving():
    table = big_table([30, 3, 30, 30, 30, 30, 30])
    a, b = stratified_subsample(table, 0.2, seed=5), stratified_subsample(table, 0.2, seed=5)
    c = stratified_subsample(table, 0.2, seed=6)
    assert a.index.tolist() == b.index.tolist() != c.index.tolist()
    assert a.index.is_monotonic_increasing


@pytest.mark.parametrize(
    ("classes", "names", "kept_raw"),
    [
        (
            "no_disgust",
            ["angry", "fear", "happy", "sad", "surprise", "neutral"],
            ["0", "2", "3", "4", "5", "6"],
        ),
        ("four", ["angry", "happy", "sad", "neutral"], ["0", "3", "4", "6"]),
        ("happy_vs_sad", ["happy", "sad"], ["3", "4"]),
        (["sad", "happy"], ["sad", "happy"], ["4", "3"]),
    ],
)
def test_class_filters_remap_to_0_k(classes, names, kept_raw):
    params = parse_params({"subsample": {"classes": classes}}).subsample
    assert list(params.class_names) == names
    table = big_table([2] * 7)
    filtered = filter_classes(table, params.class_names)
    # pixels carry the raw label, so the remapping can be checked row by row
    raw_label = filtered["pixels"].str.split().str[0]
    assert sorted(filtered["emotion"].unique()) == [str(i) for i in range(len(names))]
    for new, old in enumerate(kept_raw):
        assert set(raw_label[filtered["emotion"] == str(new)]) == {old}


def test_invalid_labels_pass_through_for_quarantine():
    table = pd.DataFrame({"emotion": ["3", "9", None, "x", "4", "1"], "pixels": ["a"] * 6, "Usage": ["Training"] * 6})
    filtered = filter_classes(table, ("happy", "sad"))
    # happy -> "0", sad -> "1"; the raw Disgust row ("1") is filtered out; invalid labels stay as they were.
    assert filtered["pixels"].size == 5
    assert filtered["emotion"].isna().tolist() == [False, False, True, False, False]
    assert filtered["emotion"].dropna().tolist() == ["0", "9", "x", "1"]


def test_run_writes_table_and_summary(tmp_path):
    table = big_table([20, 2, 20, 20, 20, 20, 20])
    write_table(table, tmp_path / "raw.csv")
    params = parse_params({"subsample": {"fraction": 0.25, "classes": "happy_vs_sad"}}).subsample
    facts = subsample.run(params, tmp_path / "raw.csv", tmp_path / "sub.csv", tmp_path / "sub.json")
    written = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    summary = json.loads((tmp_path / "sub.json").read_text())
    assert summary == json.loads(json.dumps(facts))
    assert summary["class_names"] == ["happy", "sad"]
    # Training: 2 classes x 160 rows x 25 %; PublicTest and PrivateTest: 2 classes x 20 rows x 25 % each
    assert summary["rows_out"] == len(written) == 80 + 10 + 10
    assert summary["counts_out"]["Training"] == {"0": 40, "1": 40}

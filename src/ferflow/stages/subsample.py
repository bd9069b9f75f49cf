"""Stage ``subsample``: a seeded, stratified fraction of the raw table, optionally on a subset of classes.

Strata are (Usage, emotion) so that each split keeps the source's class distribution. Each stratum's
quota is its exact share ``fraction * n`` rounded by the largest-remainder method within its Usage (so each
split's total is exact too), and every stratum present in the source keeps at least one row: a rare class
never disappears from a split.

A class filter (``subsample.classes``) keeps the named classes and renumbers them 0..k-1 in the order
given; rows whose label is not a valid FER label at all are passed through untouched so that the
validate stage quarantines them with a reason instead of their vanishing here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferflow.data.sampling import stratified_pick
from ferflow.data.table import read_table, write_table
from ferflow.io import write_json
from ferflow.params import SubsampleParams
from ferflow.schema import EMOTIONS

_VALID_RAW_LABELS = [str(i) for i in range(len(EMOTIONS))]


def filter_classes(table: pd.DataFrame, class_names: tuple[str, ...]) -> pd.DataFrame:
    """Keep ``class_names`` and relabel them 0..k-1; rows with labels outside 0..6 are kept as they are."""
    new_label = {str(EMOTIONS.index(name)): str(i) for i, name in enumerate(class_names)}
    raw = table["emotion"].map(lambda value: value.strip() if isinstance(value, str) else value)
    keep = ~raw.isin(_VALID_RAW_LABELS) | raw.isin(list(new_label))
    result = table.loc[keep].copy()
    result["emotion"] = raw[keep].map(lambda value: new_label.get(value, value))
    return result


def stratified_subsample(table: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Sample ``fraction`` of each (Usage, emotion) stratum; rows keep their original order."""
    if fraction >= 1.0:
        return table.copy()
    rng = np.random.default_rng(seed)
    keys = table[["Usage", "emotion"]].astype("string").fillna("<missing>")
    picked = np.zeros(len(table), dtype=bool)
    # Per Usage, so that each split's own total is rounded exactly and keeps its class distribution.
    for _, positions in keys.groupby("Usage", sort=True).indices.items():
        labels = keys["emotion"].to_numpy()[positions]
        picked[positions] = stratified_pick(labels, fraction, rng, keep_one=True)
    return table.loc[picked]


def _counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    keys = table[["Usage", "emotion"]].astype("string").fillna("<missing>")
    return {
        str(usage): {str(label): int(n) for label, n in rows["emotion"].value_counts().sort_index().items()}
        for usage, rows in keys.groupby("Usage", sort=True)
    }


def run(params: SubsampleParams, raw_table: Path, out_table: Path, summary: Path) -> dict:
    """Write the stratified subsample of ``raw_table`` and a JSON summary (class names, counts)."""
    table = read_table(raw_table)
    class_names = params.class_names
    filtered = filter_classes(table, class_names)
    sample = stratified_subsample(filtered, params.fraction, params.seed)
    facts = {
        "class_names": list(class_names),
        "fraction": params.fraction,
        "seed": params.seed,
        "rows_in": len(table),
        "rows_after_class_filter": len(filtered),
        "rows_out": len(sample),
        "counts_in": _counts(filtered),
        "counts_out": _counts(sample),
    }
    write_table(sample.reset_index(drop=True), out_table)
    write_json(summary, facts)
    print(
        f"subsample: {len(sample)} of {len(filtered)} rows ({params.fraction:.0%} stratified on Usage x emotion, "
        f"{len(class_names)} classes: {', '.join(class_names)}) -> {out_table}"
    )
    return facts

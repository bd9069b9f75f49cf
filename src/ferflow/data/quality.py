"""The data-quality contract of a FER table, checked with Great Expectations (GX Core 1.x) in-process.

Row-level checks run on columns derived from each row (pixel count, range, spread, duplicate flag) so
that built-in expectations can judge them; their ``unexpected_index_list`` names the offending rows,
which is what the quarantine file is built from. Dataset-level checks (columns, class counts, duplicate
rate) decide whether the dataset as a whole is usable.

Duplicates are judged the way FER-2013 needs (it has about 1,850 exact copies, within and across its
Usages): the test split is never edited, a train or val face that is also in the test split is quarantined
from train/val (and a train face that is also in val from train), extra copies within one split are
quarantined, and the same face under two labels is a label conflict (its train/val copies are quarantined;
test rows stay). Malformed rows and duplicates have separate limits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ferflow.schema import COLUMNS, N_PIXELS, SPLIT_OF_USAGE, SPLITS, USAGES

# A sign is allowed so that "-3" reads as a pixel below 0, not as "not an integer".
_INTEGER_TOKEN = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class RowCheck:
    """One row-level expectation and the reason written to the quarantine file for a row that fails it."""

    name: str
    reason: str


@dataclass
class QualityReport:
    success: bool
    row_reasons: dict[int, list[str]]
    failed_dataset_checks: list[str]
    gx_results: dict[str, Any]
    expectation_rows: list[dict[str, Any]] = field(default_factory=list)
    malformed_rows: set[int] = field(default_factory=set)
    duplicates: DuplicateFindings | None = None

    @property
    def bad_rows(self) -> list[int]:
        return sorted(self.row_reasons)


@dataclass
class DuplicateFindings:
    """Exact copies among the well-formed rows, and what was done about them.

    ``pairs["train-test"]`` counts train rows that are copies of a test face, ``pairs["val-val"]`` extra
    copies within val, and so on (the first split is the copy's, the second the face's it copies); ``test-test``
    copies are counted but kept, since the test split is never edited.
    """

    frame: pd.DataFrame  # per well-formed row: copy_across_splits, copy_within_split, label_conflict, is_copy
    reasons: dict[int, list[str]]
    pairs: dict[str, int]
    label_conflict_faces: int
    label_conflict_rows: int
    rows_checked: int

    @property
    def copies(self) -> int:
        return int(self.frame["is_copy"].sum())

    def facts(self) -> dict[str, Any]:
        return {
            "rows_checked": self.rows_checked,
            "copies": self.copies,
            "copy_fraction": round(self.copies / max(self.rows_checked, 1), 6),
            "pairs": dict(self.pairs),
            "label_conflict_faces": self.label_conflict_faces,
            "label_conflict_rows": self.label_conflict_rows,  # test rows among them are kept
            "quarantined_rows": len(self.reasons),
        }


def derive_row_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Per-row facts that turn image-level checks into column checks GX can run."""
    counts, integers, lows, highs, spreads, digests = [], [], [], [], [], []
    for text in table["pixels"]:
        tokens = text.split() if isinstance(text, str) else []
        counts.append(len(tokens))
        is_integer = bool(tokens) and all(_INTEGER_TOKEN.match(token) for token in tokens)
        integers.append(is_integer)
        if is_integer:
            values = np.array(tokens, dtype=np.int64)
            lows.append(values.min())
            highs.append(values.max())
            spreads.append(float(values.std()))
        else:
            lows.append(np.nan)
            highs.append(np.nan)
            spreads.append(np.nan)
        # Same tokens = same image, whatever the whitespace; an empty row is nobody's duplicate.
        digests.append(hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).hexdigest() if tokens else None)
    return pd.DataFrame(
        {
            "emotion": table["emotion"].astype("string").str.strip().astype(object),
            "Usage": table["Usage"],
            "pixels": table["pixels"],
            "pixel_count": counts,
            "pixels_are_integers": integers,
            "pixel_min": lows,
            "pixel_max": highs,
            "pixel_std": spreads,
            "digest": digests,
        },
        index=table.index,
    )


def reason_kinds(reasons: pd.Series) -> pd.Series:
    """How many quarantined rows have each kind of reason: "... as train row 12" and "... as train row 40"
    are one kind of problem."""
    return (
        reasons.str.split("; ").explode()
        .str.replace(r"row \d+", "row N", regex=True)
        .str.replace(r"labelled \S+ in", "labelled otherwise in", regex=True)
        .value_counts()
    )  # fmt: skip


def _row_expectations(gxe, class_labels: list[str], min_pixel_std: float):
    """(expectation, RowCheck) pairs; the order is the order reasons appear in the quarantine file."""
    return [
        (gxe.ExpectColumnValuesToNotBeNull(column="emotion"), RowCheck("emotion_not_null", "missing label")),
        (gxe.ExpectColumnValuesToNotBeNull(column="pixels"), RowCheck("pixels_not_null", "missing pixels")),
        (gxe.ExpectColumnValuesToNotBeNull(column="Usage"), RowCheck("usage_not_null", "missing Usage")),
        (gxe.ExpectColumnValuesToBeInSet(column="emotion", value_set=class_labels),
         RowCheck("label_in_set", f"label not in 0..{len(class_labels) - 1}")),
        (gxe.ExpectColumnValuesToBeInSet(column="Usage", value_set=list(USAGES)),
         RowCheck("usage_in_set", f"Usage not one of {', '.join(USAGES)}")),
        (gxe.ExpectColumnValuesToBeBetween(column="pixel_count", min_value=N_PIXELS, max_value=N_PIXELS),
         RowCheck("pixel_count", f"pixel count is not {N_PIXELS}")),
        (gxe.ExpectColumnValuesToBeInSet(column="pixels_are_integers", value_set=[True]),
         RowCheck("pixels_integers", "pixels are not all integers")),
        (gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0),
         RowCheck("pixel_min", "pixel value below 0")),
        (gxe.ExpectColumnValuesToBeBetween(column="pixel_max", max_value=255),
         RowCheck("pixel_max", "pixel value above 255")),
        (gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=min_pixel_std),
         RowCheck("pixel_spread", f"near-blank or constant image (pixel std below {min_pixel_std:g})")),
    ]  # fmt: skip


# Which copy of a face is kept: the test split is never edited, then val (model selection) wins over train.
_KEEP_ORDER = {"test": 0, "val": 1, "train": 2}


def find_duplicates(derived: pd.DataFrame, class_names: list[str]) -> DuplicateFindings:
    """Exact copies among ``derived``'s rows (well-formed rows only), split by split.

    Each face keeps one anchor row: its first test row, else its first val row, else its first train row.
    Every other train/val row of that face is quarantined, naming the anchor; test rows are never removed.
    """
    splits = derived["Usage"].map(SPLIT_OF_USAGE)
    frame = pd.DataFrame(
        {"digest": derived["digest"], "emotion": derived["emotion"], "split": splits, "row": derived.index,
         "keep_order": splits.map(_KEEP_ORDER)},
        index=derived.index,
    )  # fmt: skip
    ordered = frame.sort_values(["keep_order", "row"], kind="stable")
    groups = ordered.groupby("digest", sort=False)
    ordered["anchor"] = groups["row"].transform("first")
    ordered["labels"] = groups["emotion"].transform("nunique")
    ordered = ordered.loc[frame.index]
    anchor_split = ordered["split"].loc[ordered["anchor"]].to_numpy()
    is_copy = (ordered["row"] != ordered["anchor"]).to_numpy()
    removable = (ordered["split"] != "test").to_numpy()
    across = is_copy & removable & (anchor_split != ordered["split"].to_numpy())
    within = is_copy & removable & (anchor_split == ordered["split"].to_numpy())
    conflict = (ordered["labels"] > 1).to_numpy() & removable

    def name(label: str) -> str:
        return class_names[int(label)] if label.isdigit() and int(label) < len(class_names) else repr(label)

    reasons: dict[int, list[str]] = {}
    for row, anchor, split, a_split in zip(ordered["row"][across | within], ordered["anchor"][across | within],
                                           ordered["split"][across | within], anchor_split[across | within],
                                           strict=True):  # fmt: skip
        if split == a_split:
            reasons.setdefault(int(row), []).append(f"duplicate image (same pixels as {a_split} row {anchor})")
        else:
            reasons.setdefault(int(row), []).append(
                f"copy of {a_split} row {anchor} (would leak the {a_split} split into {split})"
            )
    conflicting = ordered[ordered["labels"] > 1]
    for _, group in conflicting.sort_values(["keep_order", "row"]).groupby("digest", sort=False):
        for row, split, label in zip(group["row"], group["split"], group["emotion"], strict=True):
            if split == "test":
                continue
            other = group[group["emotion"] != label].iloc[0]
            reasons.setdefault(int(row), []).append(
                f"label conflict: same face labelled {name(other['emotion'])} in {other['split']} row {other['row']}"
            )

    pairs = {f"{a}-{b}": 0 for a in SPLITS for b in SPLITS if _KEEP_ORDER[a] >= _KEEP_ORDER[b]}
    for split, a_split in zip(ordered["split"][is_copy], anchor_split[is_copy], strict=True):
        pairs[f"{split}-{a_split}"] += 1
    checks = pd.DataFrame({"copy_across_splits": across, "copy_within_split": within, "label_conflict": conflict,
                           "is_copy": is_copy}, index=derived.index)  # fmt: skip
    return DuplicateFindings(
        frame=checks,
        reasons=reasons,
        pairs=pairs,
        label_conflict_faces=int(conflicting["digest"].nunique()),
        label_conflict_rows=int((ordered["labels"] > 1).sum()),
        rows_checked=len(derived),
    )


def _duplicate_expectations(gxe, max_duplicate_fraction: float) -> list[tuple[Any, str]]:
    return [
        (gxe.ExpectColumnValuesToBeInSet(column="copy_across_splits", value_set=[False]), "no_leak_across_splits"),
        (gxe.ExpectColumnValuesToBeInSet(column="copy_within_split", value_set=[False]), "no_copy_within_split"),
        (gxe.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]), "no_label_conflict"),
        (gxe.ExpectColumnValuesToBeInSet(column="is_copy", value_set=[False], mostly=1 - max_duplicate_fraction),
         "duplicate_rate"),
    ]  # fmt: skip


def _gx_context():
    # GX would otherwise try to phone home and draw a tqdm bar per metric.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx, gx.get_context(mode="ephemeral", project_config=config)


def _validate(gx, context, name: str, frame: pd.DataFrame, expectations: list) -> Any:
    source = context.data_sources.add_pandas(f"ferflow_{name}")
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"ferflow_{name}"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"ferflow_{name}_validation", data=batch, suite=suite)
    )
    return definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")


def _by_expectation(result: Any, expectations: list) -> list[Any]:
    """GX does not keep the suite's order in its results: line them up with ``expectations`` by id."""
    by_id = {item.expectation_config.id: item for item in result.results}
    return [by_id[expectation.id] for expectation in expectations]


def _summarise(result: Any, expectations: list, suite: str, labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for label, item in zip(labels, _by_expectation(result, expectations), strict=True):
        config = item.expectation_config
        rows.append({
            "suite": suite,
            "check": label,
            "expectation": config.type,
            "column": config.kwargs.get("column", ""),
            "success": bool(item.success),
            "unexpected": int(item.result.get("unexpected_count", 0) or 0),
            "observed": item.result.get("observed_value"),
        })  # fmt: skip
    return rows


def check_table(
    table: pd.DataFrame,
    class_names: list[str],
    min_class_count: int,
    min_pixel_std: float,
    max_duplicate_fraction: float,
) -> QualityReport:
    """Run the GX suites (columns, rows, duplicates, class counts) on ``table``; collect reasons per bad row.

    Duplicates are looked for among the well-formed rows only, so a broken or blank row counts once, as
    malformed, and never as somebody's copy.
    """
    gx, context = _gx_context()
    import great_expectations.expectations as gxe

    columns_check = [gxe.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS), exact_match=True)]
    columns_result = _validate(gx, context, "columns", table, columns_check)
    expectation_rows = _summarise(columns_result, columns_check, "columns", ["columns"])
    gx_results: dict[str, Any] = {"columns": columns_result.to_json_dict()}
    if not columns_result.success:
        observed = columns_result.results[0].result.get("observed_value")
        return QualityReport(
            False,
            {},
            [f"columns: expected exactly {list(COLUMNS)}, found {observed}"],
            gx_results,
            expectation_rows,
        )

    derived = derive_row_columns(table)
    labels = [str(i) for i in range(len(class_names))]
    pairs = _row_expectations(gxe, labels, min_pixel_std)
    row_checks = [expectation for expectation, _ in pairs]
    rows_result = _validate(gx, context, "rows", derived, row_checks)
    gx_results["rows"] = rows_result.to_json_dict()
    expectation_rows += _summarise(rows_result, row_checks, "rows", [check.name for _, check in pairs])

    row_reasons: dict[int, list[str]] = {}
    for (_, check), item in zip(pairs, _by_expectation(rows_result, row_checks), strict=True):
        for index in item.result.get("unexpected_index_list") or []:
            row_reasons.setdefault(int(index), []).append(check.reason)
    malformed = set(row_reasons)

    failed: list[str] = []
    well_formed = derived.loc[~derived.index.isin(list(malformed))]
    duplicates = find_duplicates(well_formed, class_names)
    duplicate_checks = _duplicate_expectations(gxe, max_duplicate_fraction)
    expectations = [expectation for expectation, _ in duplicate_checks]
    duplicates_result = _validate(gx, context, "duplicates", duplicates.frame, expectations)
    gx_results["duplicates"] = duplicates_result.to_json_dict()
    # The three finders flag the rows to quarantine; only the duplicate rate is a gate.
    finders = _summarise(duplicates_result, expectations, "duplicates", [n for _, n in duplicate_checks])
    expectation_rows += [{**row, "informational": row["check"] != "duplicate_rate"} for row in finders]
    for row, reasons in duplicates.reasons.items():
        row_reasons.setdefault(row, []).extend(reasons)
    if not _by_expectation(duplicates_result, expectations)[-1].success:
        failed.append(f"duplicate rate {duplicates.copies / max(len(well_formed), 1):.1%} ({duplicates.copies} copies "
                      f"in {len(well_formed)} well-formed rows) exceeds validate.max_duplicate_fraction "
                      f"{max_duplicate_fraction:.1%}")  # fmt: skip

    clean_labels = derived.loc[~derived.index.isin(list(row_reasons)), "emotion"]
    counts = pd.DataFrame({
        "class_name": class_names,
        "count": [int((clean_labels == label).sum()) for label in labels],
    })  # fmt: skip
    class_check = [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=min_class_count)]
    classes_result = _validate(gx, context, "classes", counts, class_check)
    gx_results["classes"] = classes_result.to_json_dict()
    expectation_rows += _summarise(classes_result, class_check, "classes", ["class_counts"])
    if not classes_result.success:
        short = counts[counts["count"] < min_class_count]
        listing = ", ".join(f"{row.class_name} ({row.count})" for row in short.itertuples())
        failed.append(f"classes below validate.min_class_count={min_class_count} clean rows: {listing}")
    return QualityReport(not failed, row_reasons, failed, gx_results, expectation_rows, malformed, duplicates)

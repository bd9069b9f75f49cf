"""The data-quality contract of a FER table, checked with Great Expectations (GX Core 1.x) in-process.

Row-level checks run on columns derived from each row (pixel count, range, spread, duplicate flag) so
that built-in expectations can judge them; their ``unexpected_index_list`` names the offending rows,
which is what the quarantine file is built from. Dataset-level checks (columns, class counts, duplicate
rate) decide whether the dataset as a whole is usable.
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

from ferflow.schema import COLUMNS, N_PIXELS, USAGES

_INTEGER_TOKEN = re.compile(r"^\d+$")


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

    @property
    def bad_rows(self) -> list[int]:
        return sorted(self.row_reasons)


def derive_row_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Per-row facts that turn image-level checks into column checks GX can run."""
    counts, integers, lows, highs, spreads, duplicate_of = [], [], [], [], [], []
    first_row_of_image: dict[str, int] = {}
    for index, text in zip(table.index, table["pixels"], strict=True):
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
        digest = hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).hexdigest() if tokens else None
        first = first_row_of_image.setdefault(digest, index) if digest else index
        duplicate_of.append(first if first != index else np.nan)
    is_duplicate = ~pd.isna(np.array(duplicate_of, dtype=float))
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
            "is_duplicate": is_duplicate,
            "duplicate_of": duplicate_of,
        },
        index=table.index,
    )


def _row_expectations(gxe, class_labels: list[str], min_pixel_std: float, max_duplicate_fraction: float):
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
        (gxe.ExpectColumnValuesToBeInSet(column="is_duplicate", value_set=[False], mostly=1 - max_duplicate_fraction),
         RowCheck("not_duplicate", "duplicate image")),
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
    """Run the three GX suites (columns, rows, class counts) on ``table``; collect reasons per bad row."""
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
    pairs = _row_expectations(gxe, labels, min_pixel_std, max_duplicate_fraction)
    row_checks = [expectation for expectation, _ in pairs]
    rows_result = _validate(gx, context, "rows", derived, row_checks)
    gx_results["rows"] = rows_result.to_json_dict()
    expectation_rows += _summarise(rows_result, row_checks, "rows", [check.name for _, check in pairs])

    row_reasons: dict[int, list[str]] = {}
    failed: list[str] = []
    for (_, check), item in zip(pairs, _by_expectation(rows_result, row_checks), strict=True):
        for index in item.result.get("unexpected_index_list") or []:
            reason = check.reason
            if check.name == "not_duplicate":
                reason = f"duplicate image (same pixels as row {int(derived.at[index, 'duplicate_of'])})"
            row_reasons.setdefault(int(index), []).append(reason)
        if check.name == "not_duplicate" and not item.success:
            rate = item.result.get("unexpected_percent", 0.0)
            failed.append(f"duplicate rate {rate:.1f}% exceeds validate.max_duplicate_fraction "
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
    return QualityReport(not failed, row_reasons, failed, gx_results, expectation_rows)

"""Stage ``download``: acquire the raw data in whatever form the user has it.

Writes the canonical table ``data/raw/fer2013.csv`` (Kaggle layout) and a manifest with the source,
checksums and row counts. Rows are not judged here (that is the validate stage's job), but a file that
cannot be read as a FER table at all is an error naming the file, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferflow import __version__
from ferflow.data.sources import acquire
from ferflow.data.table import write_table
from ferflow.io import atomic_path, sha256_file, write_json
from ferflow.params import DataParams


def _counts(table) -> dict[str, Any]:
    by_usage = table["Usage"].fillna("<missing>").value_counts().sort_index()
    by_pair = table.fillna({"Usage": "<missing>", "emotion": "<missing>"}).groupby(["Usage", "emotion"]).size()
    return {
        "rows": len(table),
        "by_usage": {str(k): int(v) for k, v in by_usage.items()},
        "by_usage_and_emotion": {
            str(usage): {str(emotion): int(n) for (u, emotion), n in by_pair.items() if u == usage}
            for usage in by_usage.index
        },
    }


def run(params: DataParams, raw_table: Path, manifest: Path, cache_dir: Path, progress: bool = True) -> dict:
    """Acquire the data named by ``params.source``; write ``raw_table`` and ``manifest``. Returns the manifest."""
    acquired = acquire(params, cache_dir=cache_dir, progress=progress)
    # The table moves into place only once its manifest is written: a failure in between leaves the old pair.
    with atomic_path(raw_table) as staged_table:
        write_table(acquired.table, staged_table)
        facts = {
            "source": acquired.source,
            "kind": acquired.kind,
            "source_sha256": acquired.source_sha256,
            "table": str(raw_table),
            "table_sha256": sha256_file(staged_table),
            **_counts(acquired.table),
            **acquired.notes,
            "ferflow_version": __version__,
        }
        write_json(manifest, facts)
    usage = ", ".join(f"{k} {v}" for k, v in facts["by_usage"].items())
    print(f"download: {facts['rows']} rows from {acquired.kind} source ({usage}) -> {raw_table}")
    return facts

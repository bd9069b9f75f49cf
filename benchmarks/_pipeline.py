"""Shared by the benchmarks: the three-split FER-2013 file, a temporary copy of the pipeline, timing helpers.

``three_split_file`` builds a complete three-split file from ``../shared/data/fer2013-train-publictest.csv.gz``:
a stratified 3,589 of its Training rows (the size of the real PrivateTest) relabelled ``PrivateTest``; the
copies FER-2013 has within Training then become natural train-test leaks for validate to remove.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FULL = REPO.parent / "shared" / "data" / "fer2013-train-publictest.csv.gz"
PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"]


def best_of(repeats: int, work) -> float:
    """The least disturbed of ``repeats`` timings of ``work()``, in seconds: these machines are shared."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_ratios(runners: dict, rounds: int = 7) -> dict[str, tuple[float, float, float]]:
    """Speed ratios against the first of ``runners`` (name -> (predict, inputs)): median, lowest and highest over
    ``rounds`` rounds, each timing every runner once, back to back, in an order that rotates. On a shared
    machine the load changes between two timings minutes apart (the best-of figures above moved 2.7-3.2x
    between runs of the same files); within a round it mostly hits both sides."""
    names = list(runners)
    for predict, inputs in runners.values():
        predict(inputs[:256])  # warm-up: first calls allocate
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            predict, inputs = runners[name]
            speeds[name].append(len(inputs) / best_of(1, lambda: predict(inputs)))  # noqa: B023
    baseline = np.array(speeds[names[0]])
    out = {}
    for name in names[1:]:
        ratios = np.array(speeds[name]) / baseline
        out[name] = (float(np.median(ratios)), float(ratios.min()), float(ratios.max()))
    return out


def three_split_file(out: Path, private_rows: int = 3589, seed: int = 2013) -> None:
    table = pd.read_csv(FULL, dtype={"pixels": str})
    training = table[table["Usage"] == "Training"]
    fraction = private_rows / len(training)
    private = training.groupby("emotion", group_keys=False).sample(frac=fraction, random_state=seed).index
    table.loc[private, "Usage"] = "PrivateTest"
    table.to_csv(out, index=False)


def source_file(kind: str, work: Path) -> Path:
    """The data source for ``kind``: ``three-split`` (built in ``work``) or ``train-publictest`` (as shared)."""
    if not FULL.is_file():
        raise SystemExit(f"{FULL} is not there: this benchmark needs the shared FER-2013 file")
    if kind == "train-publictest":
        return FULL
    source = work / "fer2013-three-split.csv"
    if not source.is_file():
        three_split_file(source)
    return source


def pipeline_copy(work: Path, values: dict[str, Any]) -> Path:
    """A git checkout of the pipeline files in ``work`` with ``values`` (dotted keys) set in params.yaml."""
    from ferflow.recipes import apply_to_file

    work.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, work / name)
    # The stages depend on their code (dvc.yaml lists it); the code that runs is the installed package.
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    dirs_exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    apply_to_file(work / "params.yaml", values)
    return work


def run(command: list[str], cwd: Path) -> tuple[str, float]:
    """Run ``command`` with this environment's tools first on PATH; (stdout, seconds). Exits on failure."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    print(f"  {' '.join(command)}: {seconds:.0f} s", file=sys.stderr)
    return result.stdout, seconds

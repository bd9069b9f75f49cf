"""Sweeps: a grid of params values queued as DVC experiments and run N at a time.

``ferflow sweep -S model.architecture=simple_cnn,vgg -S train.learning_rate=0.001,0.003 --jobs 2`` checks
every combination against the typed params (a bad key or value stops it before anything is queued), queues
one ``dvc exp run --queue -S ...`` per combination, starts ``dvc queue start -j 2`` and follows the queue
until its experiments end. Each experiment runs in its own copy under ``.dvc/tmp/exps`` and logs into the
project's one MLflow store (runs named ``train-<arch> [<experiment>]``); ``dvc exp show`` and the MLflow UI
compare them. DVC's own grid syntax (``dvc exp run --queue -S key=a,b``) does the same without the checks.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ferflow.errors import ParamsError
from ferflow.params import parse_params
from ferflow.recipes import get_recipe, parse_assignment, set_arguments, with_values, yaml_value

POLL_SECONDS = 5.0


def split_choices(text: str) -> list[str]:
    """``a,b,[1, 2]`` -> ``["a", "b", "[1, 2]"]``: commas inside brackets or braces belong to a value."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def grid(axes: Sequence[str]) -> list[dict[str, Any]]:
    """``["train.learning_rate=0.001,0.003", "model.width=16,32"]`` -> the 4 combinations, each a
    ``{dotted key: value}`` mapping (values read as YAML, as ``dvc exp run -S`` reads them)."""
    keys: list[str] = []
    choices: list[list[Any]] = []
    for axis in axes:
        key, _ = parse_assignment(axis)  # checks the key=value form
        texts = split_choices(axis.partition("=")[2])
        if key in keys:
            raise ParamsError(f"-S {axis}: {key} is swept twice; list all its values in one -S")
        if not all(texts):
            raise ParamsError(f"-S {axis}: an empty value; separate values with commas, e.g. {key}=1,2")
        keys.append(key)
        choices.append([yaml_value(text, axis) for text in texts])
    return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*choices)]


def queue_status(workspace: Path) -> dict[str, str]:
    """Experiment name -> DVC queue state (Queued, Running, Success, Failed) from ``dvc queue status``."""
    result = subprocess.run(["dvc", "queue", "status"], cwd=workspace, capture_output=True, text=True, check=False)
    states = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in {"Queued", "Running", "Success", "Failed"}:
            states[fields[1]] = fields[-1]
    return states


def sweep_command(params_file: Path, workspace: Path, axes: Sequence[str], jobs: int, recipe_name: str | None = None,
                  wait: bool = True) -> int:  # fmt: skip
    """Queue the grid (over ``recipe_name``'s values, if given), start ``jobs`` workers and, with ``wait``,
    follow the queue; 0 when every experiment of the sweep succeeded."""
    if not axes:
        raise ParamsError("ferflow sweep needs at least one -S key=value1,value2")
    if jobs < 0:
        raise ParamsError(f"--jobs {jobs}: the number of parallel experiments cannot be negative")
    base = get_recipe(recipe_name).values if recipe_name else {}
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    combinations = grid(axes)
    points = [{**base, **combination} for combination in combinations]
    for combination, point in zip(combinations, points, strict=True):  # all checked before anything is queued
        swept = ", ".join(f"{key}={value}" for key, value in combination.items())
        parse_params(with_values(raw, point), source=f"{params_file} with {swept}")

    names = []
    for point in points:
        command = ["dvc", "exp", "run", "--queue", *set_arguments(point)]
        result = subprocess.run(command, cwd=workspace, capture_output=True, text=True, check=False)
        queued = re.search(r"Queued experiment '([^']+)'", result.stdout + result.stderr)
        if result.returncode != 0 or not queued:
            raise ParamsError(f"`{shlex.join(command)}` failed ({result.returncode}); sweep stopped with {len(names)} "
                              f"experiments queued:\n{(result.stderr or result.stdout).strip()}")  # fmt: skip
        names.append(queued.group(1))
        print(f"sweep: queued {queued.group(1)}: {' '.join(set_arguments(point)[1::2])}", flush=True)
    print(f"sweep: queued {len(names)} experiments", flush=True)
    if jobs == 0:
        print("sweep: `dvc queue start -j N` runs them; `dvc queue status` follows them")
        return 0
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=workspace, check=True)
    if not wait:
        print("sweep: running; `dvc queue status` follows them, `dvc exp show` compares them")
        return 0
    return _follow(workspace, names)


def _follow(workspace: Path, names: list[str]) -> int:
    last = None
    while True:
        states = queue_status(workspace)
        mine = [states.get(name, "Queued") for name in names]
        summary = (sum(s in {"Success", "Failed"} for s in mine), mine.count("Running"), mine.count("Failed"))
        if summary != last:
            print(f"sweep: {summary[0]}/{len(names)} done, {summary[1]} running, {summary[2]} failed", flush=True)
            last = summary
        if summary[0] == len(names):
            break
        time.sleep(POLL_SECONDS)
    failed = [name for name, state in zip(names, mine, strict=True) if state == "Failed"]
    for name in failed:
        print(f"sweep: {name} failed; `dvc queue logs {name}` shows why", file=sys.stderr)
    print("sweep: `dvc exp show` compares the experiments; the MLflow UI shows their runs side by side")
    return 1 if failed else 0

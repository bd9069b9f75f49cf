"""Helpers of the end-to-end tests: run commands in a temporary git + DVC copy of the pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"]
STAGES = ["download", "subsample", "validate", "augment", "train", "evaluate", "cv", "register"]
TINY_TRAINING = {
    "model__architecture": "vgg", "model__width": 4, "model__depth": 2, "model__dense_units": 8,
    "train__epochs": 2, "train__batch_size": 64, "cv__folds": 2,
}  # fmt: skip


def run(command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """``command`` in ``cwd`` with this interpreter's scripts first on PATH, and ``env`` on top of ours."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)  # each temporary repository has its own store
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def stages_run(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def edit_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))



def make_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC checkout of the pipeline files, set to tiny sizes."""
    copy = tmp_path / "repo"
    for name in PIPELINE_FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)
    # The stages depend on their code (dvc.yaml lists it); the code that runs is the installed package.
    shutil.copytree(REPO_ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(["git", "init", "-q"], copy)
    edit_params(copy, data__synthetic__n_images=700, subsample__fraction=0.5, **TINY_TRAINING)
    return copy

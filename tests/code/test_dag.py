"""dvc.yaml is the contract: each stage depends on exactly the code it runs and declares the params it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from ferflow.params import Params
from tests.conftest import REPO_ROOT

SOURCE = REPO_ROOT / "src"
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def _module_file(name: str) -> Path | None:
    path = SOURCE.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported(path: Path, module: str) -> set[str]:
    """The ferflow modules ``path`` imports anywhere, function-level imports included (stages call them)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("ferflow")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("ferflow"):
                names |= {f"{base}.{a.name}" if _module_file(f"{base}.{a.name}") else base for a in node.names}
    return names


def code_closure(stage: str) -> set[str]:
    """The source files the stage's module runs. ``ferflow/__init__.py`` is listed (it holds the version the
    download manifest records) but not followed: its one import is the lazy ``ferflow.predict`` convenience."""
    seen: dict[str, Path] = {}
    todo = [f"ferflow.stages.{stage}"]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if path is None or module in seen:
            continue
        seen[module] = path
        if module != "ferflow":
            todo.extend(_imported(path, module))
    return {path.relative_to(REPO_ROOT).as_posix() for path in seen.values()}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    declared = {dep for dep in DVC_YAML["stages"][stage].get("deps", []) if dep.startswith("src/")}
    expected = code_closure(stage)
    missing, extra = sorted(expected - declared), sorted(declared - expected)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r}: add {missing} and remove {extra} from its deps "
        "(its module's imports changed)"
    )


def test_the_closure_follows_function_level_and_relative_imports():
    closure = code_closure("train")
    assert "src/ferflow/models/architectures.py" in closure  # imported inside training functions
    assert "src/ferflow/data/synthetic.py" not in closure and "src/ferflow/cli.py" not in closure
    assert "src/ferflow/data/synthetic.py" in code_closure("download")


def _declared_params(stage: str) -> list[str]:
    return [key for key in DVC_YAML["stages"][stage].get("params", []) if isinstance(key, str)]


@pytest.mark.parametrize("stage", STAGES)
def test_declared_params_name_real_keys(stage):
    """Every declared key exists in the typed params (a typo would make DVC track nothing)."""
    defaults = Params().model_dump(by_alias=True)
    for dotted in _declared_params(stage):
        node = defaults
        for key in dotted.split("."):
            assert isinstance(node, dict) and key in node, f"dvc.yaml stage {stage!r}: no param {dotted!r}"
            node = node[key]


def test_the_training_run_logs_only_params_its_stages_declare():
    """train and cv log the params that shape a model on their MLflow runs; each logged key is declared, so a
    run's logged params never go stale behind DVC's back."""
    from ferflow import tracking

    logged = tracking.flatten(tracking.training_params(Params()))
    for stage in ("train", "cv"):
        declared = _declared_params(stage)
        undeclared = sorted(key for key in logged if not any(key == d or key.startswith(f"{d}.") for d in declared))
        assert not undeclared, f"dvc.yaml stage {stage!r} logs but does not declare {undeclared}"


def sync_dvc_yaml() -> None:
    """Rewrite each stage's ``src/`` deps in dvc.yaml to its import closure, after its data deps
    (``python -m tests.code.test_dag``)."""
    out: list[str] = []
    stage, in_deps = None, False
    for line in (REPO_ROOT / "dvc.yaml").read_text().splitlines(keepends=True):
        if in_deps and not line.startswith("      - "):
            out += [f"      - {path}\n" for path in sorted(code_closure(stage))]
            in_deps = False
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip().rstrip(":")
        in_deps = in_deps or (stage in DVC_YAML["stages"] and line.rstrip() == "    deps:")
        if not line.startswith("      - src/"):
            out.append(line)
    (REPO_ROOT / "dvc.yaml").write_text("".join(out))

if __name__ == "__main__":
    sync_dvc_yaml()

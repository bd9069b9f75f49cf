"""Recipes: each one's values are what the params become, through ``ferflow recipe apply`` and through
the ``-S`` arguments it hands to ``dvc exp run`` (read back by a real DVC from its queue)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from ferflow.cli import main
from ferflow.params import load_params
from ferflow.recipes import RECIPES, dvc_command, parse_assignment, resolve, set_arguments
from tests.e2e.dag import PIPELINE_FILES, REPO_ROOT, run


def value_at(params, dotted: str):
    node = params.model_dump(by_alias=True)
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_resolves_to_exactly_its_values(name):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    values, params = resolve(RECIPES[name], raw)
    assert values == RECIPES[name].values
    for key, value in values.items():
        assert value_at(params, key) == value, key
    untouched = load_params(REPO_ROOT / "params.yaml")
    assert params.mlflow == untouched.mlflow and params.data == untouched.data  # no recipe names a data source


@pytest.mark.parametrize("name", list(RECIPES))
def test_set_arguments_read_back_as_the_same_values(name):
    arguments = set_arguments(RECIPES[name].values)
    assert arguments[::2] == ["-S"] * len(RECIPES[name].values)
    assert dict(parse_assignment(item) for item in arguments[1::2]) == RECIPES[name].values


def test_apply_writes_the_values_and_keeps_the_comments(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    shutil.copy2(REPO_ROOT / "params.yaml", params_file)
    assert main(["--params", str(params_file), "recipe", "apply", "cpu-full", "-S", "train.epochs=7"]) == 0
    params = load_params(params_file)
    assert params.train.epochs == 7  # the override wins over the recipe
    assert params.subsample.fraction == 1.0 and params.augment.online.erasing == RECIPES["cpu-full"].values[
        "augment.online.erasing"]  # fmt: skip
    text = params_file.read_text()
    assert "# Every knob of the pipeline" in text and "# stratified on (Usage, emotion)" in text
    assert f"{len(RECIPES['cpu-full'].values)} values written into {params_file}" in capsys.readouterr().out


def test_a_bad_override_is_refused_before_anything_is_written(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    shutil.copy2(REPO_ROOT / "params.yaml", params_file)
    before = params_file.read_text()
    assert main(["--params", str(params_file), "recipe", "apply", "cpu-fast", "-S", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["--params", str(params_file), "recipe", "show", "no-such-recipe"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
    for value in ("[1", "!!python/name:os.system"):  # not YAML, or YAML that would run code: refused, not raised
        assert main(["--params", str(params_file), "recipe", "apply", "cpu-fast", "-S", f"train.epochs={value}"]) == 2
        err = capsys.readouterr().err
        assert f"-S train.epochs={value}: {value!r} is not a YAML value" in err and "Traceback" not in err
    assert params_file.read_text() == before


def test_show_prints_the_dvc_command(tmp_path, capsys):
    assert main(["--params", str(REPO_ROOT / "params.yaml"), "recipe", "show", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "\ndvc exp run -n gpu -S " in out and " -S model.architecture=vgg " in out
    assert "train.precision: 'auto'" in out


@pytest.mark.slow
def test_dvc_queues_the_recipe_with_its_values(tmp_path):
    repo = tmp_path / "repo"
    for name in PIPELINE_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, repo / name)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], repo)
    values, _ = resolve(RECIPES["cpu-fast"], yaml.safe_load((repo / "params.yaml").read_text()))
    run(dvc_command(RECIPES["cpu-fast"], values, queue=True), repo)
    queued = yaml.safe_load(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for commit in queued for exp in (commit.get("experiments") or [])]
    assert [exp["name"] for exp in experiments] == ["cpu-fast"]
    queued_run = experiments[0]["revs"][0]
    assert queued_run["name"] == "cpu-fast" and queued_run["error"] is None
    applied = queued_run["data"]["params"]["params.yaml"]["data"]
    for key, value in values.items():
        node = applied
        for part in key.split("."):
            node = node[part]
        assert node == value, key

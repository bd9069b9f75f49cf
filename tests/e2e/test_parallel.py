"""A grid of experiments queued with DVC and run two at a time, all logging into the repository's one MLflow store.

`make test-parallel` runs this file (marker ``parallel``; left out of `make test` for its time).
"""

from __future__ import annotations

import json
import re

import mlflow
import pytest

from tests.e2e.dag import edit_params, run

pytestmark = [pytest.mark.slow, pytest.mark.parallel]


def commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def test_a_swept_grid_runs_two_at_a_time_into_one_store(repo):
    # A repository with no MLflow store yet: both experiments create it, and the registry, at the same moment.
    edit_params(repo, cv__enabled=False)
    commit(repo, "tiny")
    swept = run(["ferflow", "sweep", "-S", "train.learning_rate=0.001,0.004", "--jobs", "2"], repo)
    assert "sweep: queued 2 experiments" in swept.stdout and "sweep: 2/2 done, 0 running, 0 failed" in swept.stdout
    names = re.findall(r"sweep: queued ([\w-]+): ", swept.stdout)
    assert len(names) == 2

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ferflow")
    trained = client.search_runs([experiment.experiment_id], "tags.`ferflow.stage` = 'train'")
    assert len(trained) == 2 and {r.info.status for r in trained} == {"FINISHED"}
    # Each experiment trained with its own params (read from its copy of params.yaml, not the project's).
    by_name = {r.data.tags["ferflow.dvc_experiment"]: r for r in trained}
    assert sorted(by_name) == sorted(names)
    assert sorted(r.data.params["train.learning_rate"] for r in trained) == ["0.001", "0.004"]
    assert all(r.info.run_name == f"train-vgg [{name}]" for name, r in by_name.items())
    assert all("test_accuracy" in r.data.metrics and len(client.get_metric_history(r.info.run_id, "val_loss")) == 2
               for r in trained)  # fmt: skip
    # The register stages took turns: the first registered its run as version 1; the second ranked both runs
    # and registered its own only if it is the better by val macro-F1. Either way the challenger is the best run.
    best = min(trained, key=lambda r: (-r.data.metrics["valid_f1_macro"], r.info.start_time))
    versions = client.search_model_versions("name = 'ferflow-fer'")
    first = client.get_model_version("ferflow-fer", "1")
    assert len(versions) == (1 if first.run_id == best.info.run_id else 2)
    assert {v.run_id for v in versions} <= {r.info.run_id for r in trained}
    assert client.get_model_version_by_alias("ferflow-fer", "challenger").run_id == best.info.run_id
    assert client.get_model_version_by_alias("ferflow-fer", "champion").run_id in {v.run_id for v in versions}
    assert not (repo / "reports/train/run.json").exists()  # the experiments' outputs stay in their copies

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for baseline in shown for exp in (baseline.get("experiments") or [])]
    assert {exp["name"] for exp in experiments} == set(names)

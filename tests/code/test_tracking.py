"""MLflow bookkeeping against a real sqlite store in a temporary repository."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytest

from ferflow.errors import Terminated
from ferflow.paths import find_repo_root
from ferflow.tracking import flatten, tracked_run, tracking_uri


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_store_and_artifacts_resolve_from_the_repo_root(repo, monkeypatch):
    assert tracking_uri(repo) == f"sqlite:///{repo / 'mlflow.db'}"
    with tracked_run(repo, "ferflow-test", "first", tags={"k": "v"}) as run:
        mlflow.log_param("a", 1)
        mlflow.log_metric("loss", 0.5, step=0)
        mlflow.log_dict({"x": 1}, "facts.json")
    client = mlflow.MlflowClient(tracking_uri(repo))
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"a": "1"} and stored.data.tags["k"] == "v"
    assert (repo / "mlflow.db").is_file()
    assert list((repo / "mlruns").rglob("facts.json"))  # artifacts under <repo>/mlruns, not the cwd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'other.db'}")
    assert tracking_uri(repo).endswith("other.db")


def test_a_failing_run_is_marked_failed_not_left_running(repo):
    with pytest.raises(ValueError, match="boom"), tracked_run(repo, "ferflow-test", "broken") as run:
        raise ValueError("boom")
    status = mlflow.MlflowClient(tracking_uri(repo)).get_run(run.info.run_id).info.status
    assert status == "FAILED"


def test_a_failure_while_adding_to_a_finished_run_leaves_it_finished(repo):
    with tracked_run(repo, "ferflow-test", "trained") as run:
        mlflow.log_metric("val_loss", 0.3)
    with pytest.raises(KeyboardInterrupt), tracked_run(repo, run_id=run.info.run_id):
        mlflow.log_metric("test_accuracy", 0.9)
        raise KeyboardInterrupt  # e.g. evaluation stopped by Ctrl-C
    client = mlflow.MlflowClient(tracking_uri(repo))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"  # the training did not fail

    with tracked_run(repo, "ferflow-test", "killed") as killed:
        pass
    client.set_terminated(killed.info.run_id, status="FAILED")  # as a crashed training leaves it
    with pytest.raises(ValueError), tracked_run(repo, run_id=killed.info.run_id):
        raise ValueError("the resumed training failed again")
    assert client.get_run(killed.info.run_id).info.status == "FAILED"


def _terminated_inside_a_write(database: Path) -> None:
    """As when SIGTERM lands inside an MLflow write: a connection holding the write lock, referenced only from
    the frames the exception's traceback keeps."""
    connection = sqlite3.connect(database)
    connection.execute("BEGIN IMMEDIATE")  # the write lock
    raise Terminated()


def test_a_run_terminated_inside_a_database_write_still_ends_failed(repo):
    with pytest.raises(Terminated), tracked_run(repo, "ferflow-test", "terminated") as run:
        mlflow.log_metric("loss", 1.0)
        _terminated_inside_a_write(repo / "mlflow.db")
    assert mlflow.MlflowClient(tracking_uri(repo)).get_run(run.info.run_id).info.status == "FAILED"


def test_dvc_temporary_experiments_log_to_the_real_repository(repo):
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"  # where `dvc exp run --temp` / the queue run a stage
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    assert find_repo_root(copy) == repo
    assert find_repo_root(repo / "src") == repo
    with tracked_run(find_repo_root(copy), "ferflow", "from-a-temporary-copy") as run:
        mlflow.log_metric("loss", 0.5)
    stored = mlflow.MlflowClient(tracking_uri(repo)).get_run(run.info.run_id)
    assert stored.data.metrics == {"loss": 0.5}
    assert not list(copy.glob("mlflow.db*")) and not (copy / "mlruns").exists()  # nothing left in the copy


def test_flatten_nested_params():
    assert flatten({"train": {"lr": 0.001, "opt": {"name": "adam"}}, "seed": 1}) == {
        "train.lr": "0.001", "train.opt.name": "adam", "seed": "1",
    }  # fmt: skip


def test_runtime_tags_name_the_backend_device_and_commit(tmp_path):
    import keras

    from ferflow.tracking import runtime_tags

    tags = runtime_tags(tmp_path)  # not a git repository: the commit is "unknown", not an error
    assert tags["mlflow.source.git.commit"] == "unknown"
    assert tags["ferflow.keras_backend"] == keras.backend.backend()
    assert tags["ferflow.device_type"] in {"CPU", "GPU"} and tags["ferflow.device_name"]
    assert tags["ferflow.dtype_policy"] == keras.mixed_precision.dtype_policy().name


def test_auto_precision_is_bfloat16_only_where_the_hardware_multiplies_it(tmp_path):
    import keras

    from ferflow.models.training import configure_precision, cpu_has_amx_bf16, dtype_policy
    from ferflow.params import TrainParams

    sapphire, older = tmp_path / "sapphire", tmp_path / "older"
    sapphire.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    older.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_amx_bf16(sapphire) and not cpu_has_amx_bf16(older)
    assert not cpu_has_amx_bf16(tmp_path / "no-such-file")  # not Linux: float32
    assert dtype_policy("float32") == "float32" and dtype_policy("mixed_float16") == "mixed_float16"
    from ferflow.tracking import device

    if device()[0] == "CPU" and keras.backend.backend() == "tensorflow":
        assert dtype_policy("auto", sapphire) == "mixed_bfloat16"
        assert dtype_policy("auto", older) == "float32"  # emulated bfloat16 would be slower than float32
    else:  # a GPU multiplies bfloat16 whatever the processor; other backends' CPU bfloat16 was not measured
        assert dtype_policy("auto", sapphire) == dtype_policy("auto", older) == (
            "mixed_bfloat16" if device()[0] == "GPU" else "float32")  # fmt: skip
    expected = dtype_policy("auto")  # this machine's processor, set as Keras' global policy:
    try:
        assert configure_precision(TrainParams(precision="auto")) == expected
        assert keras.mixed_precision.dtype_policy().name == expected
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_store_points_mlflow_at_the_project_only_inside_the_block(repo, tmp_path):
    """One owner of the tracking URI: the caller's setting, and MLFLOW_TRACKING_URI, come back afterwards."""
    import os

    from ferflow.tracking import store

    with store(repo) as client:
        assert mlflow.get_tracking_uri() == tracking_uri(repo) == client.tracking_uri
    assert "MLFLOW_TRACKING_URI" not in os.environ

    # A caller that chose a store (MLflow's setter also exports MLFLOW_TRACKING_URI) is logged into, and keeps it.
    callers = f"sqlite:///{tmp_path / 'callers.db'}"
    mlflow.set_tracking_uri(callers)
    with tracked_run(repo, "ferflow-test", "inside") as run:
        assert mlflow.get_tracking_uri() == callers
    assert mlflow.get_tracking_uri() == callers == os.environ["MLFLOW_TRACKING_URI"]
    assert mlflow.MlflowClient(callers).get_run(run.info.run_id).info.status == "FINISHED"


def test_runs_started_by_a_dvc_experiment_carry_its_name(repo, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "sober-flab")
    with tracked_run(repo, "ferflow-test", "train-vgg") as run:
        pass
    stored = mlflow.MlflowClient(tracking_uri(repo)).get_run(run.info.run_id)
    assert stored.info.run_name == "train-vgg [sober-flab]"
    assert stored.data.tags["ferflow.dvc_experiment"] == "sober-flab"


def test_a_moved_repository_keeps_its_runs_artifacts(repo, tmp_path):
    import shutil

    from ferflow.tracking import relocate_store, store

    with tracked_run(repo, "ferflow-test", "before the move") as run:
        mlflow.log_dict({"x": 1}, "facts.json")
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(repo, moved)
    shutil.rmtree(repo / "mlruns")  # the old place is gone
    with store(moved) as client:
        stored = client.get_run(run.info.run_id)
        assert stored.info.artifact_uri.startswith((moved / "mlruns").resolve().as_uri())
        assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/facts.json") == {"x": 1}
        experiment = client.get_experiment_by_name("ferflow-test")
        assert experiment.artifact_location == (moved / "mlruns").resolve().as_uri()
    assert relocate_store(moved) is None  # done once; a second look changes nothing
    shutil.rmtree(moved)


# Each process, once MLflow is imported, waits at a barrier (a file per process in a folder) until all are
# there, then opens the new store, creates ferflow's experiment and logs a run.
PARALLEL_WRITER = """
import os, sys, time
from pathlib import Path
import mlflow
from ferflow import tracking
root, barrier, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
(barrier / str(os.getpid())).touch()
deadline = time.time() + 120
while len(list(barrier.iterdir())) < count:
    if time.time() > deadline:
        sys.exit("the other writers never reached the barrier")
    time.sleep(0.001)
with tracking.tracked_run(root, "ferflow", "parallel") as run:
    for step in range(10):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
print(run.info.run_id)
"""


def test_processes_that_open_a_new_store_at_once_all_log(repo):
    """Parallel experiments start together on a repository with no store yet. Unguarded, MLflow's table
    creation races (measured: 3 of 4 processes failed); tracking.client creates the store under a lock."""
    import subprocess
    import sys

    barrier = repo / "barrier"
    barrier.mkdir()
    command = [sys.executable, "-c", PARALLEL_WRITER, str(repo), str(barrier), "4"]
    writers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [writer.communicate(timeout=120) for writer in writers]
    for writer, (_, err) in zip(writers, results, strict=True):
        assert writer.returncode == 0, err[-2000:]
    client = mlflow.MlflowClient(tracking_uri(repo))
    experiment = client.get_experiment_by_name("ferflow")  # one experiment, however many created it at once
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(out.strip() for out, _ in results)
    assert all(run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) == 10
               for run in runs)  # fmt: skip


def test_reopening_a_run_the_store_does_not_hold_is_a_data_error(repo):
    from ferflow.errors import DataError

    with tracked_run(repo, "ferflow", "some run"):
        pass  # the store exists, the run below is not in it
    missing = r"MLflow run 0123abcd is not in the store sqlite:///.*mlflow\.db"
    with pytest.raises(DataError, match=missing), tracked_run(repo, run_id="0123abcd"):
        raise AssertionError("the block must not run")

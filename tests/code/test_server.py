"""`ferflow server`: a real PostgreSQL cluster and a real `mlflow server --serve-artifacts` on 127.0.0.1, and the
pipeline's train, evaluate and register stages logging to it over HTTP. Skipped where PostgreSQL is not
installed (CI's clean machine); runs wherever `initdb`, `pg_ctl` and `psql` are found."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
from pathlib import Path

import mlflow
import pytest
import sqlalchemy

from ferflow import server
from ferflow.io import read_json
from ferflow.params import parse_params
from ferflow.stages import evaluate, register, train
from tests.conftest import write_stage_arrays

pytestmark = pytest.mark.skipif(
    not server.postgres_available() or importlib.util.find_spec("psycopg2") is None,
    reason="PostgreSQL (apt-get install postgresql) or psycopg2 (pip install ferflow[server]) is not installed",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server():
    # Not under pytest's private tmp folder: as root, PostgreSQL runs as the user postgres, who must reach it.
    root = Path(tempfile.mkdtemp(prefix="ferflow-server-"))
    root.chmod(0o755)
    pg_port = _free_port()
    uri = server.start(root, port=_free_port(), pg_port=pg_port, workers=1)
    yield uri, root, pg_port
    assert "PostgreSQL" in server.stop(root)
    assert server.server_command("status", root, 0, pg_port) == 3  # nothing left running
    shutil.rmtree(root, ignore_errors=True)


def test_a_second_start_is_refused_while_the_server_runs(tracking_server):
    _, root, pg_port = tracking_server
    with pytest.raises(server.ServerError, match="already running; `ferflow server stop`"):
        server.start(root, port=_free_port(), pg_port=pg_port)


def test_a_port_in_use_is_refused_before_anything_starts(tracking_server):
    uri, _, pg_port = tracking_server
    root = Path(tempfile.mkdtemp(prefix="ferflow-server-"))
    root.chmod(0o755)
    taken = int(uri.rsplit(":", 1)[1])  # the running server's: it would answer this one's health check
    try:
        with pytest.raises(server.ServerError, match=f"--port {taken}: something already listens on 127.0.0.1"):
            server.start(root, port=taken, pg_port=_free_port(), workers=1)
        with pytest.raises(server.ServerError, match=f"--pg-port {pg_port}: something already listens"):
            server.start(root, port=_free_port(), pg_port=pg_port, workers=1)
        assert server.server_command("status", root, 0, 0) == 3
        assert not (root / "pgdata").exists() and not (root / "mlflow.pid").exists()
    finally:
        server.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_failure_after_postgresql_started_leaves_nothing_running():
    """The MLflow server never answers in time (a zero wait): the start fails with its log, and stops the
    PostgreSQL it had started and the mlflow server it had launched."""
    root = Path(tempfile.mkdtemp(prefix="ferflow-server-"))
    root.chmod(0o755)
    port, pg_port = _free_port(), _free_port()
    try:
        with pytest.raises(server.ServerError, match=f"did not answer on http://127.0.0.1:{port} within 0 s"):
            server.start(root, port=port, pg_port=pg_port, workers=1, wait_s=0)
        assert (root / "pgdata" / "PG_VERSION").is_file()  # PostgreSQL had been initialised and started
        assert server.server_command("status", root, 0, pg_port) == 3
        assert not (root / "pgdata" / "postmaster.pid").exists() and not (root / "mlflow.pid").exists()
        assert server._port_free(pg_port) and server._port_free(port)  # nothing listens any more
    finally:
        server.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def test_train_evaluate_register_log_runs_artifacts_and_the_champion_to_the_server(
    tracking_server, tmp_path, monkeypatch, synthetic_arrays
):
    uri, root, pg_port = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_stage_arrays(tmp_path, *synthetic_arrays)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = parse_params({"model": {"architecture": "vgg", "width": 4, "depth": 2, "dense_units": 8},
                           "train": {"epochs": 2, "batch_size": 64}})  # fmt: skip
    try:
        train.run(params, tmp_path / "train.npz", tmp_path / "clean.npz", tmp_path / "model.keras",
                  tmp_path / "history.json", tmp_path / "run.json", tmp_path / "curves.png", tmp_path / "ckpt",
                  tmp_path)  # fmt: skip
        out = tmp_path / "eval"
        evaluate.run(params.evaluate, tmp_path / "model.keras", tmp_path / "clean.npz", tmp_path / "run.json",
                     out / "metrics.json", out / "records.json", out / "confusion.json", out / "report.txt",
                     out / "plots", tmp_path)  # fmt: skip
        registration = register.run(params, tmp_path / "run.json", tmp_path / "clean.npz",
                                    tmp_path / "registration.json", tmp_path / "card.md", tmp_path)  # fmt: skip
    finally:
        mlflow.set_tracking_uri(None)

    run_id = read_json(tmp_path / "run.json")["run_id"]
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.artifact_uri.startswith("mlflow-artifacts:")
    metrics = read_json(out / "metrics.json")
    assert logged.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [0, 1]
    assert {"history.json", "plots"} <= {item.path for item in client.list_artifacts(run_id)}
    # The artifacts went through the server into its own folder, not into this client's repository.
    assert list((root / "artifacts").rglob("history.json")) and list((root / "artifacts").rglob("MLmodel"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert registration["champion_version"] == 1
    champion = client.get_model_version_by_alias("ferflow-fer", "champion")
    assert champion.run_id == run_id
    # ...and the store behind the server is PostgreSQL.
    engine = sqlalchemy.create_engine(server.backend_store_uri(pg_port))
    with engine.connect() as connection:
        stored = connection.execute(sqlalchemy.text("SELECT status FROM runs WHERE run_uuid = :id"), {"id": run_id})
        assert stored.scalar_one() == "FINISHED"
        aliases = connection.execute(sqlalchemy.text("SELECT alias, version FROM registered_model_aliases"))
        assert ("champion", 1) in [tuple(row) for row in aliases]
    engine.dispose()

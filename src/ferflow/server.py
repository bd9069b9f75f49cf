"""A shared MLflow tracking server: PostgreSQL as the backend store, artifacts served by the server itself.

``ferflow server start`` initialises a PostgreSQL cluster under ``--root`` (default ``.mlflow-server/``) the
first time, starts it on 127.0.0.1, and starts ``mlflow server --serve-artifacts`` on it in the background, so
that a team (or the scheduled retraining) logs to ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``: runs,
metrics and the Model Registry in PostgreSQL, which takes concurrent writers that a sqlite file does not;
artifacts under ``<root>/artifacts``, uploaded through the server, so clients need no shared disk.
``ferflow server stop`` stops both; ``status`` says what runs.

PostgreSQL refuses to run as root; as root, its commands run as the ``postgres`` user (Debian's package
creates it), which then owns ``<root>/pgdata``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ferflow.errors import FerflowError

DATABASE = "mlflow"
DB_USER = "ferflow"


class ServerError(FerflowError):
    exit_code = 2


class ServerLayout:
    """Where a server started from ``root`` keeps its cluster, artifacts, pid and logs."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.pgdata = self.root / "pgdata"
        self.artifacts = self.root / "artifacts"
        self.mlflow_pid = self.root / "mlflow.pid"
        self.mlflow_log = self.root / "mlflow.log"
        self.postgres_log = self.pgdata / "postgres.log"


def postgres_binary(name: str) -> Path:
    """``initdb``, ``pg_ctl``, ... from PATH or Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ServerError(f"PostgreSQL's {name} was not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return Path(found)


def postgres_available() -> bool:
    try:
        for name in ("initdb", "pg_ctl", "psql"):
            postgres_binary(name)
    except ServerError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None and _user_exists("postgres")


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-800:]
        raise ServerError(f"{what} failed (exit {result.returncode}): {detail}")
    return result.stdout


def backend_store_uri(pg_port: int) -> str:
    # psycopg2 named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
    return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DATABASE}"


def start(root: Path, port: int = 5000, pg_port: int = 5433, workers: int = 2, wait_s: float = 90.0) -> str:
    """Start PostgreSQL and the MLflow server (initialising the cluster on first use); the tracking URI."""
    layout = ServerLayout(root)
    if _mlflow_pid(layout) is not None:
        raise ServerError(f"an MLflow server started from {layout.root} is already running; `ferflow server stop`")
    for what, number in (("--port", port), ("--pg-port", pg_port)):
        # Checked first: a server already on the port would answer the health check for this one.
        if not _port_free(number):
            raise ServerError(f"{what} {number}: something already listens on 127.0.0.1:{number}; choose another")
    layout.artifacts.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and subprocess.run(_as_postgres(["test", "-x", str(layout.root)])).returncode != 0:
        raise ServerError(f"PostgreSQL runs as the user postgres, which cannot enter {layout.root} (a parent "
                          "folder is private): choose a --root that user can reach")  # fmt: skip
    if not (layout.pgdata / "PG_VERSION").is_file():
        layout.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(layout.pgdata, "postgres", "postgres")
            layout.pgdata.chmod(0o700)
        # trust on 127.0.0.1 only: the cluster listens nowhere else (see pg_ctl below)
        _run(_as_postgres([str(postgres_binary("initdb")), "-D", str(layout.pgdata), "-U", DB_USER,
                           "--auth=trust", "-E", "UTF8"]), "initdb")  # fmt: skip
    options = f"-h 127.0.0.1 -p {pg_port} -k {layout.pgdata}"
    _run(_as_postgres([str(postgres_binary("pg_ctl")), "-D", str(layout.pgdata), "-o", options,
                       "-l", str(layout.postgres_log), "-w", "-t", "60", "start"]), "starting PostgreSQL")  # fmt: skip
    try:
        return _start_mlflow(layout, port, pg_port, workers, wait_s)
    except BaseException:
        stop(layout.root)  # PostgreSQL too: nothing is left running after a failed start
        raise


def _start_mlflow(layout: ServerLayout, port: int, pg_port: int, workers: int, wait_s: float) -> str:
    psql = [str(postgres_binary("psql")), "-h", "127.0.0.1", "-p", str(pg_port), "-U", DB_USER, "-d", "postgres"]
    exists = _run([*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], "psql").strip()
    if exists != "1":
        _run([*psql, "-c", f"CREATE DATABASE {DATABASE}"], f"creating database {DATABASE}")
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri(pg_port),
        "--serve-artifacts", "--artifacts-destination", layout.artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with open(layout.mlflow_log, "ab") as log:
        # its own session: the server outlives this command, and `stop` signals the whole group
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    layout.mlflow_pid.write_text(str(process.pid))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited ({process.returncode}); its log, {layout.mlflow_log}:\n"
                              f"{_tail(layout.mlflow_log)}")  # fmt: skip
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            if response.status == 200:
                return uri
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer on {uri} within {wait_s:.0f} s; log:\n{_tail(layout.mlflow_log)}")


def stop(root: Path) -> list[str]:
    """Stop the MLflow server and PostgreSQL started from ``root``; what was stopped."""
    layout = ServerLayout(root)
    stopped = []
    pid = _mlflow_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                with contextlib.suppress(ChildProcessError):  # started by this process: reap it, or it lingers
                    os.waitpid(pid, os.WNOHANG)
                os.killpg(pid, 0)
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)
        stopped.append(f"mlflow server (pid {pid})")
    layout.mlflow_pid.unlink(missing_ok=True)
    if (layout.pgdata / "postmaster.pid").is_file():
        _run(_as_postgres([str(postgres_binary("pg_ctl")), "-D", str(layout.pgdata), "-m", "fast", "-w", "stop"]),
             "stopping PostgreSQL")  # fmt: skip
        stopped.append("PostgreSQL")
    return stopped


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the servers themselves bind: a port whose last connection is in TIME_WAIT (PostgreSQL just
        # stopped, or just answered psql) can be listened on again; only a live listener makes it busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _mlflow_pid(layout: ServerLayout) -> int | None:
    try:
        pid = int(layout.mlflow_pid.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def server_command(action: str, root: Path, port: int, pg_port: int, workers: int = 2) -> int:
    if action == "start":
        uri = start(root, port, pg_port, workers)
        print(f"server: MLflow on {uri} (PostgreSQL {backend_store_uri(pg_port)}, artifacts under "
              f"{(root / 'artifacts').resolve()})\n  export MLFLOW_TRACKING_URI={uri}")  # fmt: skip
    elif action == "stop":
        stopped = stop(root)
        print(f"server: stopped {', '.join(stopped)}" if stopped else "server: nothing was running")
    else:
        layout = ServerLayout(root)
        pid = _mlflow_pid(layout)
        postgres = (layout.pgdata / "postmaster.pid").is_file()
        print(f"server: mlflow {f'running (pid {pid})' if pid else 'stopped'}, "
              f"PostgreSQL {'running' if postgres else 'stopped'}")  # fmt: skip
        return 0 if pid and postgres else 3
    return 0

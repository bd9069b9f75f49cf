"""The commands around the registry: ``ferflow promote``, ``ferflow models`` and ``ferflow retrain``.

``retrain`` exit codes, for schedulers: 0 a new champion was promoted, 10 the champion was kept (nothing
better, or nothing changed), 1 the pipeline or registration failed, 75 another retrain is running.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ferflow import paths, registry, tracking
from ferflow.errors import ParamsError
from ferflow.io import exclusive_lock, read_json
from ferflow.params import Params

PROMOTED, KEPT, FAILED, BUSY = 0, 10, 1, 75
KEY_METRICS = ("valid_f1_macro", "test_f1_macro", "test_accuracy")


def _client(repo_root: Path):
    return tracking.client(repo_root)  # reads and alias moves only: MLflow's global URI is left alone


def promote_command(params: Params, repo_root: Path, rollback: bool, clean_arrays: Path) -> int:
    # the gate loads models by models:/ URI; the registry lock: not while a register stage moves aliases
    with exclusive_lock(repo_root / paths.REGISTRY_LOCK), tracking.store(repo_root) as client:
        return _promote(params, repo_root, client, rollback, clean_arrays)


def _promote(params: Params, repo_root: Path, client, rollback: bool, clean_arrays: Path) -> int:
    from ferflow.stages.register import test_faces, write_model_card

    settings = params.registry
    if rollback:
        decision = registry.rollback(client, settings.model_name)
        print(f"promote: {decision.reason}")
        return PROMOTED
    clean = clean_arrays if clean_arrays.is_absolute() else repo_root / clean_arrays
    predict, labels, faces_hash = test_faces(settings.model_name, clean) if clean.is_file() else (None, None, None)
    decision = registry.promote(client, settings.model_name, settings.gate, predict, labels, faces_hash)
    challenger = registry.alias_version(client, settings.model_name, registry.CHALLENGER)
    if challenger is not None and challenger.run_id:
        # The card shows the gate's verdict: rewrite it now that the gate has run.
        run = client.get_run(challenger.run_id)
        write_model_card(client, settings.model_name, challenger.version, run, run.info.experiment_id, None)
    print(f"promote: {decision.reason}")
    return PROMOTED if decision.promoted else KEPT


def models_command(params: Params, repo_root: Path, as_json: bool) -> None:
    name = params.registry.model_name
    rows = registry.versions_table(_client(repo_root), name, KEY_METRICS)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no versions of {name!r} are registered yet: run `dvc repro` (or `make repro`)")
        return
    print(f"registered model {name}")
    header = (f"{'version':>7}  {'aliases':<20} {'val_f1':>8} {'test_f1':>8} {'test_acc':>8}  {'architecture':<13} "
              f"{'device':<6} ")  # fmt: skip
    print(header + f"{'created':<16}  run")
    for row in rows:
        created = dt.datetime.fromtimestamp(row["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        val_f1, f1, accuracy = (f"{row[m]:.4f}" if row[m] is not None else "n/a" for m in KEY_METRICS)
        print(f"{row['version']:>7}  {','.join(row['aliases']) or '-':<20} {val_f1:>8} {f1:>8} {accuracy:>8}  "
              f"{row['architecture']:<13} {row['device']:<6} {created:<16}  {row['run_id']}")  # fmt: skip


def _champion(client, name: str) -> str | None:
    version = registry.alias_version(client, name, registry.CHAMPION)
    return str(version.version) if version else None


def _dvc(repo_root: Path, *args: str) -> int:
    # The stages call `ferflow`; put this interpreter's scripts first so a cron job without an activated
    # virtual environment finds them.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo_root, env=env).returncode


def retrain_command(params: Params, repo_root: Path, params_file: Path) -> int:
    """Refresh the data, rerun what changed, register and gate; one summary line says what happened."""
    if params_file.resolve() != (repo_root / "params.yaml").resolve():
        raise ParamsError(f"--params {params_file}: retrain runs `dvc repro`, which reads the repository's "
                          "params.yaml; edit that file (or use `dvc exp run -S ...`) instead")  # fmt: skip
    lock_path = repo_root / paths.RETRAIN_LOCK
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            print(f"retrain: another retrain is running ({holder}); not starting a second one", file=sys.stderr)
            return BUSY
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}")
        lock.flush()
        return _retrain(params, repo_root)


def _retrain(params: Params, repo_root: Path) -> int:
    name = params.registry.model_name
    client = _client(repo_root)
    before = _champion(client, name)
    registration = repo_root / paths.REGISTRATION
    stamp = registration.stat().st_mtime if registration.is_file() else None
    started = time.monotonic()
    # `download` is forced so that a changed file behind the same source (a URL, a growing folder) is read
    # again; when its output is unchanged, DVC reruns nothing downstream.
    for args in (("repro", "--force", "download"), ("repro",)):
        code = _dvc(repo_root, *args)
        if code != 0:
            print(f"retrain: FAILED: `dvc {' '.join(args)}` exited {code}; champion unchanged "
                  f"({before or 'none'})", file=sys.stderr)  # fmt: skip
            return FAILED
    after = _champion(_client(repo_root), name)
    minutes = (time.monotonic() - started) / 60
    ran = registration.is_file() and registration.stat().st_mtime != stamp
    gate = read_json(registration).get("gate", "") if ran else "the pipeline was up to date: nothing was retrained"
    if after != before:
        print(f"retrain: PROMOTED: champion of {name} is now version {after} (was {before or 'none'}); {gate} "
              f"[{minutes:.1f} min]")  # fmt: skip
        return PROMOTED
    print(f"retrain: KEPT: champion of {name} stays version {after or 'none'}; {gate} [{minutes:.1f} min]")
    return KEPT

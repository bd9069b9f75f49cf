"""`ferflow retrain` refuses to overlap with a running retrain, and reports a failing pipeline as failed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ferflow.cli import main


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("{}\n")
    return tmp_path


def test_a_second_retrain_while_one_runs_exits_with_a_message(repo, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "f = open('.ferflow-retrain.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('pid 4242 since now'); "
         "f.flush(); print('held', flush=True); time.sleep(60)"],
        cwd=repo, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert main(["retrain"]) == 75
        assert time.monotonic() - started < 5  # it does not wait for the other one
        err = capsys.readouterr().err
        assert "another retrain is running (pid 4242 since now); not starting a second one" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_failing_pipeline_is_reported_as_failed_and_releases_the_lock(repo, capsys):
    (repo / "dvc.yaml").write_text("stages:\n  download:\n    cmd: exit 3\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    assert main(["retrain"]) == 1
    assert "retrain: FAILED: `dvc repro --force download` exited" in capsys.readouterr().err
    assert main(["retrain"]) == 1  # the lock was released: a later run is not refused as overlapping

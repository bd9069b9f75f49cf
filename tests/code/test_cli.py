"""The `ferflow` command: exit codes and messages a person can act on."""

import subprocess
import sys

import pytest

from ferflow.cli import main


def test_bad_params_exit_2_and_name_the_key(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("subsample:\n  fraction: -0.1\n")
    code = main(["--params", str(tmp_path / "params.yaml"), "subsample", "--raw", str(tmp_path / "raw.csv")])
    assert code == 2
    assert "subsample.fraction: Input should be greater than 0" in capsys.readouterr().err


def test_data_error_exits_1_without_traceback(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {tmp_path / 'missing.csv.gz'}\n")
    code = main(["--params", str(tmp_path / "params.yaml"), "download", "--out", str(tmp_path / "raw.csv"),
                 "--manifest", str(tmp_path / "m.json"), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("ferflow download: error: ") and "missing.csv.gz: no such file or folder" in err
    assert "Traceback" not in err and not (tmp_path / "raw.csv").exists()


def test_entry_point_help_lists_every_stage():
    result = subprocess.run([sys.executable, "-m", "ferflow", "--help"], capture_output=True, text=True, check=True)
    for stage in ("download", "subsample", "validate", "augment"):
        assert stage in result.stdout


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2

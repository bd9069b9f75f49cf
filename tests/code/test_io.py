import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ferflow.io import atomic_open, read_npz, write_json, write_npz


def test_atomic_open_keeps_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_atomic_open_creates_parents_and_plain_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json(target, {"x": np.int64(3), "y": np.float32(0.5)})
    assert target.read_text().startswith('{\n  "x": 3')
    assert target.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_npz_round_trip_without_pickle(tmp_path):
    path = tmp_path / "arrays.npz"
    write_npz(path, images=np.zeros((2, 48, 48), np.uint8), names=np.array(["happy", "sad"]))
    data = read_npz(path)
    assert data["images"].shape == (2, 48, 48)
    assert data["names"].tolist() == ["happy", "sad"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    target = tmp_path / "metrics.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".metrics.json.{dead.stdout.strip()}.abc123.tmp"  # a writer killed mid-write left it
    orphan.write_text('{"accuracy": 0.')
    alive = tmp_path / f".metrics.json.{os.getpid()}.xyz789.tmp"  # a writer still at work: not touched
    alive.write_text("{")
    write_json(target, {"accuracy": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "metrics.json"]


def _private_mount_namespace() -> str:
    """``unshare`` if this machine lets an unprivileged user and mount namespace be made, where a tiny tmpfs or
    a read-only bind mount can be set up without privileges outside it; the test skips otherwise."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a user and mount namespace here (unshare -rm), so no read-only or full mount")
    return unshare


@pytest.mark.parametrize(("fault", "reason"), [
    ("read-only folder", "Read-only file system (errno 30)"),
    ("full disk", "No space left on device (errno 28)"),
], ids=["read-only folder", "full disk"])  # fmt: skip
def test_an_output_folder_that_cannot_be_written_fails_clearly_and_keeps_the_previous_output(
    tmp_path, synthetic_table, fault, reason
):
    """The subsample stage rerun with another seed into a read-only folder or onto a full disk (a real
    read-only bind mount, a real 8 MiB tmpfs filled up): exit 1, the output named with the system's reason,
    the previous outputs byte for byte as they were, and no temporary file left."""
    unshare = _private_mount_namespace()
    raw, out, previous = tmp_path / "raw.csv", tmp_path / "out", tmp_path / "previous"
    synthetic_table.to_csv(raw, index=False)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("subsample: {fraction: 0.5, seed: 1}\n")
    second.write_text("subsample: {fraction: 0.5, seed: 2}\n")
    command = [sys.executable, "-m", "ferflow", "subsample", "--raw", str(raw), "--out", str(out / "subsample.csv"),
               "--summary", str(out / "subsample.json")]  # fmt: skip
    subprocess.run([*command[:3], "--params", str(first), *command[3:]], check=True, capture_output=True)
    shutil.copytree(out, previous)
    assert (out / "subsample.csv").stat().st_size > 100_000  # big enough not to fit in what the disk has left
    mount = {
        "read-only folder": f"mount --bind {out} {out} && mount -o remount,bind,ro {out}",
        "full disk": f"mount -t tmpfs -o size=8m tmpfs {out} && cp {previous}/* {out}/ && "
                     f"{{ dd if=/dev/zero of={out}/filler bs=4k 2>/dev/null; true; }}",
    }[fault]  # fmt: skip
    rerun = " ".join(shlex.quote(part) for part in [*command[:3], "--params", str(second), *command[3:]])
    script = (f"set -u; {mount} || exit 99; {rerun}; echo exit=$?; rm -f {out}/filler; "
              f"diff -r {previous} {out} && echo previous outputs intact")  # fmt: skip
    result = subprocess.run([unshare, "-rm", "bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert "exit=1" in result.stdout, result.stdout + result.stderr
    assert f"ferflow subsample: error: cannot write {out / 'subsample.csv'}: {reason}" in result.stderr
    assert "the previous file is unchanged" in result.stderr and "Traceback" not in result.stderr
    assert "previous outputs intact" in result.stdout, result.stdout  # diff -r: no change, no temporary file


def test_readers_name_a_missing_broken_or_incomplete_file(tmp_path):
    from ferflow.errors import DataError
    from ferflow.io import read_json

    with pytest.raises(DataError, match=r"absent\.npz: cannot be read as a \.npz of arrays"):
        read_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("images,labels\n")
    with pytest.raises(DataError, match=r"text\.npz: cannot be read as a \.npz of arrays"):
        read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "pickled.npz", rows=np.array([{"a": 1}], dtype=object))  # loading would unpickle
    with pytest.raises(DataError, match=r"pickled\.npz: cannot be read .*allow_pickle"):
        read_npz(tmp_path / "pickled.npz")
    write_npz(tmp_path / "partial.npz", images=np.zeros(2))
    with pytest.raises(DataError, match=r"partial\.npz: lacks the arrays labels \(it holds images\)"):
        read_npz(tmp_path / "partial.npz", ("images", "labels"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: cannot be read as JSON"):
        read_json(tmp_path / "bad.json")
    write_json(tmp_path / "empty.json", {})
    with pytest.raises(DataError, match=r"empty\.json: lacks class_names"):
        read_json(tmp_path / "empty.json", ("class_names",))

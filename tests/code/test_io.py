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

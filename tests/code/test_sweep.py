"""ferflow sweep's grid: combinations, and bad values refused before anything is queued."""

from __future__ import annotations

import re

import pytest

from ferflow.errors import ParamsError
from ferflow.sweep import grid, split_choices, sweep_command
from tests.conftest import REPO_ROOT


def test_grid_is_every_combination_with_values_read_as_yaml():
    points = grid(["model.architecture=simple_cnn,vgg", "train.learning_rate=0.001,0.003", "cv.enabled=false"])
    assert len(points) == 4 and points[0] == {"model.architecture": "simple_cnn", "train.learning_rate": 0.001,
                                              "cv.enabled": False}  # fmt: skip
    assert {(p["model.architecture"], p["train.learning_rate"]) for p in points} == {
        ("simple_cnn", 0.001), ("simple_cnn", 0.003), ("vgg", 0.001), ("vgg", 0.003)}  # fmt: skip
    assert split_choices("[1, 2],{a: 1, b: 2},3") == ["[1, 2]", "{a: 1, b: 2}", "3"]


@pytest.mark.parametrize(("axes", "message"), [
    (["train.learning_rate=0.001,-1"], "train.learning_rate=-1"),
    (["train.epochz=1,2"], "train.epochz"),
    (["train.epochs=1,,2"], "an empty value"),
    (["train.epochs=1", "train.epochs=2"], "train.epochs is swept twice"),
    (["train.epochs"], "expected key=value"),
    (["train.epochs=[1,2"], "-S train.epochs=[1,2: '[1,2' is not a YAML value"),
])  # fmt: skip
def test_a_bad_point_stops_the_sweep_before_anything_is_queued(tmp_path, axes, message):
    params = tmp_path / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text())
    # tmp_path is not a DVC repository: had the sweep reached DVC, DVC's own error would be raised instead.
    with pytest.raises(ParamsError, match=re.escape(message)):
        sweep_command(params, tmp_path, axes, jobs=2)
    assert not (tmp_path / ".dvc").exists()

"""run.json, the train stage's record for evaluate and register: typed, and refused with the field named."""

import json

import pytest

from ferflow.errors import DataError
from ferflow.run_info import RunInfo

RECORD = dict(
    run_id="r1", experiment_id="1", model_uri="models:/m-1", architecture="vgg", class_names=["happy", "sad"],
    data_hash="d", train_data_hash="t", test_hash="h", resumed=False, best_epoch=3, epochs_run=5,
    train_seconds=12.5, best={"val_loss": 0.7, "val_accuracy": 0.8}, keras_backend="jax", device_type="GPU",
    device_name="H100", data_parallel_devices=1, git_commit="abc",
)  # fmt: skip


def test_round_trip_and_the_classes_tag(tmp_path):
    info = RunInfo(**RECORD)
    info.write(tmp_path / "run.json")
    assert RunInfo.read(tmp_path / "run.json") == info and info.classes == "happy,sad"
    assert json.loads((tmp_path / "run.json").read_text())["best"]["val_accuracy"] == 0.8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_hash": None}, "test_hash: Input should be a valid string"),
        ({"epochs_run": "five"}, "epochs_run: Input should be a valid integer"),
        ({"stage": "train"}, "stage: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_record_names_the_file_and_the_field(tmp_path, change, message):
    (tmp_path / "run.json").write_text(json.dumps({**RECORD, **change}))
    with pytest.raises(DataError, match="rerun the train stage") as error:
        RunInfo.read(tmp_path / "run.json")
    assert str(error.value).startswith(f"{tmp_path / 'run.json'}: not a run record") and message in str(error.value)


def test_a_missing_field_and_a_missing_file(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({k: v for k, v in RECORD.items() if k != "data_hash"}))
    with pytest.raises(DataError, match="data_hash: Field required"):
        RunInfo.read(tmp_path / "run.json")
    with pytest.raises(DataError, match="no such file; run the train stage first"):
        RunInfo.read(tmp_path / "absent.json")

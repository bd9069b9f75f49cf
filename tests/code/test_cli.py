"""The `ferflow` command: exit codes and messages a person can act on."""

import subprocess
import sys

import numpy as np
import pytest

from ferflow.cli import _params, build_parser, main
from ferflow.schema import EMOTIONS


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
    for stage in ("download", "subsample", "validate", "augment", "train", "evaluate", "cv"):
        assert stage in result.stdout


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("params_text", "message"),
    [
        ("model:\n  architecture: resnet9000\n", "model.architecture: Input should be 'simple_cnn', 'vgg'"),
        ("train:\n  learning_rate: -0.01\n", "train.learning_rate: Input should be greater than 0"),
        ("cv:\n  folds: 1\n", "cv.folds: Input should be greater than or equal to 2"),
    ],
)
def test_bad_training_params_fail_before_training(tmp_path, capsys, monkeypatch, params_text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(params_text)
    assert main(["--params", "params.yaml", "train"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


def test_missing_weights_file_fails_before_training(tmp_path, capsys, monkeypatch, synthetic_arrays):
    from ferflow.io import write_npz

    monkeypatch.chdir(tmp_path)
    images, labels, usages = synthetic_arrays
    splits = np.select([usages == "Training", usages == "PublicTest"], ["train", "val"], "test")
    write_npz(tmp_path / "clean.npz", images=images, labels=labels, splits=splits, class_names=np.array(EMOTIONS))
    write_npz(tmp_path / "train.npz", images=images, labels=labels, class_names=np.array(EMOTIONS))
    (tmp_path / "params.yaml").write_text("model:\n  architecture: resnet50\n  weights: missing/resnet50.h5\n")
    code = main(["--params", "params.yaml", "train", "--train-arrays", "train.npz", "--clean", "clean.npz"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.weights: file missing/resnet50.h5 does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


def test_commands_work_from_any_folder_of_the_repository(tmp_path, capsys, monkeypatch):
    from tests.conftest import REPO_ROOT

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "reports" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "reports" / "deep")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["models"]) == 0
    assert "no versions of 'ferflow-fer' are registered yet" in capsys.readouterr().out
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "reports" / "deep" / "mlflow.db").exists()

    args = build_parser().parse_args(["train"])
    assert args.model == tmp_path / "models" / "model.keras" and args.repo_root == tmp_path


def test_in_a_dvc_experiments_copy_params_and_paths_are_the_copys_and_the_store_is_the_projects(
    tmp_path, monkeypatch
):
    """`dvc exp run -S` and queued experiments change and run a copy under .dvc/tmp/exps: the stage must read
    that copy's params.yaml and files, and log into the project's one MLflow store."""
    import yaml

    from tests.conftest import REPO_ROOT

    project = tmp_path
    copy = project / ".dvc" / "tmp" / "exps" / "tmpq1w2e3"
    for folder, rate in ((project, 0.002), (copy, 0.004)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dvc.yaml").write_text("stages: {}\n")
        params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        params["train"]["learning_rate"] = rate
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(copy)
    args = build_parser().parse_args(["train"])
    assert args.workspace == copy and args.repo_root == project
    assert args.model == copy / "models" / "model.keras"
    assert _params(args).train.learning_rate == 0.004


def test_recipe_apply_writes_the_workspaces_params_file_by_default(tmp_path, capsys, monkeypatch):
    import yaml

    from tests.conftest import REPO_ROOT

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    assert main(["recipe", "apply", "gpu"]) == 0
    assert f"values written into {tmp_path / 'params.yaml'}" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["architecture"] == "vgg"


def test_no_params_file_is_named_with_its_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["models"]) == 2
    assert f"{tmp_path / 'params.yaml'}: params file not found" in capsys.readouterr().err


def _stage_arrays(folder, synthetic_arrays, class_names=EMOTIONS):
    from ferflow.io import write_npz

    images, labels, usages = synthetic_arrays
    splits = np.select([usages == "Training", usages == "PublicTest"], ["train", "val"], "test")
    write_npz(folder / "clean.npz", images=images, labels=labels, splits=splits, class_names=np.array(EMOTIONS))
    keep = labels < len(class_names)
    write_npz(folder / "train.npz", images=images[keep], labels=labels[keep], class_names=np.array(class_names))


def test_training_arrays_of_another_class_set_fail_before_a_run_starts(tmp_path, capsys, monkeypatch,
                                                                         synthetic_arrays):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    _stage_arrays(tmp_path, synthetic_arrays, class_names=EMOTIONS[:2])
    (tmp_path / "params.yaml").write_text("{}\n")
    code = main(["--params", "params.yaml", "train", "--train-arrays", "train.npz", "--clean", "clean.npz"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "train.npz holds classes ['angry', 'disgust'], but clean.npz holds ['angry', 'disgust', 'fear'" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"not a zip", "train.npz: cannot be read as a .npz of arrays"),
    (None, "train.npz: lacks the arrays labels, class_names (it holds images)"),
])  # fmt: skip
def test_a_broken_arrays_file_is_named_without_a_traceback(tmp_path, capsys, monkeypatch, synthetic_arrays,
                                                            content, message):  # fmt: skip
    from ferflow.io import write_npz

    monkeypatch.chdir(tmp_path)
    _stage_arrays(tmp_path, synthetic_arrays)
    if content is None:
        write_npz(tmp_path / "train.npz", images=np.zeros((1, 48, 48), np.uint8))
    else:
        (tmp_path / "train.npz").write_bytes(content)
    (tmp_path / "params.yaml").write_text("{}\n")
    code = main(["--params", "params.yaml", "train", "--train-arrays", "train.npz", "--clean", "clean.npz"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "models").exists()


def _evaluate_inputs(folder, synthetic_arrays, run_id: str) -> None:
    from ferflow.io import array_digest, read_npz
    from ferflow.run_info import RunInfo

    _stage_arrays(folder, synthetic_arrays)
    clean = read_npz(folder / "clean.npz")
    is_test = clean["splits"] == "test"
    RunInfo(
        run_id=run_id, experiment_id="0", model_uri="models:/m", architecture="cnn", class_names=list(EMOTIONS),
        data_hash="d", train_data_hash="t", test_hash=array_digest(clean["images"][is_test], clean["labels"][is_test]),
        resumed=False, best_epoch=0, epochs_run=1, train_seconds=1.0, best={}, keras_backend="tensorflow",
        device_type="CPU", device_name="cpu", data_parallel_devices=1, git_commit="c",
    ).write(folder / "run.json")  # fmt: skip
    (folder / "params.yaml").write_text("{}\n")


EVALUATE = ["--params", "params.yaml", "evaluate", "--model", "model.keras", "--clean", "clean.npz",
            "--run-info", "run.json", "--metrics", "metrics.json"]  # fmt: skip


def test_evaluate_names_a_file_that_is_not_a_model(tmp_path, capsys, monkeypatch, synthetic_arrays):
    monkeypatch.chdir(tmp_path)
    _evaluate_inputs(tmp_path, synthetic_arrays, run_id="r")
    (tmp_path / "model.keras").write_bytes(b"\xff\xd8\xff a JPEG, not a model")
    code = main(EVALUATE)
    err = capsys.readouterr().err
    assert code == 1 and "model.keras: not a model ferflow can load safely" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "mlflow.db").exists()


def test_evaluate_of_a_run_the_store_does_not_hold_fails_before_scoring(tmp_path, capsys, monkeypatch,
                                                                        synthetic_arrays):  # fmt: skip
    import keras

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    _evaluate_inputs(tmp_path, synthetic_arrays, run_id="0123abcd")
    faces = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    faces.save(tmp_path / "model.keras")
    code = main(EVALUATE)
    err = capsys.readouterr().err
    assert code == 1 and "MLflow run 0123abcd is not in the store sqlite:///" in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "reports").exists()


def test_predict_on_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "notes.txt").write_text("no image here")
    assert main(["predict", str(tmp_path / "faces"), "--model", str(tmp_path / "unused.keras")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'faces'}: no image files in this folder" in err and "Traceback" not in err


def test_a_url_that_does_not_parse_is_named(tmp_path, capsys):
    assert main(["predict", "http://[::1", "--model", str(tmp_path / "unused.keras")]) == 1
    assert "http://[::1: not a valid URL (Invalid IPv6 URL)" in capsys.readouterr().err


def test_export_with_no_format_is_refused(tmp_path, capsys):
    assert main(["export", "--formats", ",", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "o")]) != 0
    assert "--formats: no format named; known: onnx, litert" in capsys.readouterr().err

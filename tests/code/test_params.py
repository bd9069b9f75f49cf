from pathlib import Path

import pytest
import yaml

from ferflow.errors import ParamsError
from ferflow.params import Params, load_params, parse_params

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_repository_params_file_is_valid_and_complete():
    params = load_params(REPO_ROOT / "params.yaml")
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # Every key in the file is consumed (no stale knobs), and the file spells out every default.
    assert params.model_dump(by_alias=True) == raw
    # ...and every default is declared once: the typed defaults are exactly the file's values.
    assert Params().model_dump(by_alias=True) == raw
    assert params.subsample.fraction == 0.1
    assert params.data.source == "synthetic"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"subsample": {"fraction": 1.5}}, "subsample.fraction: Input should be less than or equal to 1"),
        ({"subsample": {"fraction": 0}}, "subsample.fraction: Input should be greater than 0"),
        ({"subsample": {"fractoin": 0.2}}, "subsample.fractoin: unknown key"),
        ({"trian": {}}, "trian: unknown key"),
        (
            {"validate": {"min_class_count": "many"}},
            "validate.min_class_count: Input should be a valid integer",
        ),
        ({"subsample": {"classes": ["happy", "joy"]}}, "unknown class name(s) ['joy']"),
        ({"subsample": {"classes": ["happy"]}}, "needs at least two classes"),
        ({"subsample": {"classes": ["happy", "sad", "Happy"]}}, "subsample.classes: lists a class more than once"),
        ({"cv": {"folds": 1}}, "cv.folds"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer"),
        ({"model": {"architecture": "resnet9000"}}, "model.architecture"),
        ({"register": {"metric": "test_f1_macro"}}, "register.metric"),
        ({"subsample": {"classes": "five"}}, "unknown preset 'five'"),
        ({"data": {"sha256": "abc"}}, "data.sha256: must be 64 hexadecimal characters"),
        ({"data": {"on_bad_image": "ignore"}}, "data.on_bad_image: Input should be 'error' or 'skip'"),
        ({"augment": {"oversample": {"target_ratio": -1}}}, "augment.oversample.target_ratio"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert message in str(error.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ParamsError) as error:
        parse_params({"subsample": {"fraction": 2, "seed": -1}, "validate": {"max_malformed_fraction": 3}})
    text = str(error.value)
    assert "subsample.fraction" in text and "subsample.seed" in text
    assert "validate.max_malformed_fraction: Input should be less than or equal to 1" in text


def test_class_presets_and_lists_give_label_order():
    assert parse_params({"subsample": {"classes": "happy_vs_sad"}}).subsample.class_names == ("happy", "sad")
    assert parse_params({"subsample": {"classes": "no_disgust"}}).subsample.class_names == (
        "angry", "fear", "happy", "sad", "surprise", "neutral",
    )  # fmt: skip
    assert parse_params({"subsample": {"classes": ["Sad", "happy"]}}).subsample.class_names == (
        "sad",
        "happy",
    )


def test_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("subsample: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)
    bad.write_text("  \n")
    with pytest.raises(ParamsError, match="params.yaml: the params file is empty; restore it from git"):
        load_params(bad)


def test_model_spec_defaults_are_the_params_defaults():
    from dataclasses import fields

    from ferflow.models.architectures import ModelSpec

    spec, model = ModelSpec(), Params().model
    shared = [field.name for field in fields(ModelSpec) if hasattr(model, field.name)]
    # every knob of the network is a model param (n_classes comes from the data)
    assert sorted(shared) == sorted(field.name for field in fields(ModelSpec) if field.name != "n_classes")
    for name in shared:
        expected = None if name == "weights" else getattr(model, name)  # "none" -> None
        assert getattr(spec, name) == expected, name


def test_a_boolean_where_a_number_goes_is_refused_not_read_as_one():
    with pytest.raises(ParamsError) as raised:
        parse_params({"train": {"epochs": True, "seed": False}, "model": {"dropout": True}})
    message = str(raised.value)
    for key in ("train.epochs", "train.seed", "model.dropout"):
        assert f"{key}: true/false is not a number here" in message
    assert parse_params({"train": {"class_weighting": True}}).train.class_weighting is True  # booleans stay booleans


def test_a_blank_experiment_name_is_refused():
    with pytest.raises(ParamsError, match="mlflow.experiment: a blank experiment name"):
        parse_params({"mlflow": {"experiment": "   "}})
    assert parse_params({"mlflow": {"experiment": "fer 2013"}}).mlflow.experiment == "fer 2013"

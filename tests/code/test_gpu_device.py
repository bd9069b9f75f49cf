"""The packing that carries validated faces to the GPU machine is lossless and refuses a damaged copy."""

from __future__ import annotations

import importlib.util
import lzma
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_device.py"


@pytest.fixture(scope="module")
def gpu_device():
    spec = importlib.util.spec_from_file_location("gpu_device", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clean(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        # Extremes and flat areas exercise the predictor's clipping and the modular residual.
        "images": np.concatenate(
            [rng.integers(0, 256, (40, 48, 48)), np.zeros((2, 48, 48)), np.full((2, 48, 48), 255)]
        ).astype(np.uint8),
        "labels": rng.integers(0, 7, 44),
        "splits": np.array(["train"] * 30 + ["val"] * 7 + ["test"] * 7),
        "class_names": np.array(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]),
        "quality": np.array('{"malformed_rows": 0}'),
    }
    np.savez_compressed(path, **arrays)
    return arrays


def test_pack_then_unpack_gives_back_every_array_exactly(gpu_device, tmp_path):
    arrays = _clean(tmp_path / "clean.npz")
    gpu_device.pack(tmp_path / "clean.npz", tmp_path / "carry", parts=3)
    parts = sorted((tmp_path / "carry").glob("images.xz.*"))
    assert [p.name for p in parts] == ["images.xz.1", "images.xz.2", "images.xz.3"]
    gpu_device.unpack(tmp_path / "carry" / "clean-meta.npz", tmp_path / "rebuilt.npz", parts)
    rebuilt = np.load(tmp_path / "rebuilt.npz")
    assert sorted(rebuilt.files) == sorted(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(rebuilt[key], value)


def test_a_damaged_part_is_refused(gpu_device, tmp_path):
    _clean(tmp_path / "clean.npz")
    gpu_device.pack(tmp_path / "clean.npz", tmp_path / "carry", parts=2)
    parts = sorted((tmp_path / "carry").glob("images.xz.*"))
    with pytest.raises(lzma.LZMAError):  # the parts in the wrong order: the xz stream's own checks catch it
        gpu_device.unpack(tmp_path / "carry" / "clean-meta.npz", tmp_path / "rebuilt.npz", parts[::-1])
    assert not (tmp_path / "rebuilt.npz").exists()


def test_faces_that_decode_but_differ_from_the_packed_ones_are_refused(gpu_device, tmp_path):
    _clean(tmp_path / "clean.npz")
    gpu_device.pack(tmp_path / "clean.npz", tmp_path / "carry", parts=2)
    meta_file = tmp_path / "carry" / "clean-meta.npz"
    meta = dict(np.load(meta_file))
    np.savez(meta_file, **{**meta, "images_sha256": np.array("0" * 64)})  # as if other faces had been packed
    parts = sorted((tmp_path / "carry").glob("images.xz.*"))
    with pytest.raises(SystemExit, match="rebuilt faces do not match: sha256 [0-9a-f]{64}, packed 0{64}"):
        gpu_device.unpack(meta_file, tmp_path / "rebuilt.npz", parts)
    assert not (tmp_path / "rebuilt.npz").exists()


def test_stages_refuses_a_stage_the_dag_does_not_declare(gpu_device, tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: ferflow train\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="has no stage 'tarin'; it has train"):
        gpu_device.stages(["tarin"])


@pytest.mark.parametrize("sweep_file", ["gpu_variants.yaml", "gpu_variants_regularise.yaml"])
def test_every_variant_of_a_sweep_file_is_valid_params_with_its_own_values_on_top(gpu_device, sweep_file,
                                                                                  monkeypatch):  # fmt: skip
    """A sweep that would fail on the GPU machine, a key misspelt or a value out of range, fails here first."""
    import yaml

    from ferflow.params import parse_params
    from ferflow.recipes import get_recipe

    repo = _SCRIPT.parents[1]
    monkeypatch.chdir(repo)  # the variants start from the project's params.yaml, as on the GPU machine
    spec = yaml.safe_load((repo / "benchmarks" / sweep_file).read_text())
    assert len(spec["variants"]) >= 2
    for name, values in spec["variants"].items():
        params = parse_params(gpu_device._variant_params(spec, name, 5.5))
        assert params.train.time_budget_minutes == 5.5
        as_read = params.model_dump(by_alias=True)  # keyed as params.yaml is (validate, register)
        for dotted, value in {**get_recipe(spec["recipe"]).values, **spec["common"], **values}.items():
            node = as_read
            for part in dotted.split("."):
                node = node[part]
            assert node == value, (name, dotted)

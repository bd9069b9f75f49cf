"""Run the train/evaluate/cv stages on a machine without DVC or TensorFlow (the lent GPU machine), exactly.

The GPU machine has JAX but no TensorFlow, DVC or package registry, and takes at most 64 MiB per call. The
pipeline's upstream stages (download, subsample, validate) run here; their output travels, and the stages that
need the GPU run there from the same commit:

    # here: the validated data in two halves that fit beside the wheels (README, "The gpu recipe on a GPU")
    python benchmarks/gpu_device.py pack data/processed/clean.npz .gpu
    # there (KERAS_BACKEND=jax, PYTHONPATH=<wheels>:<repo>/src), in a clone of the same commit:
    python3 benchmarks/gpu_device.py unpack .gpu/clean-meta.npz data/processed/clean.npz .gpu/images.xz.*
    python3 benchmarks/gpu_device.py stages augment train evaluate cv

``pack`` stores each face as the residual of a gradient predictor (left + up - upper-left) compressed with xz:
lossless, and 21 % smaller than xz on the raw pixels (FER-2013's JPEG noise makes generic compressors weak).
``unpack`` checks the SHA-256 of the rebuilt faces against the one ``pack`` printed and stored. ``stages``
runs the commands ``dvc.yaml`` declares for the named stages, in order, with ``python -m ferflow`` for
``ferflow``, so the outputs and MLflow runs are the ones ``dvc repro`` would make. Only numpy and PyYAML are
needed, so the script runs on the bare machine before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_SIDE = 48


def _predicted(images: np.ndarray) -> np.ndarray:
    """The gradient prediction of every pixel from its left, upper and upper-left neighbours (int16)."""
    x = images.astype(np.int16)
    prediction = np.zeros_like(x)
    prediction[:, 1:, 1:] = x[:, 1:, :-1] + x[:, :-1, 1:] - x[:, :-1, :-1]
    prediction[:, 0, 1:] = x[:, 0, :-1]
    prediction[:, 1:, 0] = x[:, :-1, 0]
    return np.clip(prediction, 0, 255)


def pack(clean: Path, out: Path, parts: int = 2) -> str:
    """Write ``clean-meta.npz`` (every array but the faces) and ``images.xz.1..parts`` into ``out``."""
    data = np.load(clean, allow_pickle=False)
    images = data["images"]
    if images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE) or images.dtype != np.uint8:
        raise SystemExit(f"{clean}: expected uint8 faces of shape (N, 48, 48), found {images.dtype} {images.shape}")
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    meta = {key: data[key] for key in data.files if key != "images"}
    np.savez(out / "clean-meta.npz", **meta, images_sha256=np.array(digest))
    residual = ((images.astype(np.int16) - _predicted(images)) % 256).astype(np.uint8)
    blob = lzma.compress(residual.tobytes(), preset=9 | lzma.PRESET_EXTREME)
    size = -(-len(blob) // parts)
    for index in range(parts):
        (out / f"images.xz.{index + 1}").write_bytes(blob[index * size : (index + 1) * size])
    print(f"{len(images)} faces -> {len(blob) / 1e6:.1f} MB in {parts} parts ({len(blob) / images.nbytes:.0%}); "
          f"sha256 {digest}")  # fmt: skip
    return digest


def unpack(meta_path: Path, out: Path, part_paths: list[Path]) -> None:
    """Rebuild the ``clean.npz`` that ``pack`` read, and check its faces' SHA-256."""
    meta = dict(np.load(meta_path, allow_pickle=False))
    expected = str(meta.pop("images_sha256"))
    blob = b"".join(path.read_bytes() for path in part_paths)
    count = len(meta["labels"])
    residual = np.frombuffer(lzma.decompress(blob), np.uint8).reshape(count, _SIDE, _SIDE).astype(np.int16)
    x = np.zeros_like(residual)
    # The prediction needs the pixels before it: rebuild row by row, every face at once.
    x[:, 0, 0] = residual[:, 0, 0]
    for j in range(1, _SIDE):
        x[:, 0, j] = (residual[:, 0, j] + x[:, 0, j - 1]) % 256
    for i in range(1, _SIDE):
        x[:, i, 0] = (residual[:, i, 0] + x[:, i - 1, 0]) % 256
        for j in range(1, _SIDE):
            prediction = np.clip(x[:, i, j - 1] + x[:, i - 1, j] - x[:, i - 1, j - 1], 0, 255)
            x[:, i, j] = (residual[:, i, j] + prediction) % 256
    images = x.astype(np.uint8)
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    if digest != expected:
        raise SystemExit(f"rebuilt faces do not match: sha256 {digest}, packed {expected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, **meta)
    print(f"{count} faces -> {out} (sha256 {digest} as packed)")


def stages(names: list[str], dvc_file: Path = Path("dvc.yaml")) -> None:
    """Run the named stages' ``cmd`` from ``dvc.yaml`` in order, stopping at the first failure."""
    import yaml

    declared = yaml.safe_load(dvc_file.read_text())["stages"]
    for name in names:
        if name not in declared:
            raise SystemExit(f"{dvc_file} has no stage {name!r}; it has {', '.join(declared)}")
        command = shlex.split(declared[name]["cmd"])
        if command[0] != "ferflow":
            raise SystemExit(f"stage {name}: expected a ferflow command, found {command[0]!r}")
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, "-m", "ferflow", *command[1:]])
        print(f"== {name}: exit {code} in {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="clean.npz -> clean-meta.npz + images.xz.N")
    packing.add_argument("clean", type=Path)
    packing.add_argument("out", type=Path)
    packing.add_argument("--parts", type=int, default=2)
    unpacking = commands.add_parser("unpack", help="clean-meta.npz + images.xz.N -> clean.npz")
    unpacking.add_argument("meta", type=Path)
    unpacking.add_argument("out", type=Path)
    unpacking.add_argument("parts", type=Path, nargs="+")
    running = commands.add_parser("stages", help="run dvc.yaml stage commands without DVC")
    running.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.clean, args.out, args.parts)
    elif args.command == "unpack":
        unpack(args.meta, args.out, args.parts)
    else:
        stages(args.names)


if __name__ == "__main__":
    main()

"""Run the train/evaluate/cv stages on a machine without DVC or TensorFlow (the lent GPU machine), exactly.

The GPU machine has JAX but no TensorFlow, DVC or package registry, and takes at most 64 MiB per call. The
pipeline's upstream stages (download, subsample, validate) run here; their output travels, and the stages that
need the GPU run there from the same commit:

    # here: the validated data in two halves that fit beside the wheels (README, "The gpu recipe on a GPU")
    python benchmarks/gpu_device.py pack data/processed/clean.npz .gpu
    # there (KERAS_BACKEND=jax, PYTHONPATH=<wheels>:<repo>/src), in a clone of the same commit:
    python3 benchmarks/gpu_device.py unpack .gpu/clean-meta.npz data/processed/clean.npz .gpu/images.xz.*
    python3 benchmarks/gpu_device.py stages augment train evaluate cv
    # or: several variants of a recipe trained side by side on the one GPU, then their ensemble and register
    python3 benchmarks/gpu_device.py sweep benchmarks/gpu_variants.yaml data/processed/clean.npz /tmp/sweep \
        --out "$OUT" --deadline $(( $(date +%s) + 540 ))

``pack`` stores each face as the residual of a gradient predictor (left + up - upper-left) compressed with xz:
lossless, and 21 % smaller than xz on the raw pixels (FER-2013's JPEG noise makes generic compressors weak).
``unpack`` checks the SHA-256 of the rebuilt faces against the one ``pack`` printed and stored. ``stages``
runs the commands ``dvc.yaml`` declares for the named stages, in order, with ``python -m ferflow`` for
``ferflow``, so the outputs and MLflow runs are the ones ``dvc repro`` would make. Only numpy and PyYAML are
needed, so the script runs on the bare machine before anything is installed.

``sweep`` makes the most of a short lease: one pipeline folder per variant (the recipe's values, the file's
common values, then the variant's), the ``augment`` stage once, then every variant's ``train`` and ``evaluate``
at the same time on the one GPU, all logging to one MLflow store (``MLFLOW_TRACKING_URI``). Each training gets
``train.time_budget_minutes`` from what is left before ``--deadline`` (less ``--reserve`` seconds for what
follows), so the cosine is planned over the epochs that fit. Then the variants' ensemble (their TTA
probabilities averaged, every variant that finished: no choice is made on test), and ``cv`` and ``register``
in the first variant's folder: register ranks the variants on val and registers the best. A log per variant,
``summary.json`` and a tarball of the store and the reports land in ``--out``; the models stay on the machine.
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
    np.savez_compressed(out / "clean-meta.npz", **meta, images_sha256=np.array(digest))
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


def _variant_params(spec: dict, name: str, budget_minutes: float) -> dict:
    """params.yaml with the recipe, the sweep's common values, the variant's values and the time budget."""
    import yaml

    from ferflow.recipes import get_recipe, with_values

    values = {**get_recipe(spec["recipe"]).values, **spec.get("common", {}), **spec["variants"][name],
              "train.time_budget_minutes": round(budget_minutes, 2)}  # fmt: skip
    return with_values(yaml.safe_load(Path("params.yaml").read_text()), values)


def _folder(work: Path, name: str, params: dict) -> Path:
    import shutil

    import yaml

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2("dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def _stages_in(folder: Path, names: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as stream:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "stages", *names], cwd=folder,
                                stdout=stream, stderr=subprocess.STDOUT)  # fmt: skip


def _ensemble(folders: dict[str, Path], clean_path: Path) -> dict:
    """Every evaluated variant's probabilities, with the TTA its evaluate stage used (the one val kept), averaged
    on val and test."""
    import json

    import yaml

    from ferflow.io import CLEAN_KEYS, read_npz
    from ferflow.models.evaluation import classification_metrics, predict_with_tta
    from ferflow.models.layers import load_keras_model

    clean = read_npz(clean_path, CLEAN_KEYS)
    names = [str(name) for name in clean["class_names"]]
    sums: dict[str, np.ndarray] = {}
    members = []
    for name, folder in folders.items():
        metrics = folder / "reports/evaluate/metrics.json"
        if not metrics.is_file():
            continue
        tta = yaml.safe_load((folder / "params.yaml").read_text())["evaluate"]["tta"]
        views = (tta["flip"], tta["crops"], tta["crop_fraction"], tta["crop_mode"])
        if not json.loads(metrics.read_text())["tta"]["used"]:
            views = (False, 0, 0.9, "shift")
        model = load_keras_model(folder / "models/model.keras")
        for split in ("val", "test"):
            proba = predict_with_tta(model, clean["images"][clean["splits"] == split], *views)
            sums[split] = sums.get(split, 0) + proba
        members.append(name)
    result: dict = {"members": members}
    for split, total in sums.items():
        scores = classification_metrics(clean["labels"][clean["splits"] == split], total / len(members), names)
        result[split] = {key: scores[key] for key in ("accuracy", "f1_macro", "loss")}
    return result


def sweep(variants_file: Path, clean: Path, work: Path, out: Path, deadline: float, reserve: float) -> None:
    import json
    import os
    import shutil
    import tarfile

    import yaml

    spec = yaml.safe_load(variants_file.read_text())
    names = list(spec["variants"])
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    # Each process takes a share of the GPU's memory instead of JAX's default 75 %, so that all of them fit.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / len(names):.2f}")
    first = _folder(work, names[0], _variant_params(spec, names[0], 0))  # augment reads no train budget
    processed = first / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    shutil.copy2(clean, processed / "clean.npz")
    if _stages_in(first, ["augment"], work / "augment.log").wait():
        raise SystemExit(f"augment failed:\n{(work / 'augment.log').read_text()[-3000:]}")
    budget = (deadline - time.time() - reserve) / 60
    print(f"sweep: {len(names)} variants, {budget:.1f} minutes of training each", flush=True)
    folders, running = {}, {}
    for name in names:
        folder = _folder(work, name, _variant_params(spec, name, budget))
        if folder != first:
            (folder / "data" / "processed").mkdir(parents=True, exist_ok=True)
            for file in ("clean.npz", "train.npz"):
                target = folder / "data" / "processed" / file
                if not target.exists():
                    target.symlink_to(processed / file)
        folders[name] = folder
        running[name] = _stages_in(folder, ["train", "evaluate"], out / f"{name}.log")
    codes = {name: process.wait() for name, process in running.items()}
    summary: dict = {"budget_minutes": round(budget, 2), "exit_codes": codes, "variants": {}}

    def save() -> None:  # after each step: a call cut short at its limit still brings back what finished
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, folder in folders.items():
        facts = {}
        for key, path in (("history", "reports/train/history.json"), ("evaluate", "reports/evaluate/metrics.json")):
            if (folder / path).is_file():
                facts[key] = json.loads((folder / path).read_text())
        summary["variants"][name] = facts
    save()
    if spec.get("ensemble", True) and sum(code == 0 for code in codes.values()) > 1:
        summary["ensemble"] = _ensemble(folders, processed / "clean.npz")
        print(f"sweep: ensemble {json.dumps(summary['ensemble'])}", flush=True)
        save()
    summary["register_exit"] = _stages_in(first, ["cv", "register"], work / "register.log").wait()
    print((work / "register.log").read_text()[-2000:], flush=True)
    save()
    kept = [(work / "mlflow.db", "mlflow.db")]  # the store and the reports; the models stay on the machine
    kept += [(folder / part, f"{name}/{part}") for name, folder in folders.items()
             for part in ("reports", "params.yaml")]  # fmt: skip
    with tarfile.open(out / "results.tar.gz", "w:gz") as archive:
        for path, name in kept:
            if path.exists():
                archive.add(path, arcname=name)
    print(f"sweep: done; exit codes {codes}, register {summary['register_exit']}", flush=True)


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
    sweeping = commands.add_parser("sweep", help="variants of a recipe side by side, their ensemble, register")
    sweeping.add_argument("variants", type=Path, help="YAML: recipe, common values, variants (name: values)")
    sweeping.add_argument("clean", type=Path, help="the validated clean.npz")
    sweeping.add_argument("work", type=Path, help="a folder for the variants' pipelines and the MLflow store")
    sweeping.add_argument("--out", type=Path, required=True, help="logs, summary.json and results.tar.gz")
    sweeping.add_argument("--deadline", type=float, required=True, help="epoch seconds by which all is done")
    sweeping.add_argument("--reserve", type=float, default=120, help="seconds kept for evaluate and after")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.clean, args.out, args.parts)
    elif args.command == "unpack":
        unpack(args.meta, args.out, args.parts)
    elif args.command == "sweep":
        sweep(args.variants, args.clean, args.work, args.out, args.deadline, args.reserve)
    else:
        stages(args.names)


if __name__ == "__main__":
    main()

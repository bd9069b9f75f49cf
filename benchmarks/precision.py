"""Training and inference speed in float32 against mixed bfloat16, measured in the same run, as ratios.

``train.precision: auto`` picks mixed bfloat16 on a GPU, and on a CPU that multiplies bfloat16 matrices in
hardware (Intel AMX) under TensorFlow; this measures whether that pays on the machine at hand. Each policy
trains the architecture (from the params file, with any ``--set``) for ``--steps`` batches of random faces,
after a warm-up, then predicts ``--faces`` faces; the order of the policies alternates over ``--repeats``
rounds so that a noisy neighbour slows both alike. Prints images/s per policy and the bf16/fp32 ratios.

    .venv/bin/python benchmarks/precision.py --set model.architecture=vgg --set model.width=32
    .venv/bin/python benchmarks/precision.py --recipe cpu-full
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

POLICIES = ("float32", "mixed_bfloat16")

_CHILD = r"""
import json, sys, time
import numpy as np
settings = json.loads(sys.argv[1])
from ferflow.models.training import compiled_model, seed_everything
from ferflow.params import parse_params
params = parse_params(settings["raw"])
seed_everything(0)
import keras
model = compiled_model(params, 7)
batch = params.train.batch_size
rng = np.random.default_rng(0)
x = rng.random((batch * settings["steps"], 48, 48, 1), dtype=np.float32)
y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, len(x))]
model.fit(x[: batch * 3], y[: batch * 3], batch_size=batch, epochs=1, verbose=0)  # build and trace
started = time.perf_counter()
model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
train = len(x) / (time.perf_counter() - started)
faces = rng.random((settings["faces"], 48, 48, 1), dtype=np.float32)
model.predict(faces[:512], batch_size=256, verbose=0)
started = time.perf_counter()
model.predict(faces, batch_size=256, verbose=0)
predict = len(faces) / (time.perf_counter() - started)
print(json.dumps({"policy": keras.mixed_precision.dtype_policy().name, "train": train, "predict": predict}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--recipe", help="apply this recipe's values first (ferflow recipe list)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override")
    parser.add_argument("--steps", type=int, default=40, help="timed training batches per policy")
    parser.add_argument("--faces", type=int, default=4096, help="timed faces to predict per policy")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import yaml

    from ferflow.recipes import get_recipe, parse_assignment, with_values

    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    if args.recipe:
        raw = with_values(raw, get_recipe(args.recipe).values)
    raw = with_values(raw, dict(parse_assignment(item) for item in args.set))
    rows: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    for round_ in range(args.repeats):
        for policy in POLICIES if round_ % 2 == 0 else POLICIES[::-1]:
            settings = {"raw": with_values(raw, {"train.precision": policy}), "steps": args.steps,
                        "faces": args.faces}  # fmt: skip
            result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(settings)], capture_output=True,
                                    text=True, check=False)  # fmt: skip
            if result.returncode != 0:
                raise SystemExit(f"{policy}: exited {result.returncode}\n{result.stderr[-3000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows[policy].append(row)
            print(f"round {round_ + 1} {policy:>15}: train {row['train']:7.0f} images/s, "
                  f"predict {row['predict']:7.0f} images/s", file=sys.stderr)  # fmt: skip
    best = {policy: {kind: max(row[kind] for row in rows[policy]) for kind in ("train", "predict")}
            for policy in POLICIES}  # fmt: skip
    model, batch = raw["model"], raw["train"]["batch_size"]
    print(f"\n{model['architecture']} (width {model['width']}), batch {batch}, best of {args.repeats}")
    print("| policy | train images/s | predict images/s |\n|---|---|---|")
    for policy in POLICIES:
        print(f"| {policy} | {best[policy]['train']:.0f} | {best[policy]['predict']:.0f} |")
    print(f"| bf16 / fp32 | {best['mixed_bfloat16']['train'] / best['float32']['train']:.2f}x | "
          f"{best['mixed_bfloat16']['predict'] / best['float32']['predict']:.2f}x |")


if __name__ == "__main__":
    main()

"""Training images/s of a recipe's network under variants, as ratios to the recipe as it is, same run.

Each variant trains in a process of its own (Keras' dtype policy is global) on random faces, batch by batch
as the train stage does (online augmentation, metrics, determinism), and is timed best of three epochs:

    .venv/bin/python benchmarks/train_speed.py cpu-full "model.stage_convs=1" "model.width=40"

A variant is one or more KEY=VALUE over the recipe, separated by spaces. No data is read; no file is written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _pipeline import best_of

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(recipe_name: str, assignments: list[str], images: int, epochs: int) -> float:
    """Images/s of one variant, in this process."""
    import numpy as np
    import yaml

    from ferflow.models.training import compiled_model, one_hot, seed_everything
    from ferflow.native_logs import filter_native_logs
    from ferflow.recipes import get_recipe, resolve

    filter_native_logs()
    _, params = resolve(get_recipe(recipe_name), yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), assignments)
    seed_everything(params.train.seed)
    model = compiled_model(params, 7)
    rng = np.random.default_rng(0)
    x = rng.random((images, 48, 48, 1), dtype=np.float32)
    y = one_hot(rng.integers(0, 7, images), 7)
    batch = params.train.batch_size
    model.fit(x[: batch * 10], y[: batch * 10], batch_size=batch, epochs=1, verbose=0)  # warm-up: graph building
    return images / best_of(epochs, lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("variants", nargs="*", help='"KEY=VALUE [KEY=VALUE ...]" over the recipe')
    parser.add_argument("--images", type=int, default=3072, help="faces an epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs; the best counts")
    parser.add_argument("--one", nargs="*", help=argparse.SUPPRESS)  # a single variant, in a child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps({"images_per_s": measure(args.recipe, args.one, args.images, args.epochs)}))
        return
    baseline = None
    for variant in ["", *args.variants]:
        command = [sys.executable, __file__, args.recipe, "--images", str(args.images), "--epochs",
                   str(args.epochs), "--one", *variant.split()]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"variant {variant or '(the recipe)'} failed:\n{result.stderr[-3000:]}")
        speed = json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]
        baseline = baseline or speed
        print(f"{args.recipe} {variant or '(as it is)':<45} {speed:7.0f} images/s  x{speed / baseline:.2f}", flush=True)


if __name__ == "__main__":
    main()

"""A recipe variant judged on val only: the recipe's own training code on a stratified share of Training,
scored on the whole val split of a validated ``clean.npz`` (the test split is never read).

Recipe choices for a subsampled regime are made here rather than on the DAG's own val split, which the
subsample shrinks to a tenth (358 faces: +-2.6 points). Build the clean file once with the benchmark's
pipeline (``benchmarks/recipes.py --keep DIR``, or ``dvc repro validate`` on the shared full file), then:

    .venv/bin/python benchmarks/recipe_val_probe.py DIR/cpu-full/data/processed/clean.npz cpu-fast \\
        --fraction 0.1 --set model.input_crop=40 --set train.seed=1

It prints one JSON line: val accuracy plain, with mirror TTA and with the recipe's own ``evaluate.tta``, of
the weights the recipe saves (which: ``weights``), the best epoch by val loss, the weight average's val
scores with ``train.ema_epochs``, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clean", type=Path, help="a validated clean.npz (train and val splits)")
    parser.add_argument("recipe")
    parser.add_argument("--fraction", type=float, default=0.1, help="stratified share of Training to train on")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the recipe")
    args = parser.parse_args()

    from sklearn.model_selection import train_test_split

    from ferflow.io import CLEAN_KEYS, read_npz
    from ferflow.models.evaluation import predict_with_tta
    from ferflow.models.training import fit, saved_weights, seed_everything
    from ferflow.native_logs import filter_native_logs
    from ferflow.recipes import get_recipe, resolve

    filter_native_logs()
    recipe = get_recipe(args.recipe)
    _, params = resolve(recipe, yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), args.set)
    clean = read_npz(args.clean, CLEAN_KEYS)
    splits = clean["splits"]
    images, labels = clean["images"][splits == "train"], clean["labels"][splits == "train"]
    if args.fraction < 1:
        images, _, labels, _ = train_test_split(images, labels, train_size=args.fraction, stratify=labels,
                                                random_state=0)  # fmt: skip
    val_images, val_labels = clean["images"][splits == "val"], clean["labels"][splits == "val"]
    seed_everything(params.train.seed)
    started = time.perf_counter()
    result = fit(params, images, labels, val_images, val_labels, len(clean["class_names"]), verbose=0)
    plain = predict_with_tta(result.model, val_images)
    mirror_tta = predict_with_tta(result.model, val_images, flip=True)
    tta = params.evaluate.tta
    recipe_tta = predict_with_tta(result.model, val_images, tta.flip, tta.crops, tta.crop_fraction, tta.crop_mode)
    print(json.dumps({
        "recipe": recipe.name, "set": args.set, "train_rows": len(labels), "val_rows": len(val_labels),
        "val_acc": round(float((plain.argmax(1) == val_labels).mean()), 4),
        "val_acc_mirror_tta": round(float((mirror_tta.argmax(1) == val_labels).mean()), 4),
        # the recipe's own evaluate.tta views (what its evaluate stage would report on val)
        "val_acc_recipe_tta": round(float((recipe_tta.argmax(1) == val_labels).mean()), 4),
        "epochs": len(result.history),
        "best_epoch": int(np.argmin([row["val_loss"] for row in result.history])),
        "weights": saved_weights(params.train, result.averaged),
        # with train.ema_epochs: the weight average's val scores, whether or not it was kept
        "averaged": result.averaged and {key: round(value, 4) for key, value in result.averaged.items()},
        "seconds": round(time.perf_counter() - started),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

"""Accuracy and training speed of each architecture on the pipeline's own arrays, against baselines
measured in the same run: logistic regression on raw pixels (accuracy) and ``simple_cnn`` (speed).

Runs on whatever ``dvc repro augment`` last produced (``data/processed/{train,clean}.npz``), so the same
script measures the synthetic default or real data (``dvc repro augment -S data.source=...`` first). Each
model trains with the ``train`` recipe from ``params.yaml`` (epochs, optimiser, schedule); checkpoints are
chosen on the val split and the test split is scored once.

    .venv/bin/python benchmarks/architectures.py --architectures simple_cnn vgg mini_xception
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=["simple_cnn", "vgg", "mini_xception"])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from ferflow.io import read_npz
    from ferflow.models.evaluation import classification_metrics
    from ferflow.models.training import fit, predict_proba, seed_everything
    from ferflow.params import load_params, parse_params

    base = load_params(args.params).model_dump(by_alias=True)
    train, clean = read_npz(args.data / "train.npz"), read_npz(args.data / "clean.npz")
    names = [str(n) for n in clean["class_names"]]
    split = {name: clean["splits"] == name for name in ("train", "val", "test")}
    x_test, y_test = clean["images"][split["test"]], clean["labels"][split["test"]]

    started = time.perf_counter()
    flat = clean["images"].reshape(len(clean["images"]), -1) / 255.0
    linear = LogisticRegression(C=0.01, max_iter=300).fit(flat[split["train"]], clean["labels"][split["train"]])
    baseline = classification_metrics(y_test, linear.predict_proba(flat[split["test"]]), names)
    seconds = time.perf_counter() - started
    print(f"logistic regression: test accuracy {baseline['accuracy']:.3f}, macro-F1 {baseline['f1_macro']:.3f} "
          f"({seconds:.0f} s); {len(train['labels'])} training images, {len(y_test)} test")  # fmt: skip

    speeds: dict[str, float] = {}
    for architecture in args.architectures:
        raw = {**base, "model": {**base["model"], "architecture": architecture}}
        if args.epochs:
            raw["train"] = {**raw["train"], "epochs": args.epochs}
        params = parse_params(raw)
        seed_everything(params.train.seed)
        result = fit(params, train["images"], train["labels"], clean["images"][split["val"]],
                     clean["labels"][split["val"]], len(names), verbose=0)  # fmt: skip
        scores = classification_metrics(y_test, predict_proba(result.model, x_test), names)
        speeds[architecture] = len(train["labels"]) * len(result.history) / result.seconds
        reference = speeds.get("simple_cnn")
        speed_text = f", x{speeds[architecture] / reference:.2f} simple_cnn's speed" if reference else ""
        ratio = scores["accuracy"] / baseline["accuracy"]
        print(f"{architecture}: test accuracy {scores['accuracy']:.3f} (x{ratio:.2f} logistic regression), "
              f"macro-F1 {scores['f1_macro']:.3f}, {len(result.history)} epochs in "
              f"{result.seconds:.0f} s ({speeds[architecture]:.0f} images/s{speed_text}), "
              f"{result.model.count_params():,} parameters")  # fmt: skip


if __name__ == "__main__":
    main()

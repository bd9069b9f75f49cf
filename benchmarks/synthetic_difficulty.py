"""How hard is the synthetic default? The default CNN against logistic regression on raw pixels and the
majority class, on the same faces.

The default pipeline trains on the Training rows of 10 % of 15,000 faces; this draws about that many
(``--faces``, 80 % Training, 10 % PublicTest for choosing), trains the default recipe (``params.yaml``'s
defaults: simple_cnn, 20 epochs) and logistic regression (regularisation chosen on PublicTest), and scores
both on ``--test-faces`` fresh faces drawn with another seed. Issue 9 asks for the CNN between 70 and 85 %
and logistic regression at least 25 points below; ``tests/model/test_behaviour.py`` pins both.

    .venv/bin/python benchmarks/synthetic_difficulty.py --seeds 11 21 31
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=1600)
    parser.add_argument("--test-faces", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    args = parser.parse_args()

    import numpy as np

    from ferflow.data.synthetic import generate, linear_baseline_accuracy
    from ferflow.models.training import fit, predict_proba, seed_everything
    from ferflow.params import Params

    print("| seed | default CNN | logistic regression | majority class | CNN - logistic | train s |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        images, labels, usages = generate(args.faces, seed, progress=False)
        test_images, test_labels, _ = generate(args.test_faces, seed + 1, progress=False)
        train, val = usages == "Training", usages == "PublicTest"
        seed_everything(0)
        started = time.perf_counter()
        model = fit(Params(), images[train], labels[train], images[val], labels[val], 7, verbose=0).model
        seconds = time.perf_counter() - started
        cnn = float((predict_proba(model, test_images).argmax(1) == test_labels).mean())
        linear = linear_baseline_accuracy((images[train], labels[train]), (images[val], labels[val]),
                                          (test_images, test_labels))  # fmt: skip
        majority = float(np.bincount(test_labels).max() / len(test_labels))
        row = [f"{cnn:.3f}", f"{linear:.3f}", f"{majority:.3f}", f"{cnn - linear:+.3f}", f"{seconds:.0f}"]
        print(f"| {seed} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

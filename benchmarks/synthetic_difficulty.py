"""How hard is the synthetic default for a linear model? Logistic regression on raw pixels vs majority class.

Training sizes follow the pipeline: the default subsample trains on 10 % of 15,000 faces' Training rows.
Regularisation is chosen on PublicTest rows; accuracy is measured on fresh faces (another seed).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ferflow.data.synthetic import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-faces", type=int, nargs="+", default=[1500, 15000])
    parser.add_argument("--test-faces", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    test_images, test_labels, _ = generate(args.test_faces, seed=202, progress=False)
    majority = np.bincount(test_labels).max() / len(test_labels)
    for n in args.train_faces:
        images, labels, usages = generate(n, seed=101, progress=False)
        flat = images.reshape(len(images), -1)
        train, val = usages == "Training", usages == "PublicTest"
        scaler = StandardScaler().fit(flat[train])
        models = [
            LogisticRegression(C=c, max_iter=300).fit(scaler.transform(flat[train]), labels[train])
            for c in (0.003, 0.03, 0.3)
        ]
        best = max(models, key=lambda m: m.score(scaler.transform(flat[val]), labels[val]))
        accuracy = best.score(scaler.transform(test_images.reshape(len(test_images), -1)), test_labels)
        print(f"{train.sum():>6} training faces: logistic regression {accuracy:.3f}, majority class {majority:.3f}, "
              f"ratio x{accuracy / majority:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

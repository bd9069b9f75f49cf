"""How hard is the synthetic default for a linear model? Logistic regression on raw pixels vs majority class.

The default pipeline trains on the Training rows of 10 % of 15,000 faces (1,500 faces); the larger size
shows how far more data takes a linear model. Regularisation is chosen on PublicTest rows; accuracy is
measured on fresh faces drawn with another seed.
"""

from __future__ import annotations

import argparse

from ferflow.data.synthetic import logistic_regression_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, nargs="+", default=[1500, 15000])
    parser.add_argument("--test-faces", type=int, default=2000)
    args = parser.parse_args()
    for n in args.faces:
        accuracy, majority = logistic_regression_accuracy(n, args.test_faces)
        print(f"{n:>6} faces (80 % Training): logistic regression {accuracy:.3f}, majority class {majority:.3f}, "
              f"ratio x{accuracy / majority:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

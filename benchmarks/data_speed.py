"""Speed of the data path: pixel decoding and synthetic face generation, as ratios to same-run baselines."""

from __future__ import annotations

import argparse

import numpy as np
from _pipeline import best_of

from ferflow.data.synthetic import generate
from ferflow.data.table import decode_pixels, encode_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 48, 48), dtype=np.uint8)
    pixels = encode_pixels(images)

    def naive() -> np.ndarray:
        return np.stack([np.array(row.split(), dtype=np.uint8).reshape(48, 48) for row in pixels])

    assert np.array_equal(decode_pixels(pixels), naive())
    fast, slow = best_of(args.repeats, lambda: decode_pixels(pixels)), best_of(args.repeats, naive)
    print(f"decode {args.images} rows: {args.images / fast:,.0f} rows/s; per-row baseline {args.images / slow:,.0f} "
          f"rows/s; speed-up x{slow / fast:.2f}")  # fmt: skip

    n_faces = max(args.images // 5, 100)
    draw = best_of(1, lambda: generate(n_faces, seed=1, progress=False))
    encode = best_of(args.repeats, lambda: encode_pixels(images[:n_faces]))
    print(f"synthetic faces: {n_faces / draw:,.0f} faces/s; drawing costs x{draw / encode:.1f} the time of "
          f"encoding the same number of images as CSV text")  # fmt: skip


if __name__ == "__main__":
    main()

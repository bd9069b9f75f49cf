"""Reading and writing the canonical FER table (``emotion,pixels,Usage``)."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ferflow.errors import DataError
from ferflow.io import atomic_path
from ferflow.schema import COLUMNS, IMAGE_SIZE, N_PIXELS

_PIXEL_STRINGS = np.array([str(value) for value in range(256)], dtype=object)


def encode_pixels(images: np.ndarray) -> list[str]:
    """(N, 48, 48) uint8 images -> the space-separated ``pixels`` strings of the Kaggle layout."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, 48, 48), got {images.dtype} {images.shape}")
    flat = images.reshape(len(images), N_PIXELS)
    return [" ".join(_PIXEL_STRINGS[row]) for row in flat]


def decode_pixels(pixels: pd.Series | list[str]) -> np.ndarray:
    """Well-formed ``pixels`` strings -> (N, 48, 48) uint8. Rows must already be validated."""
    pixels = list(pixels)
    if not pixels:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    values = np.fromstring(" ".join(pixels), dtype=np.int64, sep=" ")
    if values.size != len(pixels) * N_PIXELS or values.min() < 0 or values.max() > 255:
        raise DataError("pixels are not all 2,304 integers in 0..255 (run the validate stage first)")
    return values.astype(np.uint8).reshape(len(pixels), IMAGE_SIZE, IMAGE_SIZE)


def make_table(images: np.ndarray, labels: np.ndarray | list[int], usages: np.ndarray | list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "emotion": np.asarray(labels, dtype=np.int64),
            "pixels": encode_pixels(images),
            "Usage": list(usages),
        }
    )


def read_table(source: str | Path | IO[bytes], name: str | None = None) -> pd.DataFrame:
    """Read a FER table from a ``.csv``/``.csv.gz`` path or a binary stream.

    Every column is read as text so that malformed values reach the validate stage intact (where they
    are quarantined with a reason) instead of being coerced here. Structural problems (empty file, missing
    columns, truncated archive, unparseable CSV) raise :class:`DataError` naming the file.
    """
    name = name or str(source)
    try:
        frame = pd.read_csv(
            source,
            dtype=str,
            compression="infer" if isinstance(source, str | Path) else None,
            keep_default_na=False,
            na_values=[""],
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty; expected a CSV with header {','.join(COLUMNS)}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{name}: the compressed file is truncated or corrupt ({exc})") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{name}: not a readable CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1].hex()
        raise DataError(f"{name}: not UTF-8 text (byte 0x{byte} cannot be decoded): is it the right file? A "
                        "table saved by a spreadsheet as UTF-16 or Latin-1 must be saved again as UTF-8") from None
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        found = ",".join(map(str, frame.columns[:5]))
        raise DataError(
            f"{name}: missing column(s) {missing}; expected the Kaggle header {','.join(COLUMNS)}, found {found}"
        )
    if frame.empty:
        raise DataError(f"{name}: has a header but no rows")
    return frame.loc[:, list(COLUMNS)].reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the canonical CSV atomically (never a half-written file at ``path``)."""
    with atomic_path(path) as tmp:
        frame.loc[:, list(COLUMNS)].to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")


def read_table_bytes(data: bytes, name: str) -> pd.DataFrame:
    """Read a FER table held in memory (e.g. a member of an archive), gzip or plain."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{name}: the compressed file is truncated or corrupt ({exc})") from None
    return read_table(io.BytesIO(data), name=name)

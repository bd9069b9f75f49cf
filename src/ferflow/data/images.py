"""Image-folder datasets (``train/<emotion>/*.jpg``, ``test/<emotion>/*.jpg``) as a folder or a ``.zip``.

Folder names map to labels and Usages through :data:`ferflow.schema.EMOTION_ALIASES` and
:data:`ferflow.schema.USAGE_ALIASES`; images of any size or colour mode become 48x48 grey.
Zip members are read in memory, never extracted, and an unsafe member name (``../``, absolute path) is
refused outright because it marks an archive that was built to escape its folder.
"""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ferflow.data.table import make_table
from ferflow.errors import DataError
from ferflow.schema import EMOTION_ALIASES, EMOTIONS, IMAGE_SIZE, USAGE_ALIASES

# Files that operating systems and tools leave in folders; they are not images and not data.
_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}

# Limits against decompression bombs. A face photo is a few megapixels and megabytes; an image that declares
# more pixels is refused from its header, before it is decoded, and an archive member or archive that would
# unpack to more bytes is refused from the archive's directory, before anything is read.
MAX_IMAGE_PIXELS = 50_000_000
MAX_MEMBER_BYTES = 64 << 20
MAX_ARCHIVE_BYTES = 8 << 30


@dataclass
class ImageFolderReport:
    """What an image-folder read skipped, and why (recorded in the download manifest)."""

    skipped: list[dict[str, str]] = field(default_factory=list)


def decode_grey(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes of any format, size or mode (colour, CMYK, alpha, 16-bit) into a uint8 grey image
    of the same size. An image that declares more than :data:`MAX_IMAGE_PIXELS` is refused undecoded."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP; the stricter limit below refuses instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{name}: not a readable image (it declares {width}x{height} pixels, over the "
                                f"{MAX_IMAGE_PIXELS:,}-pixel limit; not decoded)")  # fmt: skip
            image.load()
            if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
                # 16-bit grey: PIL's convert("L") clips at 255, which turns a 16-bit face white; scale instead.
                wide = np.asarray(image, dtype=np.int64)
                return np.clip(wide >> 8 if wide.max() > 255 else wide, 0, 255).astype(np.uint8)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def fer_resize(grey: np.ndarray) -> np.ndarray:
    """A grey image (or face crop) of any size as the 48x48 input, resized as at ingestion (Lanczos)."""
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return grey
    resized = Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def to_fer_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes of any format, size or mode into a 48x48 uint8 grey image."""
    return fer_resize(decode_grey(data, name))


def _label_and_usage(relative: PurePosixPath) -> tuple[int, str] | None:
    """Map ``<split>/<emotion>/<file>`` (possibly under a top folder) to (label, Usage), or None. A known split
    folder holding an unknown emotion folder is an error: its faces would silently be lost."""
    parts = [part.lower() for part in relative.parts[:-1]]
    if len(parts) < 2:
        return None
    usage = USAGE_ALIASES.get(parts[-2])
    emotion = EMOTION_ALIASES.get(parts[-1])
    if usage is not None and emotion is None:
        raise DataError(f"{relative}: unknown emotion folder {relative.parts[-2]!r} under split "
                        f"{relative.parts[-3]!r}; known names: {sorted(EMOTION_ALIASES)}")  # fmt: skip
    if usage is None or emotion is None:
        return None
    return EMOTIONS.index(emotion), usage


def _safe_member_name(name: str, archive: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: unsafe entry name {name!r} (absolute or containing '..'); refusing the archive")
    return path


def _zip_entries(path: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        names = [_safe_member_name(info.filename, str(path)) for info in infos]  # check all before reading
        for info in infos:
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"{path}: entry {info.filename!r} is a symbolic link; refusing the archive")
            if info.file_size > MAX_MEMBER_BYTES:
                raise DataError(f"{path}: entry {info.filename!r} unpacks to {info.file_size} bytes, over the "
                                f"{MAX_MEMBER_BYTES}-byte limit for one image; refusing the archive")  # fmt: skip
        total = sum(info.file_size for info in infos)
        if total > MAX_ARCHIVE_BYTES:
            raise DataError(f"{path}: unpacks to {total} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit; refusing "
                            "the archive")  # fmt: skip
        for info, name in zip(infos, names, strict=True):
            try:
                yield name, archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataError(f"{path}: entry {info.filename!r} is corrupt ({exc})") from None


def _folder_entries(root: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    inside = root.resolve()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.is_symlink() and not file.resolve().is_relative_to(inside):
            raise DataError(f"{file}: a link to {file.resolve()}, outside {root}; copy the file in instead")
        yield PurePosixPath(file.relative_to(root).as_posix()), file.read_bytes()


def read_image_folders(path: Path, on_bad_image: str = "error") -> tuple[pd.DataFrame, ImageFolderReport]:
    """Read a folder or zip of ``<split>/<emotion>/<image>`` files into the canonical table.

    ``on_bad_image='error'`` stops at the end with a message listing every unreadable file;
    ``'skip'`` leaves them out and lists them in the report (and so in the manifest).
    """
    entries = _zip_entries(path) if path.is_file() else _folder_entries(path)
    images, labels, usages = [], [], []
    report = ImageFolderReport()
    for relative, data in tqdm(entries, desc=f"reading images from {path.name}", unit="file"):
        if relative.name.lower() in _IGNORED_NAMES or relative.name.startswith("._"):
            continue
        target = _label_and_usage(relative)
        if target is None:
            report.skipped.append({"file": str(relative), "reason": "not under <split>/<emotion>/ folders"})
            continue
        try:
            images.append(to_fer_image(data, str(relative)))
        except DataError as exc:
            report.skipped.append({"file": str(relative), "reason": str(exc).split(": ", 1)[1]})
            continue
        labels.append(target[0])
        usages.append(target[1])
    unreadable = [item for item in report.skipped if item["reason"].startswith("not a readable image")]
    if unreadable and on_bad_image == "error":
        listing = "\n  ".join(f"{item['file']}: {item['reason']}" for item in unreadable[:20])
        more = f"\n  ... and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        raise DataError(
            f"{path}: {len(unreadable)} file(s) are not readable images:\n  {listing}{more}\n"
            "Remove them, or set data.on_bad_image: skip to leave them out (they are listed in the manifest)."
        )
    if not images:
        raise DataError(
            f"{path}: no images found in the <split>/<emotion>/<image> layout "
            f"(splits: {sorted(set(USAGE_ALIASES))}; emotions: {sorted(set(EMOTION_ALIASES))})"
        )
    table = make_table(np.stack(images), labels, usages)
    return table, report

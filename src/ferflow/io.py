"""File helpers that never leave half-written output behind."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ferflow.errors import DataError, StorageError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file lives in the same directory so that the final ``os.replace`` is atomic. Its name holds
    the writer's process id, so that the temporary file of a writer that was killed (SIGKILL leaves no chance
    to clean up) is removed by the next writer of ``path``. A folder that cannot be written (read-only, full
    disk) raises :class:`StorageError` naming ``path``; whatever was at ``path`` before is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _storage_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        # Only a failure to write this output is a storage error; one reading an input passes through as is.
        if exc.filename not in (None, str(tmp), str(path)):
            raise
        raise _storage_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _storage_error(path: Path, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return StorageError(f"cannot write {path}: {reason} (errno {exc.errno}); {kept}")


def _remove_orphans(path: Path) -> None:
    """Remove temporary files beside ``path`` left by writers that no longer run (killed mid-write)."""
    prefix = f".{path.name}."
    for orphan in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = orphan.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing whose result appears at ``path`` only once complete."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> Any:
    """A JSON file another stage wrote; a missing, unreadable or incomplete one is a :class:`DataError`
    naming it (``required``: keys the top-level object must have)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc}); rerun the stage that writes it") from None
    missing = [key for key in required if not isinstance(value, dict) or key not in value]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}; rerun the stage that writes it")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` written atomically; strings are stored as fixed-width unicode, never pickled."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


CLEAN_KEYS = ("images", "labels", "splits", "class_names")  # validate's clean.npz
TRAIN_KEYS = ("images", "labels", "class_names")  # augment's train.npz


def read_npz(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` another stage wrote (never unpickling anything); a missing, unreadable or
    incomplete archive is a :class:`DataError` naming it (``required``: arrays it must hold)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot be read as a .npz of arrays ({exc}); rerun the stage that writes it") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DataError(f"{path}: lacks the arrays {', '.join(missing)} (it holds {', '.join(arrays) or 'none'}); "
                        "rerun the stage that writes it")  # fmt: skip
    return arrays


def read_training_arrays(train_arrays: Path, clean_arrays: Path) -> tuple[dict, dict, list[str]]:
    """(train, clean, class names): augment's training arrays and validate's clean arrays, as the train and cv
    stages read them, checked to be of one run: the same class names, and labels within them."""
    train, clean = read_npz(train_arrays, TRAIN_KEYS), read_npz(clean_arrays, CLEAN_KEYS)
    class_names = [str(name) for name in train["class_names"]]
    clean_names = [str(name) for name in clean["class_names"]]
    if clean_names != class_names:
        raise DataError(f"{train_arrays} holds classes {class_names}, but {clean_arrays} holds {clean_names}: "
                        "they come from different runs; rerun the augment stage")  # fmt: skip
    for path, labels in ((train_arrays, train["labels"]), (clean_arrays, clean["labels"])):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DataError(f"{path}: labels {labels.min()}..{labels.max()} outside the {len(class_names)} classes "
                            f"0..{len(class_names) - 1}; rerun the stage that writes it")  # fmt: skip
    return train, clean, class_names


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' contents (dtype, shape and bytes), stable across files that hold them: ``.npz``
    archives carry timestamps, so equal data can have unequal file hashes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype.kind != "U" else "\x1f".join(array.ravel()).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the block; waits while another process
    holds it. For work on one machine that parallel processes must do one at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


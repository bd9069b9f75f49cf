"""Every form in which users hold FER data, turned into the canonical table.

``data.source`` in params selects one of:

* ``synthetic``: the project's own face generator (the default; no download);
* a local path to ``fer2013.csv``, ``fer2013.csv.gz``, the Kaggle challenge archive (``.tar.gz`` holding
  ``fer2013/fer2013.csv``), or a ``.zip``/folder of ``<split>/<emotion>/<image>`` files;
* an ``http(s)://`` URL to any of those files (downloaded once into ``data/external/``);
* ``kaggle``: the challenge archive through the Kaggle API (``pip install 'ferflow[kaggle]'``).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ferflow.data import http, images, synthetic
from ferflow.data.table import make_table, read_table, read_table_bytes
from ferflow.errors import DataError
from ferflow.io import sha256_file
from ferflow.params import DataParams

KAGGLE_COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"
KAGGLE_FILE = "fer2013.tar.gz"
TAR_MEMBER = "fer2013/fer2013.csv"


@dataclass
class Acquired:
    """The canonical table plus the facts the manifest records about where it came from."""

    table: pd.DataFrame
    source: str
    kind: str
    source_sha256: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _kind_of_path(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "image_folder"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if name.endswith(".zip"):
        return "image_zip"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(
        f"{path}: unrecognised data file; expected fer2013.csv, fer2013.csv.gz, the Kaggle .tar.gz, "
        "a .zip of <split>/<emotion>/ image folders, or such a folder"
    )


def _read_tar(path: Path) -> pd.DataFrame:
    try:
        with tarfile.open(path) as archive:
            members = {member.name.lstrip("./"): member for member in archive.getmembers()}
            for name in members:
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts:
                    raise DataError(f"{path}: unsafe entry name {name!r}; refusing the archive")
            candidates = [TAR_MEMBER] + [n for n in members if n.endswith("fer2013.csv") and n != TAR_MEMBER]
            member = next((members[n] for n in candidates if n in members and members[n].isfile()), None)
            if member is None:
                raise DataError(f"{path}: no {TAR_MEMBER} inside (found: {sorted(members)[:5]})")
            handle = archive.extractfile(member)
            assert handle is not None  # a regular file member always has content
            data = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive, or truncated ({exc})") from None
    return read_table_bytes(data, name=f"{path}:{member.name}")


def read_local(path: Path, on_bad_image: str = "error", expected_sha256: str | None = None) -> Acquired:
    """Read any supported local file or folder into the canonical table, verifying its checksum first."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (data.source in params.yaml)")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    kind = _kind_of_path(path)
    checksum = sha256_file(path) if path.is_file() else None
    if expected_sha256 is not None and checksum != expected_sha256:
        raise DataError(
            f"{path}: checksum mismatch: data.sha256 is {expected_sha256} but the file's sha256 is {checksum}"
        )
    notes: dict[str, Any] = {}
    if kind == "csv":
        table = read_table(path)
    elif kind == "tar":
        table = _read_tar(path)
    else:
        table, report = images.read_image_folders(path, on_bad_image=on_bad_image)
        notes["skipped_files"] = report.skipped
    return Acquired(table=table, source=str(path), kind=kind, source_sha256=checksum, notes=notes)


def _kaggle(cache_dir: Path) -> Path:
    has_env = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if not has_env and not (config_dir / "kaggle.json").is_file():
        raise DataError(
            "data.source is 'kaggle' but no Kaggle credentials were found: set KAGGLE_USERNAME and KAGGLE_KEY, "
            f"or put kaggle.json in {config_dir} (Kaggle > Settings > Create New Token), and accept the "
            "competition rules on its web page first"
        )
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise DataError(
            "data.source is 'kaggle' but the Kaggle client is not installed: pip install 'ferflow[kaggle]'"
        ) from None
    api = KaggleApi()
    api.authenticate()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / KAGGLE_FILE
    if not target.is_file():
        api.competition_download_file(KAGGLE_COMPETITION, KAGGLE_FILE, path=str(cache_dir), quiet=False)
    return target


def acquire(params: DataParams, cache_dir: Path, progress: bool = True) -> Acquired:
    """Produce the canonical table from the source named in ``params``."""
    source = params.source
    if source == "synthetic":
        settings = params.synthetic
        faces, labels, usages = synthetic.generate(settings.n_images, settings.seed, progress=progress)
        notes = {"generator": "ferflow.data.synthetic", "n_images": settings.n_images, "seed": settings.seed}
        return Acquired(table=make_table(faces, labels, usages), source=source, kind="synthetic", notes=notes)
    if source == "kaggle":
        acquired = read_local(_kaggle(cache_dir), params.on_bad_image)
        acquired.source, acquired.kind = f"kaggle:{KAGGLE_COMPETITION}", "kaggle"
        return acquired
    if http.is_url(source):
        path = http.download(source, cache_dir, sha256=params.sha256, progress=progress)
        try:
            acquired = read_local(path, params.on_bad_image)
        except DataError as exc:
            # A cached file that is not FER data would be reused by the next run (same size): it goes.
            path.unlink(missing_ok=True)
            raise DataError(f"{source}: what it serves is not usable FER data, so the download ({path}) was "
                            f"discarded: {exc}") from None  # fmt: skip
        acquired.source = source
        acquired.notes["downloaded_to"] = str(path)
        return acquired
    if "://" in source:
        raise DataError(f"{source}: unsupported URL scheme; use http(s)://, a local path, 'synthetic' or 'kaggle'")
    return read_local(Path(source).expanduser(), params.on_bad_image, expected_sha256=params.sha256)

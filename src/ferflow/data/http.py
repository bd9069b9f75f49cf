"""HTTP(S) download with a progress bar, checksum verification, caching and atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from ferflow.errors import DataError
from ferflow.io import atomic_path, sha256_file

_CHUNK = 1 << 16
TIMEOUT_S = 30.0  # to connect, and between two reads: a stalled server is an error, not a hang
MAX_BYTES = 4 << 30  # FER-2013 is 300 MB; anything past 4 GiB is not a face data set (or a runaway body)


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL; one that starts like a URL but does not parse is a DataError."""
    try:
        return urlparse(source).scheme in ("http", "https")
    except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 address
        raise DataError(f"{source}: not a valid URL ({exc})") from None


def cache_name(url: str) -> str:
    """File name for a URL in the download cache: its last path segment (the suffix tells the format)."""
    name = Path(unquote(urlparse(url).path)).name
    if not name or name in (".", ".."):
        raise DataError(f"{url}: the URL names no file (it should end in e.g. fer2013.csv.gz or images.zip)")
    return name


def _remote_size(url: str) -> int | None:
    try:
        response = requests.head(url, allow_redirects=True, timeout=TIMEOUT_S)
    except requests.RequestException:
        return None
    length = response.headers.get("Content-Length")
    return int(length) if response.ok and length and length.isdigit() else None


def _is_cached(target: Path, url: str, sha256: str | None) -> bool:
    if not target.is_file():
        return False
    if sha256 is not None:
        return sha256_file(target) == sha256
    # Without a checksum the best evidence is the size the server announces.
    size = _remote_size(url)
    return size is not None and size == target.stat().st_size


def download(url: str, cache_dir: Path, sha256: str | None = None, progress: bool = True,
             timeout_s: float = TIMEOUT_S, max_bytes: int = MAX_BYTES) -> Path:  # fmt: skip
    """Fetch ``url`` into ``cache_dir`` unless a matching copy is already there; return its path.

    The file appears under its final name only when complete and, if ``sha256`` is given, verified;
    a failed or interrupted download leaves nothing behind. Refused: an HTML page where data was expected, a
    redirect away from http(s), a server silent for ``timeout_s``, a body over ``max_bytes``.
    """
    target = cache_dir / cache_name(url)
    if _is_cached(target, url, sha256):
        print(f"using cached {target} (already downloaded and matching)")
        return target
    try:
        response = requests.get(url, stream=True, timeout=timeout_s)
    except requests.exceptions.InvalidSchema as exc:
        raise DataError(f"{url}: download failed: redirected away from http(s) ({exc}); refused") from None
    except requests.Timeout:
        raise DataError(f"{url}: download failed: no answer within {timeout_s:g} s") from None
    except requests.RequestException as exc:
        raise DataError(f"{url}: download failed: {exc.__class__.__name__}: {exc}") from None
    with response:
        if not response.ok:
            raise DataError(f"{url}: download failed: HTTP {response.status_code} {response.reason}")
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() in {"text/html", "application/xhtml+xml"}:
            raise DataError(f"{url}: the server sent a web page ({content_type}), not a data file; is the URL a "
                            "download link, or does it need a login?")  # fmt: skip
        total = response.headers.get("Content-Length")
        total_bytes = int(total) if total and total.isdigit() else None
        if total_bytes is not None and total_bytes > max_bytes:
            raise DataError(f"{url}: the server announces {total_bytes} bytes, over the {max_bytes}-byte limit; "
                            "nothing was downloaded")  # fmt: skip
        digest = hashlib.sha256()
        received = 0
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"downloading {target.name}",
                      disable=None if progress else True) as bar:  # fmt: skip
                try:
                    for chunk in response.iter_content(_CHUNK):
                        received += len(chunk)
                        if received > max_bytes:
                            raise DataError(f"{url}: the body grew past the {max_bytes}-byte limit; stopped, "
                                            "nothing was kept")  # fmt: skip
                        handle.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                except requests.exceptions.ConnectionError as exc:
                    if "timed out" in str(exc):
                        raise DataError(f"{url}: download stalled after {received} bytes: nothing for "
                                        f"{timeout_s:g} s; nothing was kept") from None  # fmt: skip
                    raise DataError(f"{url}: download interrupted after {received} bytes: {exc}") from None
                except requests.RequestException as exc:
                    raise DataError(f"{url}: download interrupted after {received} bytes: {exc}") from None
            if total_bytes is not None and received != total_bytes:
                raise DataError(f"{url}: download incomplete: got {received} of {total_bytes} bytes")
            actual = digest.hexdigest()
            if sha256 is not None and actual != sha256:
                raise DataError(
                    f"{url}: checksum mismatch: expected sha256 {sha256}, got {actual} "
                    "(wrong file, or corrupted in transit); nothing was kept"
                )
            handle.flush()
            os.fsync(handle.fileno())
    return target

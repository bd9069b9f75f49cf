"""Every source format of the download stage, and every kind of bad input it must refuse clearly."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ferflow.data.sources import acquire
from ferflow.data.table import decode_pixels, read_table
from ferflow.errors import DataError, StorageError
from ferflow.io import sha256_file
from ferflow.params import parse_params
from ferflow.schema import EMOTIONS
from ferflow.stages import download


def data_params(**values):
    return parse_params({"data": values}).data


def run_download(tmp_path: Path, **values) -> dict:
    return download.run(
        data_params(**values), tmp_path / "raw" / "fer2013.csv", tmp_path / "raw" / "manifest.json",
        tmp_path / "cache", progress=False,
    )  # fmt: skip


def write_csv(table, path: Path) -> Path:
    table.to_csv(path, index=False, compression="infer")
    return path


def make_image_tree(root: Path, images: np.ndarray, labels: np.ndarray, usages: np.ndarray) -> Path:
    folder = {"Training": "train", "PrivateTest": "test", "PublicTest": "val"}
    for i, (image, label, usage) in enumerate(zip(images, labels, usages, strict=True)):
        target = root / folder[usage] / EMOTIONS[label] / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target, quality=95)
    return root


def assert_same_faces(table, images, labels, usages, tolerance=0):
    assert table["emotion"].astype(int).tolist() == labels.tolist()
    assert table["Usage"].tolist() == usages.tolist()
    decoded = decode_pixels(table["pixels"]).astype(int)
    assert np.abs(decoded - images.astype(int)).max() <= tolerance


def test_synthetic_is_the_default_and_is_deterministic(tmp_path):
    facts = run_download(tmp_path, synthetic={"n_images": 150, "seed": 3})
    first = (tmp_path / "raw" / "fer2013.csv").read_bytes()
    assert facts["kind"] == "synthetic" and facts["rows"] == len(read_table(tmp_path / "raw" / "fer2013.csv"))
    assert set(facts["by_usage"]) == {"Training", "PublicTest", "PrivateTest"}
    run_download(tmp_path, synthetic={"n_images": 150, "seed": 3})
    assert (tmp_path / "raw" / "fer2013.csv").read_bytes() == first
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["table_sha256"] == sha256_file(tmp_path / "raw" / "fer2013.csv")


@pytest.mark.parametrize("name", ["fer2013.csv", "fer2013.csv.gz"])
def test_csv_and_gzip(tmp_path, synthetic_table, synthetic_arrays, name):
    source = write_csv(synthetic_table, tmp_path / name)
    facts = run_download(tmp_path, source=str(source))
    assert facts["kind"] == "csv" and facts["rows"] == len(synthetic_table)
    assert facts["source_sha256"] == sha256_file(source)
    assert_same_faces(read_table(tmp_path / "raw" / "fer2013.csv"), *synthetic_arrays)


def test_kaggle_challenge_tarball(tmp_path, synthetic_table, synthetic_arrays):
    csv = write_csv(synthetic_table, tmp_path / "fer2013.csv")
    archive = tmp_path / "fer2013.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(csv, arcname="fer2013/fer2013.csv")
        tar.add(csv, arcname="fer2013/README")
    facts = run_download(tmp_path, source=str(archive))
    assert facts["kind"] == "tar"
    assert_same_faces(read_table(tmp_path / "raw" / "fer2013.csv"), *synthetic_arrays)


def test_image_folders_and_zip(tmp_path, synthetic_arrays):
    images, labels, usages = (a[:60] for a in synthetic_arrays)
    tree = make_image_tree(tmp_path / "faces", images, labels, usages)
    # Another size and colour: converted to 48x48 grey.
    Image.new("RGB", (96, 80), (200, 10, 10)).save(tree / "train" / "happy" / "big_colour.png")
    (tree / "train" / ".DS_Store").write_bytes(b"\0\1")
    facts = run_download(tmp_path, source=str(tree))
    assert facts["kind"] == "image_folder" and facts["rows"] == 61
    table = read_table(tmp_path / "raw" / "fer2013.csv")
    # Rows come in sorted path order; the files are named by their index in the arrays.
    files = sorted(p for p in tree.rglob("*") if p.suffix in {".jpg", ".png"})
    colour = files.index(tree / "train" / "happy" / "big_colour.png")
    faces = [int(file.stem) for file in files if file.suffix == ".jpg"]
    jpeg_rows = table.drop(index=table.index[colour])
    # JPEG is lossy: the same faces, labels and splits up to compression noise.
    assert_same_faces(jpeg_rows, images[faces], labels[faces], usages[faces], tolerance=16)
    assert np.abs(decode_pixels(jpeg_rows["pixels"]).astype(int) - images[faces].astype(int)).mean() < 3
    # The colour image: 48x48 grey of its one colour (ITU-R 601 luma of (200, 10, 10) = 66).
    grey = decode_pixels(table["pixels"].iloc[[colour]])[0]
    assert table["emotion"].iloc[colour] in ("3", 3) and abs(int(grey.mean()) - 66) <= 1 and grey.std() < 1

    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(tree.rglob("*.jpg")):
            zf.write(file, arcname=f"fer_images/{file.relative_to(tree).as_posix()}")
    facts = run_download(tmp_path, source=str(archive))
    assert facts["kind"] == "image_zip" and facts["rows"] == 60
    assert_same_faces(read_table(tmp_path / "raw" / "fer2013.csv"), images[faces], labels[faces], usages[faces],
                      tolerance=16)  # fmt: skip


def test_url_download_is_verified_cached_and_atomic(tmp_path, http_server, synthetic_table):
    source = write_csv(synthetic_table, http_server.root / "fer2013.csv.gz")
    digest = sha256_file(source)
    url = http_server.url("fer2013.csv.gz")
    facts = run_download(tmp_path, source=url, sha256=digest)
    assert facts["source"] == url and facts["rows"] == len(synthetic_table)
    assert http_server.get_count == 1
    run_download(tmp_path, source=url, sha256=digest)
    assert http_server.get_count == 1  # cached copy matched its checksum: no second download
    run_download(tmp_path, source=url)
    assert http_server.get_count == 1  # no checksum: the size the server announces matched


def test_url_errors_leave_nothing_behind(tmp_path, http_server, synthetic_table):
    write_csv(synthetic_table, http_server.root / "fer2013.csv.gz")
    with pytest.raises(DataError, match="checksum mismatch"):
        run_download(tmp_path, source=http_server.url("fer2013.csv.gz"), sha256="0" * 64)
    with pytest.raises(DataError, match="HTTP 404"):
        run_download(tmp_path, source=http_server.url("missing.csv.gz"))
    with pytest.raises(DataError, match="download failed"):
        run_download(tmp_path, source="http://127.0.0.1:9/fer2013.csv")  # nothing listens on port 9
    with pytest.raises(DataError, match=r"download (interrupted after|incomplete: got) \d+"):
        run_download(tmp_path, source=http_server.url("broken/fer2013.csv"))
    # Served whole but not FER data: named by its URL and not kept, so the next run downloads it again.
    (http_server.root / "header-only.csv").write_text("emotion,pixels,Usage\n")
    with pytest.raises(DataError, match=r"/header-only\.csv: what it serves is not usable FER data"):
        run_download(tmp_path, source=http_server.url("header-only.csv"))
    assert not (tmp_path / "raw").exists()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(("path", "message"), [
    ("status/503/fer2013.csv", "download failed: HTTP 503"),
    ("status/500/fer2013.csv", "download failed: HTTP 500"),
    ("html/fer2013.csv", "the server sent a web page (text/html; charset=utf-8), not a data file"),
    ("to-ftp/fer2013.csv", "download failed: redirected away from http(s)"),
])  # fmt: skip
def test_url_answers_that_are_not_the_data_are_refused_and_leave_nothing(tmp_path, http_server, path, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        run_download(tmp_path, source=http_server.url(path))
    assert http_server.url(path) in str(error.value)  # the message names the URL
    assert not (tmp_path / "raw").exists() and not list((tmp_path / "cache").glob("*"))


def test_a_stalled_server_and_an_oversized_body_are_refused_and_leave_nothing(tmp_path, http_server,
                                                                              synthetic_table):  # fmt: skip
    from ferflow.data.http import download as fetch

    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DataError, match=r"download stalled after \d+ bytes: nothing for 0.5 s; nothing was kept"):
        fetch(http_server.url("slow/fer2013.csv"), cache, progress=False, timeout_s=0.5)
    source = write_csv(synthetic_table, http_server.root / "fer2013.csv.gz")
    size = source.stat().st_size
    with pytest.raises(DataError, match=f"announces {size} bytes, over the 1000-byte limit; nothing was downloaded"):
        fetch(http_server.url("fer2013.csv.gz"), cache, progress=False, max_bytes=1000)
    with pytest.raises(DataError, match="the body grew past the 1000-byte limit; stopped, nothing was kept"):
        fetch(http_server.url("unsized/fer2013.csv.gz"), cache, progress=False, max_bytes=1000)
    assert list(cache.iterdir()) == []
    assert fetch(http_server.url("unsized/fer2013.csv.gz"), cache, progress=False).stat().st_size == size


def test_a_download_killed_mid_transfer_leaves_no_partial_file_and_the_rerun_completes(tmp_path, http_server,
                                                                                       synthetic_table):  # fmt: skip
    """SIGKILL to the real `ferflow download` while the body arrives: no file under its final name, no table;
    the rerun downloads it whole, checks its checksum and removes the killed process's temporary file."""
    source = write_csv(synthetic_table, http_server.root / "fer2013.csv.gz")
    digest = sha256_file(source)
    work, cache = tmp_path / "work", tmp_path / "work" / "data" / "external"
    work.mkdir()
    (work / "dvc.yaml").write_text("stages: {}\n")
    (work / "params.yaml").write_text(yaml.safe_dump({"data": {"source": http_server.url("trickle/fer2013.csv.gz"),
                                                               "sha256": digest}}))  # fmt: skip
    command = [sys.executable, "-m", "ferflow", "download", "--out", "data/raw/fer2013.csv", "--manifest",
               "data/raw/manifest.json", "--cache-dir", "data/external"]  # fmt: skip
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and any(p.stat().st_size > 0 for p in cache.glob(".*.tmp"))):
        assert process.poll() is None and time.monotonic() < deadline, "the download never started"
        time.sleep(0.005)
    process.kill()
    process.wait(timeout=30)
    (partial,) = cache.glob(".*.tmp")
    assert 0 < partial.stat().st_size < source.stat().st_size  # killed mid-transfer
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == [] and not (work / "data" / "raw").exists()

    rerun = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (cached,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert sha256_file(cached) == digest and not list(cache.glob(".*.tmp"))
    assert len(read_table(work / "data" / "raw" / "fer2013.csv")) == len(synthetic_table)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("emotion,pixels\n0,1 2 3\n"), "missing column(s) ['Usage']"),
        (lambda p: p.write_text("emotion,pixels,Usage\n"), "has a header but no rows"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"), "not UTF-8 text (byte 0x89"),
        (lambda p: p.write_bytes("emotion,pixels,Usage\n0,1 2,Training\n".encode("utf-16")),
         "not UTF-8 text (byte 0xff"),
        (lambda p: p.write_bytes("emotion,pixels,Usage\n0,1 2,Tr\xe4ining\n".encode("latin-1")),
         "must be saved again as UTF-8"),
        (lambda p: p.write_text("emotion;pixels;Usage\n0;1 2;Training\n"), "found emotion;pixels;Usage"),
        (lambda p: p.write_text("emotion,pixels,Usage\n0,1 2,Training\n1,3 4,Training,PublicTest\n"),
         "not a readable CSV: Error tokenizing data. C error: Expected 3 fields in line 3, saw 4"),
    ],
    ids=["empty", "no Usage column", "header only", "binary", "UTF-16", "Latin-1", "semicolons", "too many fields"],
)
def test_bad_csv_files(tmp_path, make, message):
    source = tmp_path / "fer2013.csv"
    make(source)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_download(tmp_path, source=str(source))
    assert not (tmp_path / "raw" / "fer2013.csv").exists()


def test_extra_columns_are_left_out_and_archives_without_the_data_are_refused(tmp_path, synthetic_table):
    extra = synthetic_table.assign(source="web")  # e.g. a table with a provenance column
    facts = run_download(tmp_path, source=str(write_csv(extra, tmp_path / "extra.csv")))
    assert facts["rows"] == len(extra)
    assert list(read_table(tmp_path / "raw" / "fer2013.csv").columns) == ["emotion", "pixels", "Usage"]

    tarball = tmp_path / "fer2013.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        readme = tarfile.TarInfo("fer2013/README.txt")
        readme.size = 5
        archive.addfile(readme, io.BytesIO(b"hello"))
    with pytest.raises(DataError, match=r"fer2013.tar.gz: no fer2013/fer2013.csv inside \(found: \['fer2013/README"):
        run_download(tmp_path / "t", source=str(tarball))
    empty_zip = tmp_path / "faces.zip"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("README.txt", "hello")
    with pytest.raises(DataError, match=r"faces.zip: no images found in the <split>/<emotion>/<image> layout"):
        run_download(tmp_path / "z", source=str(empty_zip))
    assert not (tmp_path / "t" / "raw").exists() and not (tmp_path / "z" / "raw").exists()


def test_truncated_gzip_and_truncated_csv(tmp_path, synthetic_table):
    data = gzip.compress(synthetic_table.to_csv(index=False).encode())
    truncated = tmp_path / "fer2013.csv.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        run_download(tmp_path, source=str(truncated))
    # A plain CSV cut mid-row reads, and its last row is then quarantined by validate (see test_validate).
    text = synthetic_table.to_csv(index=False)
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: len(text) - 3000])
    facts = run_download(tmp_path, source=str(cut))
    last = read_table(tmp_path / "raw" / "fer2013.csv").iloc[-1]
    assert facts["rows"] == len(synthetic_table) and len(last["pixels"].split()) < 2304


def test_local_checksum_and_missing_paths(tmp_path, synthetic_table):
    source = write_csv(synthetic_table, tmp_path / "fer2013.csv")
    with pytest.raises(DataError, match="checksum mismatch"):
        run_download(tmp_path, source=str(source), sha256="f" * 64)
    with pytest.raises(DataError, match="no such file or folder"):
        run_download(tmp_path, source=str(tmp_path / "nope.csv"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unrecognised data file"):
        run_download(tmp_path, source=str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="unsupported URL scheme"):
        run_download(tmp_path, source="ftp://example.org/fer2013.csv")


def test_unsafe_zip_entry_is_refused(tmp_path, synthetic_arrays):
    archive = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    Image.fromarray(synthetic_arrays[0][0]).save(buffer, format="JPEG")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/happy/ok.jpg", buffer.getvalue())
        zf.writestr("../../etc/evil.jpg", buffer.getvalue())
    with pytest.raises(DataError, match=r"unsafe entry name '\.\./\.\./etc/evil\.jpg'"):
        run_download(tmp_path, source=str(archive))
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path.parent / "etc").exists()


def test_bad_images_error_or_skip(tmp_path, synthetic_arrays):
    images, labels, usages = (a[:20] for a in synthetic_arrays)
    tree = make_image_tree(tmp_path / "faces", images, labels, usages)
    (tree / "train" / "sad" / "notes.jpg").write_text("this is not an image")
    good = next(tree.rglob("*.jpg")).read_bytes()
    (tree / "train" / "fear" / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (tree / "train" / "happy").mkdir(exist_ok=True)
    (tree / "train" / "happy" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as error:
        run_download(tmp_path, source=str(tree))
    message = str(error.value)
    assert "3 file(s) are not readable images" in message
    for name in ("train/sad/notes.jpg", "train/fear/corrupt.jpg", "train/happy/empty.png"):
        assert name in message
    assert "data.on_bad_image: skip" in message
    assert not (tmp_path / "raw").exists()

    facts = run_download(tmp_path, source=str(tree), on_bad_image="skip")
    assert facts["rows"] == 20
    assert sorted(item["file"] for item in facts["skipped_files"]) == [
        "train/fear/corrupt.jpg",
        "train/happy/empty.png",
        "train/sad/notes.jpg",
    ]


def test_kaggle_without_credentials_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    with pytest.raises(DataError, match="no Kaggle credentials were found: set KAGGLE_USERNAME and KAGGLE_KEY"):
        acquire(data_params(source="kaggle"), cache_dir=tmp_path / "cache", progress=False)


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def test_colour_modes_are_read_as_grey_and_a_pixel_bomb_is_refused_undecoded():
    from ferflow.data.images import decode_grey

    face = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (48, 1))
    for mode, image in {
        "CMYK": Image.fromarray(face).convert("CMYK"),
        "RGBA": Image.fromarray(face).convert("RGBA"),
        "LA": Image.fromarray(face).convert("LA"),
        "I;16": Image.fromarray(face.astype(np.uint16) * 257),  # 16-bit: 0..65535
    }.items():
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        grey = decode_grey(buffer.getvalue(), f"face.{mode}")
        assert np.abs(grey.astype(int) - face).max() <= 1, mode
    # 100 megapixels: under the size at which Pillow itself refuses (179 MP), it would only warn and decode.
    with pytest.raises(DataError, match=r"bomb.png: not a readable image \(it declares 10000x10000 pixels, over "
                                        r"the 50,000,000-pixel limit; not decoded\)"):  # fmt: skip
        decode_grey(_png_declaring(10_000, 10_000), "bomb.png")


def test_archive_links_and_bombs_are_refused_before_anything_is_read(tmp_path, synthetic_arrays, monkeypatch):
    import stat

    from ferflow.data import images as image_module

    buffer = io.BytesIO()
    Image.fromarray(synthetic_arrays[0][0]).save(buffer, format="PNG")
    face = buffer.getvalue()

    def archive(name: str, *members: tuple[zipfile.ZipInfo | str, bytes]) -> str:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("train/happy/ok.png", face)
            for info, data in members:
                zf.writestr(info, data)
        return str(path)

    link = zipfile.ZipInfo("train/happy/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(DataError, match="entry 'train/happy/link.png' is a symbolic link; refusing the archive"):
        run_download(tmp_path, source=archive("link.zip", (link, b"/etc/passwd")))
    with pytest.raises(DataError, match="unsafe entry name '/etc/evil.png' \\(absolute"):
        run_download(tmp_path, source=archive("absolute.zip", ("/etc/evil.png", face)))
    # A member that unpacks far past any face image: 2 MB of zeros, about 2 kB packed (limit lowered to 1 MB).
    monkeypatch.setattr(image_module, "MAX_MEMBER_BYTES", 1 << 20)
    with pytest.raises(DataError, match=r"entry 'train/sad/zeros.png' unpacks to 2097152 bytes, over the 1048576"):
        run_download(tmp_path, source=archive("ratio.zip", ("train/sad/zeros.png", bytes(2 << 20))))
    monkeypatch.setattr(image_module, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(DataError, match=r"ratio2.zip: unpacks to \d+ bytes, over the 100-byte limit"):
        run_download(tmp_path, source=archive("ratio2.zip"))
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"train/sad/bomb.png: not a readable image \(it declares 10000x10000"):
        run_download(tmp_path, source=archive("bomb.zip", ("train/sad/bomb.png", _png_declaring(10_000, 10_000))))
    assert not (tmp_path / "raw").exists()


def test_unknown_emotion_folders_links_out_and_empty_folders_are_refused(tmp_path, synthetic_arrays):
    images, labels, usages = (a[:14] for a in synthetic_arrays)
    tree = make_image_tree(tmp_path / "faces", images, labels, usages)
    (tree / "train" / "contempt").mkdir()
    Image.fromarray(images[0]).save(tree / "train" / "contempt" / "x.png")
    with pytest.raises(DataError, match=r"train/contempt/x.png: unknown emotion folder 'contempt' under split "
                                        r"'train'; known names: \['afraid'"):  # fmt: skip
        run_download(tmp_path, source=str(tree))
    (tree / "train" / "contempt" / "x.png").unlink()
    (tree / "train" / "contempt").rmdir()

    outside = tmp_path / "secret.png"
    Image.fromarray(images[0]).save(outside)
    (tree / "train" / "happy" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match=f"link.png: a link to {outside}, outside {tree}; copy the file in"):
        run_download(tmp_path, source=str(tree))
    (tree / "train" / "happy" / "link.png").unlink()
    inside = next((tree / "train").rglob("*.jpg"))
    (tree / "train" / "happy" / "same.jpg").symlink_to(inside)  # a link within the folder is read
    assert run_download(tmp_path, source=str(tree))["rows"] == 15

    empty = tmp_path / "empty" / "train" / "happy"
    empty.mkdir(parents=True)
    with pytest.raises(DataError, match="no images found in the <split>/<emotion>/<image> layout"):
        run_download(tmp_path, source=str(tmp_path / "empty"))


def test_a_manifest_that_cannot_be_written_leaves_the_old_table(tmp_path):
    run_download(tmp_path, synthetic={"n_images": 150, "seed": 3})
    table = tmp_path / "raw" / "fer2013.csv"
    before = table.read_bytes()
    manifest = tmp_path / "raw" / "manifest.json"
    manifest.unlink()
    manifest.mkdir()  # a folder where the manifest goes: its write fails
    with pytest.raises(StorageError, match="manifest.json"):
        run_download(tmp_path, synthetic={"n_images": 120, "seed": 4})
    assert table.read_bytes() == before  # not the new table without its manifest
    assert sorted(p.name for p in table.parent.iterdir()) == ["fer2013.csv", "manifest.json"]  # no staged files


def test_a_url_that_does_not_parse_is_named(tmp_path):
    with pytest.raises(DataError, match=r"http://\[::1: not a valid URL"):
        run_download(tmp_path, source="http://[::1")

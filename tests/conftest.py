"""Shared fixtures: small synthetic tables, the real FER sample (when present) and a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ferflow.data.synthetic import generate
from ferflow.data.table import make_table

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "fer2013-dev.csv.gz"
REAL_FULL = REPO_ROOT.parent / "shared" / "data" / "fer2013-train-publictest.csv.gz"


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test() -> Iterator[None]:
    """A training in-process sets Keras' global dtype policy (train.precision: auto is mixed bfloat16 on an AMX
    CPU), as a stage process should; the next test in the same worker starts from Keras' float32 again."""
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].config.set_dtype_policy("float32")


@functools.cache
def _synthetic(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate(n_images, seed, progress=False)


@pytest.fixture
def synthetic_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About 400 synthetic faces (images, labels, usages), drawn once per test session."""
    images, labels, usages = _synthetic(400, 7)
    return images.copy(), labels.copy(), usages.copy()


# The longest test files, longest first. `make test` runs `pytest -n 2 --dist loadfile`, which hands out whole
# files in collection order: started first, these run beside the many short files instead of after them, so
# neither worker idles at the end (measured: the e2e file alone takes over 6 minutes of the ~10).
LONGEST_FILES = (
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_real_data.py",
    "tests/model/test_train.py",
    "tests/model/test_behaviour.py",
    "tests/code/test_server.py",
    "tests/model/test_recipes.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order within a file is kept


def write_stage_arrays(folder: Path, images: np.ndarray, labels: np.ndarray, usages: np.ndarray) -> None:
    """``clean.npz`` (train/val/test from the usages) and the not oversampled ``train.npz`` in ``folder``, as
    the validate and augment stages write them."""
    from ferflow.io import write_npz
    from ferflow.schema import EMOTIONS

    splits = np.select([usages == "Training", usages == "PublicTest"], ["train", "val"], "test")
    names = np.array(EMOTIONS)
    write_npz(folder / "clean.npz", images=images, labels=labels, splits=splits, class_names=names)
    is_train = splits == "train"
    write_npz(folder / "train.npz", images=images[is_train], labels=labels[is_train],
              source_index=np.arange(is_train.sum()), is_augmented=np.zeros(is_train.sum(), bool),
              class_names=names)  # fmt: skip


@pytest.fixture
def synthetic_table(synthetic_arrays) -> pd.DataFrame:
    """The synthetic faces as a canonical FER table (emotion as text, as read from a CSV)."""
    table = make_table(*synthetic_arrays)
    return table.astype({"emotion": str})


PASTE_AT, PASTE_SIZE = (150, 60), 144  # x, y and side of the face pasted into test photos


def detectable_face() -> np.ndarray:
    """The first synthetic face (fixed seed) that OpenCV's frontal-face cascade finds once pasted in a photo."""
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    for face in generate(30, seed=3, progress=False)[0]:
        if len(cascade.detectMultiScale(photo_with(face), 1.1, 5, minSize=(24, 24))) == 1:
            return face
    raise AssertionError("no synthetic face was detectable")


def photo_with(face: np.ndarray) -> np.ndarray:
    canvas = np.random.default_rng(0).normal(100, 12, size=(300, 420)).clip(0, 255).astype(np.uint8)
    x, y = PASTE_AT
    canvas[y : y + PASTE_SIZE, x : x + PASTE_SIZE] = cv2.resize(face, (PASTE_SIZE, PASTE_SIZE), cv2.INTER_CUBIC)
    return canvas


PIXEL_STEP = 30  # pixel value 30 * k reads as class k to a pixel_reader


def pixel_reader(pixel: int):
    """A Keras model whose answer is the class written in one pixel of the face (value ``30 * k``), whatever
    else the face holds: a model whose predictions a test chooses face by face."""
    import keras

    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")])
    kernel = np.zeros((48 * 48, 7), np.float32)
    classes = np.arange(7, dtype=np.float32)
    # logits_j = 10 * (2 j x - j^2) with x = value / 30: the largest is the class nearest to x.
    kernel[pixel] = 10 * 2 * classes * 255 / PIXEL_STEP
    model.layers[-1].set_weights([kernel, -10 * classes**2])
    return model


@pytest.fixture
def real_sample() -> Path:
    if not REAL_SAMPLE.is_file():
        pytest.skip(f"real FER-2013 sample not present at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture
def real_full() -> Path:
    """All of FER-2013's Training and PublicTest (no PrivateTest), when ``../shared/data`` has it."""
    if not REAL_FULL.is_file():
        pytest.skip(f"real FER-2013 file not present at {REAL_FULL}")
    return REAL_FULL


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # keep test output readable
        pass

    def do_GET(self) -> None:
        self.server.get_count += 1  # type: ignore[attr-defined]
        if self.path.startswith("/broken/"):
            # A connection that dies mid-transfer: promises 100 kB, sends 1 kB, hangs up.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"emotion,pixels,Usage\n" + b"0" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/status/"):  # /status/503/any.csv answers 503
            self.send_error(int(self.path.split("/")[2]))
            return
        if self.path.startswith("/html/"):  # a login or error page where data was expected
            body = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/to-ftp/"):  # a redirect to another scheme
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/fer2013.csv")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):  # headers, a little data, then silence
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"emotion,pixels,Usage\n")
            self.wfile.flush()
            time.sleep(3)
            return
        if self.path.startswith("/trickle/"):  # the whole file, slowly: 16 kB every 20 ms
            data = Path(self.translate_path("/" + self.path.split("/", 2)[2])).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for start in range(0, len(data), 16384):
                self.wfile.write(data[start : start + 16384])
                self.wfile.flush()
                time.sleep(0.02)
            return
        if self.path.startswith("/unsized/"):  # no Content-Length: the size is known only while reading
            path = Path(self.translate_path("/" + self.path.split("/", 2)[2]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(path.read_bytes())
            self.close_connection = True
            return
        super().do_GET()


class LocalServer:
    def __init__(self, root: Path, server: http.server.ThreadingHTTPServer) -> None:
        self.root = root
        self._server = server

    def url(self, name: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{name}"

    @property
    def get_count(self) -> int:
        return self._server.get_count  # type: ignore[attr-defined]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; it counts GET requests.

    Paths under ``/broken/`` answer with a transfer that breaks off part-way; ``/status/<code>/`` with that
    HTTP status; ``/html/`` with an HTML page; ``/to-ftp/`` with a redirect to ftp://; ``/slow/`` stalls after
    the headers; ``/unsized/<name>`` sends the file without a Content-Length; ``/trickle/<name>`` sends it
    slowly (16 kB every 20 ms).
    """
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_CountingHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.get_count = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(root, server)
    finally:
        server.shutdown()
        server.server_close()

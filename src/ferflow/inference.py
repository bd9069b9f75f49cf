"""Reading expressions in real photos: find faces (OpenCV's Haar cascade, shipped in the wheel), crop them to
the model's 48x48 grey input and classify every face of every image in batched model calls.

Use it from Python (``ferflow.predict(["photo.jpg"])``) or as ``ferflow predict``. An input that cannot be
read (missing, not an image, an unreachable URL) gets its own error; the other inputs are still processed.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferflow.data.http import is_url
from ferflow.data.images import decode_grey, fer_resize
from ferflow.errors import DataError, FerflowError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm"}
MAX_PHOTO_BYTES = 64 << 20  # a photo larger than this is a mistake or an attack, not a face
SMALL_SIDE = 64  # images this small are taken to be one cropped face (FER style): detection cannot work on them
BOX_MARGIN = 0.12  # the Haar box is tighter than a FER crop, which shows some hair and chin


class ModelNotFound(FerflowError):
    exit_code = 2


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the source image
    expression: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class ImageResult:
    source: str
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    detected: bool = True  # False when the whole image was taken as the face
    annotated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cascade():
    import cv2

    path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FerflowError(f"OpenCV's face detector {path} could not be loaded (opencv-python-headless < 5 ships it)")
    return cascade


def expand_sources(inputs: Iterable[str | Path]) -> list[str]:
    """Folders become their image files (sorted); files and URLs stay as given."""
    sources: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if not is_url(text) and path.is_dir():
            images = [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:  # an empty answer would read as "no face found", not as "wrong folder"
                raise FerflowError(f"{path}: no image files in this folder (looked for "
                                   f"{', '.join(sorted(IMAGE_SUFFIXES))})")  # fmt: skip
            sources += images
        else:
            sources.append(text)
    return sources


def read_grey(source: str, timeout: float = 30.0) -> np.ndarray:
    """A uint8 grey image from a file or an http(s) URL; FerflowError saying what is wrong otherwise."""
    return _decode(read_source(source, timeout), "L")


def _decode(data: bytes, mode: str) -> np.ndarray:
    try:
        grey = decode_grey(data, "image")
    except FerflowError as exc:
        raise FerflowError(str(exc).removeprefix("image: ")) from None
    if mode == "L":
        return grey
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:  # decodable: decode_grey just read it
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_source(source: str, timeout: float = 30.0, max_bytes: int = MAX_PHOTO_BYTES) -> bytes:
    """The bytes of a file or an http(s) URL; FerflowError saying what is wrong otherwise. A web page where a
    picture was expected, and anything over ``max_bytes``, are refused before they are read."""
    if is_url(source):
        import requests

        try:
            with requests.get(source, timeout=timeout, stream=True) as response:
                response.raise_for_status()
                content_type = response.headers.get("Content-Type", "")
                if content_type.split(";")[0].strip().lower() in {"text/html", "application/xhtml+xml"}:
                    raise FerflowError(f"the server sent a web page ({content_type}), not an image")
                data = bytearray()
                for chunk in response.iter_content(1 << 16):
                    data += chunk
                    if len(data) > max_bytes:
                        raise FerflowError(f"the image is over the {max_bytes >> 20} MiB limit for a photo")
                return bytes(data)
        except requests.RequestException as exc:
            raise FerflowError(f"cannot download: {exc}") from None
    path = Path(source)
    if not path.is_file():
        raise FerflowError("no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise FerflowError(f"the file is {size / (1 << 20):.0f} MiB, over the {max_bytes >> 20} MiB limit for a photo")
    return path.read_bytes()


def find_faces(grey: np.ndarray, cascade) -> list[tuple[int, int, int, int]]:
    boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return sorted((tuple(int(v) for v in box) for box in boxes), key=lambda b: (b[0], b[1]))


def crop_face(grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    dx, dy = int(w * BOX_MARGIN), int(h * BOX_MARGIN)
    top, bottom = max(0, y - dy), min(grey.shape[0], y + h + dy)
    left, right = max(0, x - dx), min(grey.shape[1], x + w + dx)
    return fer_resize(grey[top:bottom, left:right])


@dataclass
class LoadedModel:
    model: Any
    class_names: list[str]
    uri: str


def _check_face_input(model, where: str) -> None:
    from ferflow.models.serving import face_model_problem

    problem = face_model_problem(model)
    if problem:
        raise ModelNotFound(f"--model {where}: {problem}")


def load_model(model: str | None, model_name: str, repo_root: Path) -> LoadedModel:
    """A ``.keras`` file, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, or the champion."""
    from mlflow.exceptions import MlflowException

    from ferflow import tracking
    from ferflow.models.layers import load_keras_model
    from ferflow.models.serving import CLASS_NAMES_LAYER, class_names_of, load_logged_model

    uri = model or f"models:/{model_name}@champion"
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_file():
            raise ModelNotFound(f"--model {uri}: no such file")
        try:
            loaded = load_keras_model(path)  # safe mode: a Lambda or other code in the file is refused, not run
        except DataError as exc:
            raise ModelNotFound(f"--model {uri}: {str(exc).removeprefix(f'{path}: ')}") from None
        _check_face_input(loaded, str(path))
        return LoadedModel(loaded, class_names_of(loaded), str(path))
    name, _, ref = uri.removeprefix("models:/").partition("@")
    try:
        with tracking.store(repo_root) as client:
            if ref:
                version = client.get_model_version_by_alias(name, ref)
            else:
                name, _, number = uri.removeprefix("models:/").partition("/")
                version = client.get_model_version(name, number)
            loaded = load_logged_model(f"models:/{name}/{version.version}")
    except MlflowException as exc:
        hint = " (no champion yet? run `dvc repro` or `ferflow promote`)" if model is None else ""
        raise ModelNotFound(
            f"model {uri} not found in {tracking.tracking_uri(repo_root)}{hint}: {exc.message}"
        ) from None
    _check_face_input(loaded, uri)
    # The names the model carries; a version logged before models carried them has them as a tag.
    names = class_names_of(loaded)
    if not any(layer.name == CLASS_NAMES_LAYER for layer in loaded.layers) and version.tags.get("classes"):
        names = version.tags["classes"].split(",")
    return LoadedModel(loaded, names, f"models:/{name}/{version.version}")


def predict(
    inputs: Sequence[str | Path] | str | Path,
    model: str | None = None,
    detect: bool = True,
    annotate_dir: Path | None = None,
    model_name: str = "ferflow-fer",
    repo_root: Path | None = None,
    batch_size: int = 256,
    loaded: LoadedModel | None = None,
) -> list[ImageResult]:
    """Expressions of the faces in ``inputs`` (image files, folders, http(s) URLs), one result per image."""
    from ferflow.models.training import predict_proba
    from ferflow.paths import find_repo_root

    if isinstance(inputs, str | Path):
        inputs = [inputs]
    sources = expand_sources(inputs)  # a folder without images is an error before a model is loaded
    loaded = loaded or load_model(model, model_name, repo_root or find_repo_root())
    cascade = _cascade() if detect else None
    results: list[ImageResult] = []
    crops: list[np.ndarray] = []
    owners: list[tuple[ImageResult, tuple[int, int, int, int]]] = []
    images: dict[int, np.ndarray] = {}
    for source in sources:
        result = ImageResult(source)
        results.append(result)
        try:
            data = read_source(source)
            grey = _decode(data, "L")
            if annotate_dir is not None:
                images[id(result)] = _decode(data, "RGB")  # the picture as it was, colour included
        except FerflowError as exc:
            result.error = str(exc)
            continue
        small = max(grey.shape) <= SMALL_SIDE
        if cascade is None or small:
            boxes, result.detected = [(0, 0, grey.shape[1], grey.shape[0])], False
        else:
            boxes = find_faces(grey, cascade)
        for box in boxes:
            crops.append(crop_face(grey, box) if result.detected else fer_resize(grey))
            owners.append((result, box))
    if crops:
        proba = np.concatenate([
            predict_proba(loaded.model, np.stack(crops[i : i + batch_size]), batch_size)
            for i in range(0, len(crops), batch_size)
        ])  # fmt: skip
        for (result, box), row in zip(owners, proba, strict=True):
            best = int(row.argmax())
            probabilities = {n: round(float(p), 4) for n, p in zip(loaded.class_names, row, strict=True)}
            result.faces.append(Face(box, loaded.class_names[best], float(row[best]), probabilities))
    if annotate_dir is not None:
        for number, result in enumerate(results, 1):
            if result.error is None:
                result.annotated = str(_annotate(images[id(result)], result, annotate_dir, number))
    return results


def _annotate(picture: np.ndarray, result: ImageResult, folder: Path, number: int) -> Path:
    from PIL import Image, ImageDraw

    from ferflow.io import atomic_path

    image = Image.fromarray(picture).convert("RGB")
    scale = max(1, 256 // max(picture.shape[:2]))  # blow tiny FER crops up so the label is legible
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for face in result.faces:
        x, y, w, h = (v * scale for v in face.box)
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 60, 60), width=2)
        label = f"{face.expression} {face.confidence:.2f}"
        draw.rectangle((x, max(0, y - 12), x + 6 * len(label) + 4, max(0, y - 12) + 12), fill=(255, 60, 60))
        draw.text((x + 2, max(0, y - 12)), label, fill=(255, 255, 255))
    stem = Path(result.source.rstrip("/")).stem or "image"
    out = folder / f"{number:03d}_{stem}.annotated.png"  # numbered: same-named files from two folders or URLs
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def format_table(results: Sequence[ImageResult]) -> str:
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.source}: error: {result.error}")
            continue
        if not result.faces:
            lines.append(f"{result.source}: no face found")
            continue
        for k, face in enumerate(result.faces, 1):
            top = sorted(face.probabilities.items(), key=lambda item: -item[1])[:3]
            where = "whole image" if not result.detected else "box x={} y={} w={} h={}".format(*face.box)
            lines.append(f"{result.source}: face {k} ({where}): {face.expression} {face.confidence:.2f}  ["
                         + ", ".join(f"{name} {p:.2f}" for name, p in top) + "]")  # fmt: skip
    return "\n".join(lines)


def predict_command(params, repo_root: Path, args) -> int:
    results = predict(
        args.inputs, model=args.model, detect=not args.no_detect, annotate_dir=args.annotate,
        model_name=params.registry.model_name, repo_root=repo_root,
    )  # fmt: skip
    failed = [result for result in results if result.error]
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
        if failed:
            print(f'ferflow predict: {len(failed)} of {len(results)} inputs failed (see their "error" in the JSON)',
                  file=sys.stderr)  # fmt: skip
    else:
        table = format_table([result for result in results if not result.error])
        if table:
            print(table)
        for result in failed:  # once, on stderr
            print(f"ferflow predict: error: {result.source}: {result.error}", file=sys.stderr)
    return 1 if failed else 0

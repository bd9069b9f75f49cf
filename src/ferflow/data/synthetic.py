"""The project's own synthetic FER data: procedurally drawn 48x48 grey faces with seven expressions.

FER-2013 cannot be redistributed, so the default pipeline runs on faces drawn here. The task is meant to be
hard enough that models differ, as on FER-2013, not a 99 % exercise:

- **Identity.** Each face has its own shape, skin and background tone, feature sizes and spacing, hair, and
  a resting face: brows a little tilted, mouth corners a little up or down, eyes more or less open. So one
  person's neutral face can look like another's sad one.
- **Confusable expressions.** Expressions come at random intensity (from faint to full) and the prototypes
  share cues the way real ones do: fear and surprise both raise the brows and open eyes and mouth, sad and
  neutral differ by a few pixels of brow and mouth, angry and disgust both lower the brows.
- **Nuisances.** Pose (rotation, scale, shift, mirroring), lighting gradients, contrast, blur, sensor noise
  and occluders (sunglasses, a hand, a scarf).
- **Label noise.** A few faces (``LABEL_NOISE``) show an expression that their label does not name, one
  that is easily mistaken for it, as annotators do on FER-2013.

The default CNN scores about 79 % on fresh faces, logistic regression on raw pixels far less
(``benchmarks/synthetic_difficulty.py``; pinned by ``tests/model/test_behaviour.py``).

Faces are drawn at 4x resolution and box-downsampled, which anti-aliases the strokes.
Generation is deterministic for a given ``(n_images, seed)``: every image has its own child seed, so
image ``i`` does not depend on how many images come before it in a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from ferflow.data.sampling import largest_remainder
from ferflow.schema import EMOTIONS, FER2013_CLASS_COUNTS, FER2013_USAGE_COUNTS, IMAGE_SIZE, USAGES

_SUPERSAMPLE = 4
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE


@dataclass(frozen=True)
class _Expression:
    brow_height: float  # brow distance above the eye centre (canvas px)
    brow_tilt: float  # >0: inner ends lowered (frown), <0: inner ends raised (worry)
    eye_open: float  # vertical eye opening relative to a neutral eye
    mouth_curve: float  # >0: corners up (smile), <0: corners down
    mouth_open: float  # height of the mouth opening (canvas px)
    mouth_width: float  # relative to the identity's mouth width
    sneer: float  # one-sided raise of the upper lip (disgust)
    teeth: bool


# Prototype expressions at full intensity; each face scales the deviation from neutral by its intensity.
_NEUTRAL = _Expression(15, 0, 1.0, 0, 0, 1.0, 0, False)
_PROTOTYPES: dict[str, _Expression] = {
    "angry": _Expression(9, 8, 0.6, -3, 0, 0.85, 0, False),
    "disgust": _Expression(10, 5, 0.55, -3, 2, 0.9, 8, False),
    "fear": _Expression(22, -6, 1.35, -4, 12, 0.95, 0, True),
    "happy": _Expression(17, 0, 0.6, 11, 6, 1.1, 0, True),
    "sad": _Expression(16, -7, 0.75, -9, 0, 0.95, 0, False),
    "surprise": _Expression(24, -2, 1.4, -1, 17, 0.7, 0, False),
    "neutral": _NEUTRAL,
}
# The expression a face mislabelled as the key shows instead: the confusions FER-2013 annotators make.
_CONFUSED_WITH: dict[str, tuple[str, ...]] = {
    "angry": ("disgust", "sad"),
    "disgust": ("angry",),
    "fear": ("surprise", "sad"),
    "happy": ("neutral",),
    "sad": ("neutral", "fear"),
    "surprise": ("fear",),
    "neutral": ("sad",),
}
LABEL_NOISE = 0.06  # share of faces that show a confusable expression instead of the one their label names


def _blend(expression: _Expression, intensity: float, resting: _Expression = _NEUTRAL) -> _Expression:
    """``resting`` (the identity's neutral face) moved towards ``expression`` by ``intensity``."""

    def mix(a: float, b: float) -> float:
        return a + (b - a) * intensity

    return _Expression(
        brow_height=mix(resting.brow_height, expression.brow_height),
        brow_tilt=mix(resting.brow_tilt, expression.brow_tilt),
        eye_open=mix(resting.eye_open, expression.eye_open),
        mouth_curve=mix(resting.mouth_curve, expression.mouth_curve),
        mouth_open=mix(0, expression.mouth_open),
        mouth_width=mix(1.0, expression.mouth_width),
        sneer=mix(0, expression.sneer),
        teeth=expression.teeth,
    )


def _curve(x0: float, x1: float, y0: float, bend: float, steps: int = 12) -> list[tuple[float, float]]:
    """Points of a parabola from x0 to x1 whose middle sits ``bend`` px below its ends (y grows downwards)."""
    mid, half = (x0 + x1) / 2, (x1 - x0) / 2
    return [(x, y0 + bend * (1 - ((x - mid) / half) ** 2)) for x in np.linspace(x0, x1, steps)]


def draw_face(emotion: str, rng: np.random.Generator) -> np.ndarray:
    """One 48x48 uint8 face showing ``emotion``, with identity and nuisances drawn from ``rng``."""
    resting = _Expression(
        brow_height=_NEUTRAL.brow_height + rng.normal(0, 2), brow_tilt=rng.normal(0, 2.5),
        eye_open=rng.uniform(0.8, 1.2), mouth_curve=rng.normal(0, 2.5), mouth_open=0, mouth_width=1.0,
        sneer=0, teeth=False,
    )  # fmt: skip
    expression = _blend(_PROTOTYPES[emotion], rng.uniform(0.5, 1.0), resting)
    background = rng.uniform(15, 240)
    skin = rng.uniform(90, 225)
    while abs(skin - background) < 35:
        background = rng.uniform(15, 240)
    ink = max(0.0, skin - rng.uniform(85, 130))

    image = Image.new("F", (_CANVAS, _CANVAS), float(background))
    draw = ImageDraw.Draw(image)
    cx, cy = _CANVAS / 2, _CANVAS / 2 + 6
    face_w, face_h = rng.uniform(56, 68), rng.uniform(70, 82)
    if rng.random() < 0.6:  # hair: a cap above the forehead
        hair = rng.uniform(10, 70) if skin > 110 else rng.uniform(150, 230)
        draw.ellipse([cx - face_w - 6, cy - face_h - 12, cx + face_w + 6, cy + rng.uniform(-20, 10)], fill=hair)
    draw.ellipse([cx - face_w, cy - face_h, cx + face_w, cy + face_h], fill=skin)

    eye_dx, eye_y = rng.uniform(21, 28), cy - rng.uniform(12, 20)
    eye_rx, eye_ry = rng.uniform(8, 11), rng.uniform(5, 7) * expression.eye_open
    stroke = int(rng.uniform(5, 7))
    white = min(255.0, skin + 40)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_rx, eye_y - eye_ry, ex + eye_rx, eye_y + eye_ry], fill=white, outline=ink, width=3)
        pupil = min(eye_rx, eye_ry) * 0.8
        draw.ellipse([ex - pupil, eye_y - pupil, ex + pupil, eye_y + pupil], fill=ink)
        # Brow: the inner end (towards the nose) moves by the tilt, the outer end by its opposite.
        brow_y = eye_y - eye_ry - expression.brow_height + 4
        inner = (ex - side * eye_rx * 0.2, brow_y + expression.brow_tilt)
        outer = (ex + side * eye_rx * 1.4, brow_y - expression.brow_tilt * 0.5)
        arch = -expression.brow_height * 0.15
        points = _curve(min(inner[0], outer[0]), max(inner[0], outer[0]), 0, arch, steps=6)
        ys = np.linspace(inner[1], outer[1], len(points)) if side < 0 else np.linspace(outer[1], inner[1], len(points))
        if side < 0:
            ys = ys[::-1]
        draw.line([(x, y + dy) for (x, dy), y in zip(points, ys, strict=True)], fill=ink, width=stroke + 1)

    # Nose, and the wrinkles of a disgusted nose.
    nose_y = cy + rng.uniform(8, 14)
    draw.line([(cx, eye_y + 4), (cx - 3, nose_y), (cx + 4, nose_y)], fill=ink, width=3)
    if expression.sneer > 5:
        for k in range(2):
            y = eye_y + 6 + 5 * k
            draw.line(_curve(cx - 8, cx + 8, y, -3, steps=5), fill=ink, width=2)

    mouth_y = cy + rng.uniform(30, 40)
    half_w = rng.uniform(19, 26) * expression.mouth_width
    left, right = cx - half_w, cx + half_w
    curve = expression.mouth_curve
    # Mouth corners rise with a smile (curve > 0) and drop with a frown: the middle bends the other way.
    upper = _curve(left, right, mouth_y - curve * 0.5, curve)
    if expression.sneer > 0:
        side = 1 if rng.random() < 0.5 else -1
        upper = [(x, y - expression.sneer * max(0.0, side * (x - cx) / half_w)) for x, y in upper]
    if expression.mouth_open > 2:
        lower = _curve(left, right, mouth_y - curve * 0.5, curve + expression.mouth_open * 1.4)
        draw.polygon(upper + lower[::-1], fill=ink * 0.5, outline=ink, width=3)
        if expression.teeth:
            teeth = _curve(left + 3, right - 3, mouth_y - curve * 0.5 + 2, curve + expression.mouth_open * 0.35)
            draw.polygon(upper[1:-1] + teeth[::-1], fill=white)
    else:
        draw.line(upper, fill=ink, width=stroke, joint="curve")

    image = _pose(image, rng, background)
    pixels = np.asarray(image.reduce(_SUPERSAMPLE), dtype=np.float64)
    return _photometric(pixels, rng)


def _pose(image: Image.Image, rng: np.random.Generator, background: float) -> Image.Image:
    """Random rotation, scale, shift and mirroring of the whole canvas."""
    angle = math.radians(rng.uniform(-18, 18))
    scale = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-5, 5, size=2) * _SUPERSAMPLE
    c = _CANVAS / 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # PIL's affine maps output to input coordinates: rotate/scale about the centre, then shift.
    matrix = (cos, sin, c - cos * (c + shift[0]) - sin * (c + shift[1]),
              -sin, cos, c + sin * (c + shift[0]) - cos * (c + shift[1]))  # fmt: skip
    image = image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=background)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def _photometric(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Occluders, lighting gradient, contrast, blur and sensor noise; returns uint8."""
    size = IMAGE_SIZE
    if rng.random() < 0.25:
        kind = rng.integers(3)
        tone = rng.uniform(0, 255)
        if kind == 0:  # sunglasses bar over the eyes
            y = int(rng.uniform(13, 19))
            pixels[y : y + int(rng.uniform(4, 7)), int(rng.uniform(6, 12)) : int(rng.uniform(36, 42))] = tone
        elif kind == 1:  # a hand or object from one side
            x = int(rng.uniform(0, 6)) if rng.random() < 0.5 else int(rng.uniform(34, 40))
            pixels[int(rng.uniform(10, 30)) : size, x : x + int(rng.uniform(8, 13))] = tone
        else:  # scarf over the chin
            pixels[int(rng.uniform(41, 46)) :, :] = tone
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    direction = rng.uniform(0, 2 * math.pi)
    pixels = pixels + rng.uniform(0, 60) * (math.cos(direction) * xx + math.sin(direction) * yy)
    pixels = (pixels - 128) * rng.uniform(0.75, 1.15) + 128 + rng.uniform(-25, 25)
    blur = rng.uniform(0, 0.8)
    if blur > 0.3:
        pixels = ndimage.gaussian_filter(pixels, blur)
    pixels = pixels + rng.normal(0, rng.uniform(1, 7), size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def plan_labels(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and Usages in FER-2013's proportions (every class in every split), before shuffling."""
    usage_counts = largest_remainder(n_images, np.array([FER2013_USAGE_COUNTS[u] for u in USAGES], float))
    class_weights = np.array([FER2013_CLASS_COUNTS[e] for e in EMOTIONS], dtype=float)
    labels, usages = [], []
    for usage, count in zip(USAGES, usage_counts, strict=True):
        per_class = np.maximum(largest_remainder(int(count), class_weights), 1)
        for label, class_count in enumerate(per_class):
            labels.extend([label] * int(class_count))
            usages.extend([usage] * int(class_count))
    return np.array(labels, dtype=np.int64), np.array(usages)


def generate(n_images: int, seed: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw about ``n_images`` faces: (images uint8 (N, 48, 48), labels int64, usages str).

    The count can exceed ``n_images`` by a few rows because every class keeps at least one face per split.
    """
    labels, usages = plan_labels(n_images)
    root = np.random.default_rng(seed)
    order = root.permutation(len(labels))
    labels, usages = labels[order], usages[order]
    child_seeds = np.random.SeedSequence(seed).spawn(len(labels))
    images = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in tqdm(range(len(labels)), desc="drawing synthetic faces", unit="face", disable=None if progress else True):
        rng = np.random.default_rng(child_seeds[i])
        images[i] = draw_face(_shown_emotion(EMOTIONS[labels[i]], rng), rng)
    return images, labels, usages


def _shown_emotion(label: str, rng: np.random.Generator) -> str:
    """The expression drawn for a face labelled ``label``: itself, or (label noise) one confused with it."""
    if rng.random() < LABEL_NOISE:
        return str(rng.choice(_CONFUSED_WITH[label]))
    return label


def linear_baseline_accuracy(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                             test: tuple[np.ndarray, np.ndarray]) -> float:  # fmt: skip
    """Accuracy on ``test`` of logistic regression on standardised raw pixels, fitted on ``train`` with its
    regularisation chosen on ``val``: how far a linear model gets on (images, labels) pairs."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    def flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float64)

    scaler = StandardScaler().fit(flat(train[0]))
    train_pixels = scaler.transform(flat(train[0]))
    # One BLAS thread: at these sizes (1,000-15,000 x 2,304 pixels, 7 classes) OpenBLAS' threads cost more than
    # they give: 5 s instead of 15 s on 2 idle cores, and 3 s instead of 15 s beside another busy process.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        models = [
            LogisticRegression(C=c, max_iter=200).fit(train_pixels, train[1])
            for c in (0.003, 0.03)  # the best on val at 1,000-15,000 faces
        ]
    best = max(models, key=lambda model: model.score(scaler.transform(flat(val[0])), val[1]))
    return float(best.score(scaler.transform(flat(test[0])), test[1]))


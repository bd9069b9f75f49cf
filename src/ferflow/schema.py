"""The FER-2013 data contract shared by every stage.

The canonical table is the Kaggle challenge file ``fer2013.csv``: columns ``emotion,pixels,Usage``,
``pixels`` holding 48x48 = 2,304 space-separated grey levels in row-major order.
"""

IMAGE_SIZE = 48
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

COLUMNS: tuple[str, ...] = ("emotion", "pixels", "Usage")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")

# How each Kaggle Usage maps to the split a model sees: PublicTest is the validation split used for
# model selection, PrivateTest the held-out test split reported once (the clean protocol).
SPLIT_OF_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Class counts of the full FER-2013 release (all three Usages), used for the synthetic generator's
# proportions so that it is as imbalanced as the real thing (Disgust is 1.5 %).
FER2013_CLASS_COUNTS: dict[str, int] = {
    "angry": 4953,
    "disgust": 547,
    "fear": 5121,
    "happy": 8989,
    "sad": 6077,
    "surprise": 4002,
    "neutral": 6198,
}
FER2013_USAGE_COUNTS: dict[str, int] = {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}

# Folder names used by the image-folder layouts in circulation, mapped to our class names.
EMOTION_ALIASES: dict[str, str] = {
    "angry": "angry", "anger": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "happy": "happy", "happiness": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral",
}  # fmt: skip

# Split folder names of the image-folder layouts, mapped to Kaggle Usages.
USAGE_ALIASES: dict[str, str] = {
    "train": "Training", "training": "Training",
    "val": "PublicTest", "valid": "PublicTest", "validation": "PublicTest", "publictest": "PublicTest",
    "test": "PrivateTest", "privatetest": "PrivateTest",
}  # fmt: skip

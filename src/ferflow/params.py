"""``params.yaml`` parsed once into typed, validated, immutable settings.

Every knob of the pipeline is declared here with its type, range and default. An unknown key, a wrong
type or an out-of-range value is a :class:`~ferflow.errors.ParamsError` naming the key, raised before any
stage starts work. Stages receive these objects; no module reads ``params.yaml`` by itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ferflow.errors import ParamsError
from ferflow.schema import EMOTIONS

Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# Named class subsets used in the FER literature; a list of class names works too.
CLASS_PRESETS: dict[str, tuple[str, ...]] = {
    "all": EMOTIONS,
    "no_disgust": ("angry", "fear", "happy", "sad", "surprise", "neutral"),
    "four": ("angry", "happy", "sad", "neutral"),
    "happy_vs_sad": ("happy", "sad"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # Lax mode reads true/false as 1/0, so `epochs: true` would train one epoch without a word.
        if isinstance(value, bool) and _takes_numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("true/false is not a number here; write a number")
        return value


def _takes_numbers_only(annotation: Any) -> bool:
    kinds = set(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


class SyntheticParams(_Section):
    n_images: Annotated[int, Field(ge=100, le=2_000_000)] = 15_000
    seed: Seed = 2013


class DataParams(_Section):
    source: str = "synthetic"
    sha256: str | None = None
    on_bad_image: Literal["error", "skip"] = "error"
    synthetic: SyntheticParams = SyntheticParams()

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be 'synthetic', 'kaggle', a local path or an http(s) URL")
        return value.strip()

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 hexadecimal characters (a SHA-256 digest) or null")
        return value


class SubsampleParams(_Section):
    fraction: Fraction = 0.1
    seed: Seed = 42
    classes: str | list[str] = "all"

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value not in CLASS_PRESETS:
                raise ValueError(f"unknown preset {value!r}; use one of {sorted(CLASS_PRESETS)} or a list of names")
            return value
        names = [str(name).strip().lower() for name in value]
        unknown = [name for name in names if name not in EMOTIONS]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; known: {list(EMOTIONS)}")
        if len(set(names)) != len(names):
            raise ValueError("lists a class more than once")
        if len(names) < 2:
            raise ValueError("needs at least two classes")
        return names

    @property
    def class_names(self) -> tuple[str, ...]:
        """The selected classes in label order: label i of the subsample is ``class_names[i]``."""
        if isinstance(self.classes, str):
            return CLASS_PRESETS[self.classes]
        return tuple(self.classes)


class ValidateParams(_Section):
    min_class_count: Annotated[int, Field(ge=1)] = 1
    # Two gates that mean different things. Malformed rows (bad label or Usage, wrong pixel count or values,
    # near-blank images) point at a broken file: FER-2013 has a dozen blank faces in 35,887 (0.03 %).
    # Exact copies are a property of the dataset: FER-2013 has about 5 %, within and across its Usages.
    max_malformed_fraction: Probability = 0.02
    max_duplicate_fraction: Probability = 0.10
    min_pixel_std: Annotated[float, Field(ge=0.0, le=128.0)] = 2.0
    carve_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    seed: Seed = 42


class OversampleParams(_Section):
    enabled: bool = True
    target_ratio: Fraction = 0.5
    rotation_deg: Annotated[float, Field(ge=0.0, le=45.0)] = 10.0
    shift: Annotated[float, Field(ge=0.0, le=0.3)] = 0.1
    zoom: Annotated[float, Field(ge=0.0, le=0.3)] = 0.1
    horizontal_flip: bool = True
    seed: Seed = 42


class OnlineAugmentParams(_Section):
    """Applied on the fly by the train stage with Keras preprocessing layers (DeepFER recipe)."""

    enabled: bool = True
    # Mirroring only by default: the oversampled copies already vary pose, and on the default 1,350 synthetic
    # faces rotation/shift/zoom cost ~8 validation points at a 20-epoch budget. The FER-2013 recipes use
    # rotation 10, shifts 0.1-0.2, zoom 0.1-0.2 with longer training.
    rotation_deg: Annotated[float, Field(ge=0.0, le=45.0)] = 0.0
    width_shift: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    height_shift: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    zoom: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    horizontal_flip: bool = True
    # Random erasing (Zhong et al. 2017): the largest probability that a training face has a random patch
    # erased; each face draws its own probability up to this value (keras.layers.RandomErasing's factor).
    erasing: Probability = 0.0


class AugmentParams(_Section):
    oversample: OversampleParams = OversampleParams()
    online: OnlineAugmentParams = OnlineAugmentParams()
    preview_images: Annotated[int, Field(ge=1, le=32)] = 8


class ModelParams(_Section):
    architecture: Literal["simple_cnn", "vgg", "mini_xception", "vgg16", "resnet50", "mobilenet_v2", "densenet169"] = (
        "simple_cnn"
    )
    width: Annotated[int, Field(ge=4, le=512)] = 16
    depth: Annotated[int, Field(ge=1, le=5)] = 3
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3  # before the classifier
    # after each conv block of simple_cnn and vgg
    block_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    # vgg: convs in the first (48x48) stage, the costliest per filter
    first_stage_convs: Annotated[int, Field(ge=1, le=2)] = 2
    # vgg: convs in each later stage (VGG13 has 2, VGG16 3, VGG19 4)
    stage_convs: Annotated[int, Field(ge=1, le=4)] = 2
    dense_units: Annotated[int, Field(ge=8, le=4096)] = 128
    weights: str = "none"  # transfer backbones: none | a local weights file
    transfer_input_size: Annotated[int, Field(ge=32, le=224)] = 48
    freeze_backbone: bool = False
    # 0: the network sees the whole 48x48 face. N (24-47): an NxN crop of it, random in training, the centre
    # at inference (FER-2013 recipes train on 40x40 crops; evaluate.tta averages shifted crops).
    input_crop: Annotated[int, Field(ge=0, le=47)] = 0

    @field_validator("input_crop")
    @classmethod
    def _crop_leaves_a_face(cls, value: int) -> int:
        if 0 < value < 24:
            raise ValueError(f"must be 0 (no crop) or 24-47 pixels; a {value}x{value} crop leaves too little face")
        return value


class TrainParams(_Section):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 20
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.002
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0001
    schedule: Literal["plateau", "cosine"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    plateau_patience: Annotated[int, Field(ge=1)] = 4
    plateau_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    early_stopping_patience: Annotated[int, Field(ge=1)] = 8
    # Minutes of training (0: no budget): no epoch starts that would not end within them, at the pace of the
    # median epoch so far, and the cosine decay is planned over the epochs that fit (re-planned each epoch,
    # logged as planned_epochs); epochs stays the most it runs. The epoch count then depends on the machine.
    time_budget_minutes: Annotated[float, Field(ge=0.0, le=100000.0)] = 0.0
    # true: the saved weights are the epoch's with the lowest val loss; false: the last epoch's, the point a
    # cosine schedule is built to end on (val loss can turn up while val accuracy still rises)
    restore_best_weights: bool = True
    loss: Literal["categorical_crossentropy", "focal"] = "categorical_crossentropy"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    focal_gamma: Annotated[float, Field(ge=0.0, le=10.0)] = 2.0
    class_weighting: bool = False
    # mixup (Zhang et al. 2018): each batch is blended with a shuffle of itself, faces and labels alike, by a
    # weight drawn from Beta(alpha, alpha) per batch; 0: off. Regularises a network that fits its training faces.
    mixup_alpha: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    # Exponential moving average of the weights over about this many last epochs (Keras' use_ema); 0: off.
    # The saved model is the average when its val loss is lower than that of the epoch it would replace.
    ema_epochs: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    # Keras dtype policy. auto: mixed_bfloat16 when the backend sees a GPU or on a CPU with AMX bf16 units
    # under TensorFlow, float32 elsewhere (there it is slower); the softmax output stays float32 either way.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16", "auto"] = "float32"
    # auto: data-parallel (keras.distribution.DataParallel) over every device the backend lists when there
    # are several, each batch split between them (JAX; Keras' distribution API has no other backend yet)
    distribution: Literal["auto", "none"] = "auto"
    seed: Seed = 42


class TtaParams(_Section):
    flip: bool = False  # also average over the mirrored image
    crops: Annotated[int, Field(ge=0, le=5)] = 0  # the four corners, then the centre
    crop_fraction: Annotated[float, Field(ge=0.5, lt=1.0)] = 0.9
    # shift: 48x48 crops of the edge-padded face (same scale, as a model trained without zoom saw);
    # zoom: crop_fraction of the face resized back up (only for models trained with zoom augmentation)
    crop_mode: Literal["shift", "zoom"] = "shift"
    # TTA is checked on val: one that lowers val accuracy is not used on test (false: used, with a warning)
    guard: bool = True


class EvaluateParams(_Section):
    tta: TtaParams = TtaParams()
    sample_faces: Annotated[int, Field(ge=1, le=64)] = 24  # per grid of correct / incorrect test faces
    seed: Seed = 0


class CvParams(_Section):
    # false: the stage writes a note instead of metrics (for recipes whose training alone takes most of the
    # time budget, where K more trainings would not fit)
    enabled: bool = True
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    repeats: Annotated[int, Field(ge=1, le=10)] = 1
    seed: Seed = 42
    ensemble: bool = True  # also score the fold models' averaged prediction on the test split


class GateParams(_Section):
    """The promotion gate: champion and challenger predict the same test faces; the challenger is promoted
    only if it is better by ``margin`` and a paired test finds the difference significant at ``alpha``."""

    test: Literal["bootstrap", "mcnemar"] = "bootstrap"
    metric: Literal["f1_macro", "accuracy"] = "f1_macro"
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005
    alpha: Annotated[float, Field(gt=0.0, le=0.5)] = 0.05
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 2000
    seed: Seed = 0

    @model_validator(mode="after")
    def _mcnemar_counts_correctness(self) -> GateParams:
        if self.test == "mcnemar" and self.metric != "accuracy":
            raise ValueError("test 'mcnemar' compares correctness: set metric to 'accuracy' (or use 'bootstrap')")
        return self


class RegisterParams(_Section):
    model_name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")] = "ferflow-fer"
    # Runs are ranked on val (the model as served, without TTA); the test split never chooses.
    metric: Literal["valid_f1_macro", "valid_accuracy", "valid_f1_weighted", "valid_auc", "valid_loss"] = (
        "valid_f1_macro"
    )
    gate: GateParams = GateParams()
    auto_promote: bool = True  # apply the promotion gate right after registering
    require_gpu: bool = False  # only GPU-trained runs are eligible


class MlflowParams(_Section):
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "ferflow"

    @field_validator("experiment")
    @classmethod
    def _visible(cls, value: str) -> str:
        if not value.strip():  # MLflow would file the runs under a name nobody can read or type
            raise ValueError("a blank experiment name; write one, e.g. ferflow")
        return value


class Params(_Section):
    data: DataParams = DataParams()
    subsample: SubsampleParams = SubsampleParams()
    # ``validate`` is a (deprecated) BaseModel method, so the section lives under another attribute name.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    cv: CvParams = CvParams()
    # ``register`` is an ABC class method of BaseModel: the section lives under another attribute name too.
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    mlflow: MlflowParams = MlflowParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (typo? see README's params table)"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {message} (got {error.get('input')!r})"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping, raising :class:`ParamsError` that lists every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(error) for error in exc.errors())
        raise ParamsError(f"{source} has invalid params:\n  {problems}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (give --params, or run inside the repository)") from None
    if not text.strip():
        # An empty file would silently run every stage on built-in defaults, whatever the user meant to set.
        raise ParamsError(f"{path}: the params file is empty; restore it from git (git checkout {path.name})")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))

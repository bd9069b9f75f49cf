"""The training recipe shared by the ``train`` and ``cv`` stages: model from params, online augmentation,
optimiser and schedule, loss, metrics and callbacks, then ``fit``.

Written against ``keras.*`` and numpy only, so any Keras backend (TensorFlow, JAX, PyTorch) runs it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from ferflow.errors import ParamsError
from ferflow.models.architectures import ModelSpec, build_model
from ferflow.models.layers import RandomAffine, RandomErase
from ferflow.models.losses import class_weights, make_loss
from ferflow.params import OnlineAugmentParams, Params, TrainParams

EPOCH_METRICS = ("loss", "accuracy", "precision", "recall", "auc", "f1_macro")


def model_spec(params: Params, n_classes: int) -> ModelSpec:
    model = params.model
    return ModelSpec(
        architecture=model.architecture, n_classes=n_classes, width=model.width, depth=model.depth,
        dropout=model.dropout, block_dropout=model.block_dropout, first_stage_convs=model.first_stage_convs,
        stage_convs=model.stage_convs, dense_units=model.dense_units,
        weights=None if model.weights.lower() == "none" else model.weights,
        transfer_input_size=model.transfer_input_size, freeze_backbone=model.freeze_backbone,
        input_crop=model.input_crop,
    )  # fmt: skip


def to_inputs(images: np.ndarray, raw: bool = False) -> np.ndarray:
    """uint8 (N, 48, 48) -> float32 (N, 48, 48, 1): in [0, 1], what the networks train on, or, with ``raw``,
    the grey levels as they are, what saved models take (they scale inside: ``ferflow.models.serving``)."""
    faces = np.asarray(images, dtype=np.float32)[..., None]
    return faces if raw else faces / 255.0


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def seed_everything(seed: int) -> None:
    """Python, numpy and backend seeds; on TensorFlow also deterministic kernels, so that the same params
    and seed on the same machine give the same metrics."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def with_online_augmentation(base: keras.Model, settings: OnlineAugmentParams) -> keras.Model:
    """``base`` behind Keras preprocessing layers; they act in training only, so the saved model predicts
    on untouched images."""
    if not settings.enabled:
        return base
    steps = []
    if settings.horizontal_flip:
        steps.append(layers.RandomFlip("horizontal", name="flip"))
    if settings.rotation_deg or settings.zoom or settings.width_shift or settings.height_shift:
        steps.append(RandomAffine(settings.rotation_deg, settings.zoom, settings.width_shift,
                                  settings.height_shift, name="affine"))  # fmt: skip
    if settings.erasing:
        steps.append(RandomErase(settings.erasing, name="erase"))
    if not steps:
        return base
    inputs = keras.Input(base.input_shape[1:], name="image")
    x = keras.Sequential(steps, name="online_augmentation")(inputs)
    return keras.Model(inputs, base(x), name=base.name)


def make_optimizer(settings: TrainParams) -> keras.optimizers.Optimizer:
    # With train.ema_epochs the optimiser also keeps the moving average of the weights (in the train step,
    # so it costs no Python per batch); fit sets its momentum once it knows the batches an epoch.
    averaging = {"use_ema": True} if settings.ema_epochs else {}
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(settings.learning_rate, **averaging)
    if settings.optimizer == "adamw":
        return keras.optimizers.AdamW(settings.learning_rate, weight_decay=settings.weight_decay, **averaging)
    return keras.optimizers.SGD(settings.learning_rate, momentum=0.9, nesterov=True,
                                weight_decay=settings.weight_decay, **averaging)  # fmt: skip


def averaging_momentum(ema_epochs: float, steps_per_epoch: int) -> float:
    """The EMA momentum whose horizon, 1 / (1 - momentum) steps, is ``ema_epochs`` epochs of batches: a horizon
    in epochs means the same on a tenth of the data as on all of it, which a fixed momentum does not."""
    return 1.0 - 1.0 / max(ema_epochs * steps_per_epoch, 1.0)


def cosine_learning_rate(settings: TrainParams, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` in a run of ``epochs``: linear warm-up over ``warmup_epochs``, then
    cosine decay towards zero at ``epochs``."""
    if epoch < settings.warmup_epochs:
        return settings.learning_rate * (epoch + 1) / (settings.warmup_epochs + 1)
    span = max(epochs - settings.warmup_epochs, 1)
    progress = min((epoch - settings.warmup_epochs) / span, 1.0)
    return 0.5 * settings.learning_rate * (1 + math.cos(math.pi * progress))


def cosine_with_warmup(settings: TrainParams):
    """Epoch -> learning rate of the cosine schedule over ``train.epochs`` (Keras' ``LearningRateScheduler``)."""

    def learning_rate(epoch: int, _current: float = 0.0) -> float:
        return cosine_learning_rate(settings, epoch, settings.epochs)

    return learning_rate


def planned_epochs(settings: TrainParams, done: int, durations: Sequence[float]) -> int:
    """How many epochs a run with ``train.time_budget_minutes`` trains in all, once ``done`` have finished and
    the epochs so far took ``durations`` seconds (resumed runs included): those done, plus as many more as fit
    in the time left at the median epoch's pace (robust to one slow epoch on a shared machine), at most
    ``train.epochs``. Without a budget, or before any epoch was timed: ``train.epochs``."""
    if not settings.time_budget_minutes or not durations:
        return settings.epochs
    left = settings.time_budget_minutes * 60.0 - float(sum(durations))
    more = max(int(left // float(np.median(durations))), 0)
    return min(settings.epochs, done + more)


class TimeBudget(keras.callbacks.Callback):
    """``train.time_budget_minutes``: training stops before an epoch that would not fit in the budget, and with
    the cosine schedule the decay is planned over the epochs that fit, re-planned before every epoch, so the
    learning rate reaches its end on any machine instead of being cut off part-way. Each epoch logs the plan its
    learning rate came from as ``planned_epochs``. ``spent``: the epochs' seconds before a resume.

    This callback goes first (it sets the learning rate, and its logs reach the history and MLflow);
    ``stopper`` goes last, so that an epoch's time includes every callback's work (saving the best weights,
    the backup, logging) and the budget counts the whole of training."""

    def __init__(self, settings: TrainParams, spent: Sequence[float] = (),
                 clock: Callable[[], float] = time.perf_counter):  # fmt: skip
        super().__init__()
        self.settings = settings
        self.durations = [float(seconds) for seconds in spent]
        self.clock = clock
        self.started = 0.0
        self.plan = settings.epochs
        self.stopper = _TimeBudgetStop(self)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = self.clock()
        self.plan = max(planned_epochs(self.settings, epoch, self.durations), epoch + 1)
        if self.settings.schedule == "cosine":
            self.model.optimizer.learning_rate = cosine_learning_rate(self.settings, epoch, self.plan)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["planned_epochs"] = float(self.plan)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _TimeBudgetStop(keras.callbacks.Callback):
    """The last callback of a budgeted ``fit``: times the epoch and stops training when no other one fits."""

    def __init__(self, budget: TimeBudget):
        super().__init__()
        self.budget = budget

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        budget = self.budget
        budget.durations.append(budget.clock() - budget.started)
        if planned_epochs(budget.settings, epoch + 1, budget.durations) <= epoch + 1:
            self.model.stop_training = True


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the processor multiplies bfloat16 matrices in hardware (Intel AMX, Sapphire Rapids and later).
    There TensorFlow's oneDNN kernels train our networks 1.7x and predict 2.4x faster in mixed bfloat16 than
    in float32 (measured on 2 cores: benchmarks/precision.py); without it bfloat16 is emulated and slower."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def dtype_policy(precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The Keras dtype policy for ``train.precision``. ``auto`` is mixed bfloat16 where the hardware has it
    (a GPU, or a CPU with AMX under TensorFlow, as ``cpuinfo`` tells), float32 elsewhere."""
    if precision != "auto":
        return precision
    from ferflow.tracking import device

    if device()[0] == "GPU" or (keras.backend.backend() == "tensorflow" and cpu_has_amx_bf16(cpuinfo)):
        return "mixed_bfloat16"
    return "float32"


def data_parallel_devices(settings: TrainParams) -> list[str]:
    """The devices a batch is split over: all the backend lists when ``train.distribution`` is auto, the
    backend is JAX and it has several; otherwise none (Keras places the model on its default device)."""
    if settings.distribution == "none" or keras.backend.backend() != "jax":
        return []
    devices = keras.distribution.list_devices()
    if len(devices) < 2:
        return []
    if settings.batch_size % len(devices):
        raise ParamsError(
            f"train.batch_size: {settings.batch_size} does not split evenly over the {len(devices)} devices that "
            f"train.distribution: auto uses; use a multiple of {len(devices)}, or train.distribution: none"
        )
    return devices


def configure_distribution(settings: TrainParams) -> int:
    """Set (or clear) Keras' global distribution for ``settings``; the number of devices a batch is split over."""
    devices = data_parallel_devices(settings)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices) if devices else None)
    return max(len(devices), 1)


def configure_precision(settings: TrainParams) -> str:
    """Set Keras' global dtype policy for ``train.precision``; its name (what the run is tagged with)."""
    policy = dtype_policy(settings.precision)
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def configure_runtime(settings: TrainParams) -> None:
    """Keras' global dtype policy and distribution for ``train``: set before a model is built (its layers take
    them when created) and before a run is tagged (the tags report them)."""
    configure_precision(settings)
    configure_distribution(settings)


def compiled_model(params: Params, n_classes: int) -> keras.Model:
    settings = params.train
    configure_runtime(settings)
    model = with_online_augmentation(build_model(model_spec(params, n_classes)), params.augment.online)
    model.compile(
        optimizer=make_optimizer(settings),
        loss=make_loss(settings.loss, settings.label_smoothing, settings.focal_gamma),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.F1Score(average="macro", name="f1_macro"),
        ],
    )
    return model


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest ``val_loss`` in memory (and optionally on disk, so a
    resumed run still knows its best loss) and puts them back when training ends, or, with ``restore``
    false, the last epoch's. What the model held at the end is kept as ``at_end``: with the optimiser's weight
    average (``use_ema``), Keras has put the average there, beside the batch-norm statistics of the last
    epoch, the epoch the average ends at."""

    def __init__(self, path: Path | None = None, restore: bool = True):
        super().__init__()
        self.path = path
        self.restore = restore
        self.best_loss = self.last_loss = math.inf
        self.best: list[np.ndarray] | None = None
        self.last: list[np.ndarray] | None = None
        self.at_end: list[np.ndarray] | None = None

    @property
    def kept_loss(self) -> float:
        """The val loss of the weights ``on_train_end`` puts back."""
        return self.best_loss if self.restore else self.last_loss

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path is not None and self.path.with_suffix(".json").is_file():
            state = json.loads(self.path.with_suffix(".json").read_text())
            self.best_loss = state["val_loss"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("val_loss", math.inf))
        if not self.restore:
            self.last, self.last_loss = self.model.get_weights(), loss
        if loss < self.best_loss:
            self.best_loss = loss
            self.best = self.model.get_weights()
            if self.path is not None:
                # Written aside and renamed: a kill mid-write must not leave a corrupt file to resume from.
                staged = self.path.with_name(f"staged.{self.path.name}")
                self.model.save_weights(str(staged))
                os.replace(staged, self.path)
                self.path.with_suffix(".json").write_text(json.dumps({"val_loss": loss, "epoch": epoch}))

    def on_train_end(self, logs: dict | None = None) -> None:
        self.at_end = self.model.get_weights()
        if not self.restore:
            if self.last is not None:  # the last epoch's own weights, not an average Keras put in their place
                self.model.set_weights(self.last)
        elif self.best is not None:
            self.model.set_weights(self.best)
        elif self.path is not None and self.path.is_file():
            self.model.load_weights(str(self.path))


def schedule_callbacks(settings: TrainParams, spent: Sequence[float] = ()) -> list[keras.callbacks.Callback]:
    """Early stopping and the learning-rate schedule; with a time budget, the budget (which also plans the
    cosine decay; its ``stopper`` must go last in ``fit``). ``spent``: the epochs' seconds before a resume."""
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.early_stopping_patience),
    ]
    if settings.time_budget_minutes:
        callbacks.append(TimeBudget(settings, spent))
    if settings.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=settings.plateau_factor, patience=settings.plateau_patience, min_lr=1e-6
        ))  # fmt: skip
    elif not settings.time_budget_minutes:
        callbacks.append(keras.callbacks.LearningRateScheduler(cosine_with_warmup(settings)))
    return callbacks


@dataclass
class FitResult:
    model: keras.Model
    history: list[dict[str, float]]  # one row per epoch run in this call: {"epoch": i, "loss": ..., ...}
    seconds: float
    # with train.ema_epochs: the averaged weights' val scores ("val_loss", ...) and "kept" (1.0 when the model
    # holds them, 0.0 when it holds the epoch's weights); None without
    averaged: dict[str, float] | None = None


def saved_weights(settings: TrainParams, averaged: dict[str, float] | None) -> str:
    """What a fitted model holds (``FitResult.averaged`` for ``averaged``): ``averaged``, ``best_epoch`` or
    ``last_epoch``, the train run's ``ferflow.weights`` tag."""
    if averaged and averaged["kept"]:
        return "averaged"
    return "best_epoch" if settings.restore_best_weights else "last_epoch"


def keep_averaged_if_better(model: keras.Model, averaged_weights: list[np.ndarray],
                            validation: tuple[np.ndarray, np.ndarray], kept_loss: float,
                            batch_size: int) -> dict[str, float]:  # fmt: skip
    """After ``fit`` (``model`` holds the best or the last epoch's weights, whose val loss is ``kept_loss``):
    score ``averaged_weights`` (the optimiser's moving average with the last epoch's batch-norm statistics,
    ``BestWeights.at_end``) on val and keep them if their val loss is lower. Pairing the average with the
    best epoch's statistics instead would mismatch them when the best epoch is not near the end."""
    epoch_weights = model.get_weights()
    model.set_weights(averaged_weights)
    scores = model.evaluate(*validation, batch_size=batch_size, verbose=0, return_dict=True)
    kept = float(scores["loss"]) < kept_loss
    if not kept:
        model.set_weights(epoch_weights)
    return {"kept": float(kept), **{f"val_{key}": float(value) for key, value in scores.items()}}


def fit(
    params: Params,
    images: np.ndarray,
    labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    best_weights: Path | None = None,
    model: keras.Model | None = None,
    verbose: int | None = None,
    spent_seconds: Sequence[float] = (),
) -> FitResult:
    """Train with the ``train`` recipe and return the model holding the weights it keeps: the best epoch's
    (lowest val_loss) or the last epoch's (``train.restore_best_weights``), or their moving average when its
    val loss is lower (``train.ema_epochs``). ``spent_seconds``: the epochs' seconds before a resume, which
    ``train.time_budget_minutes`` counts."""
    settings = params.train
    model = model if model is not None else compiled_model(params, n_classes)
    best = BestWeights(best_weights, restore=settings.restore_best_weights)
    weights = class_weights(labels, n_classes) if settings.class_weighting else None
    inputs: dict = {"x": to_inputs(images), "y": one_hot(labels, n_classes), "class_weight": weights}
    validation = (to_inputs(val_images), one_hot(val_labels, n_classes))
    devices = data_parallel_count()
    if settings.ema_epochs:
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under loss scaling too
        optimizer.ema_momentum = averaging_momentum(settings.ema_epochs, math.ceil(len(images) / settings.batch_size))
    if devices > 1 or settings.mixup_alpha:
        # A data-parallel batch must split evenly over the devices; Keras' array input ends each epoch with
        # an uneven batch, so the rows go through batches that leave out fewer than `devices` rows an epoch.
        # Mixup blends labels, which only the data side can do: the same batches, blended.
        row_weights = None if weights is None else np.array([weights[int(j)] for j in labels], np.float32)
        inputs = {"x": _TrainingBatches(inputs["x"], inputs["y"], settings.batch_size, devices, row_weights,
                                    settings.seed, settings.mixup_alpha)}  # fmt: skip
        usable = len(val_images) - len(val_images) % devices  # val scores leave out at most devices-1 faces
        validation = (validation[0][:usable], validation[1][:usable])
    schedule = schedule_callbacks(settings, spent_seconds)
    started = time.perf_counter()
    fitted = model.fit(
        **inputs, validation_data=validation,
        epochs=settings.epochs, batch_size=None if devices > 1 else settings.batch_size, shuffle=True,
        # best is saved before any backup; a time budget times the whole epoch, every callback included
        callbacks=[*schedule, best, *extra_callbacks, *(c.stopper for c in schedule if isinstance(c, TimeBudget))],
        # One line per epoch in a log file or CI; the live bar only on a terminal.
        verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2),
    )  # fmt: skip
    history = [
        {"epoch": int(epoch), **{key: float(values[i]) for key, values in fitted.history.items()}}
        for i, epoch in enumerate(fitted.epoch)
    ]
    seconds = time.perf_counter() - started
    averaged = None
    if settings.ema_epochs:
        averaged = keep_averaged_if_better(model, best.at_end, validation, best.kept_loss, settings.batch_size)
    return FitResult(model, history, seconds, averaged)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of uint8 faces, from a network in training or a saved (servable) model."""
    from ferflow.models.serving import takes_raw_faces

    inputs = to_inputs(images, raw=takes_raw_faces(model))
    devices = data_parallel_count()
    if devices > 1:  # every batch must split evenly over the devices: pad, then drop the padding's answers
        batch_size = max(devices, batch_size - batch_size % devices)
        inputs = np.concatenate([inputs, np.zeros((-len(inputs) % devices, *inputs.shape[1:]), inputs.dtype)])
    probabilities = model.predict(inputs, batch_size=batch_size, verbose=0)[: len(images)]
    return np.asarray(probabilities, dtype=np.float64)


def data_parallel_count() -> int:
    distribution = keras.distribution.distribution()
    return int(distribution.device_mesh.devices.size) if distribution is not None else 1


class _TrainingBatches(keras.utils.PyDataset):
    """Batches of a fresh shuffle each epoch, every one a multiple of ``multiple`` rows: the fewer than
    ``multiple`` rows that would make the last batch uneven sit out that epoch (different rows each time).
    With ``mixup_alpha`` each batch is blended with a shuffle of itself (faces and one-hot labels, one
    Beta(alpha, alpha) weight per batch); a blended row keeps its own class weight."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, multiple: int,
                 sample_weight: np.ndarray | None, seed: int, mixup_alpha: float = 0.0):  # fmt: skip
        super().__init__()
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size = batch_size
        self.usable = len(x) - len(x) % multiple
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))
        self.mixup_alpha, self.seed, self.epoch = mixup_alpha, seed, 0

    def __len__(self) -> int:
        return math.ceil(self.usable / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self.order[index * self.batch_size : min((index + 1) * self.batch_size, self.usable)]
        x, y = self.x[rows], self.y[rows]
        if self.mixup_alpha:
            # a generator of its own per batch: the same blend whichever order Keras asks for batches in
            rng = np.random.default_rng((self.seed, self.epoch, index))
            weight = np.float32(rng.beta(self.mixup_alpha, self.mixup_alpha))
            partner = rng.permutation(len(rows))
            x = weight * x + (1 - weight) * x[partner]
            y = weight * y + (1 - weight) * y[partner]
        return (x, y) if self.sample_weight is None else (x, y, self.sample_weight[rows])

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))
        self.epoch += 1

"""Named recipes: sets of params values for real FER-2013, measured on the shared full file.

A recipe is only a list of ``params.yaml`` keys and values. It is applied the DVC way, so each stage still
reruns only when a key it declares changes:

- ``ferflow recipe run cpu-fast -S data.source=...`` runs ``dvc exp run -n cpu-fast -S key=value ...``
  (add ``--queue`` to queue it for ``dvc queue start``);
- ``ferflow recipe apply cpu-full`` writes the values into ``params.yaml`` (comments kept), for a plain
  ``dvc repro`` and a commit.

The figures each recipe reaches, and the command that measures them, are in README ("Recipes") and
``benchmarks/recipes.py``. No recipe names a data source: real data stays outside the repository.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ferflow.errors import ParamsError
from ferflow.params import Params, parse_params


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    values: dict[str, Any] = field(default_factory=dict)  # dotted params key -> value


# The shared training choices of the FER-2013 literature (../shared/guide/model-recipes.md), scaled to
# what 2 CPU cores can run: a VGG-style net with global average pooling, mirror + small rotation, shift and
# zoom + random erasing, label smoothing, SGD with Nesterov momentum on a cosine schedule with warm-up.
_LITERATURE_AUGMENTATION = {
    "augment.online.horizontal_flip": True,
    "augment.online.rotation_deg": 10,
    "augment.online.width_shift": 0.1,
    "augment.online.height_shift": 0.1,
    "augment.online.zoom": 0.1,
    "augment.online.erasing": 0.5,
}

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "cpu-fast",
            "the default 10 % subsample on 2 CPU cores: whole DAG in about 10 minutes",
            {
                # Chosen on val of the shared full file with 10 % of Training (2,365 faces): this VGG with
                # mirror, rotation, shift and zoom and no erasing reached 0.527 val accuracy in 50 epochs,
                # against 0.507 for half its width with erasing 0.25 and 0.416 for simple_cnn (old cpu-fast).
                **_LITERATURE_AUGMENTATION,
                "augment.online.erasing": 0.0,
                "model.architecture": "vgg",
                "model.width": 32,
                "model.depth": 4,
                "model.dense_units": 256,
                "model.dropout": 0.3,
                "model.block_dropout": 0.15,
                "train.epochs": 40,
                # twice the steps per epoch for no more time: on the whole val split (benchmarks/
                # recipe_val_probe.py, seeds 42 and 1) 0.493 / 0.500 val accuracy against 0.480 / 0.498 at 128
                "train.batch_size": 64,
                "train.optimizer": "adamw",
                "train.learning_rate": 0.002,
                "train.weight_decay": 0.0005,
                "train.schedule": "cosine",
                "train.warmup_epochs": 1,
                "train.early_stopping_patience": 40,
                # At most 8.5 minutes of training, so the whole DAG stays near ten on a slower machine: the 40
                # epochs fit in it on a fast one (the same model as without a budget), fewer on a slow one,
                # with the cosine planned over those that fit.
                "train.time_budget_minutes": 8.5,
                # the last epoch's weights, where the cosine schedule ends, not the lowest val loss's. On the
                # whole val split (recipe_val_probe.py, 2026-12-02) two seeds tie: seed 42 last 0.507 / 0.519
                # with the mirror against 0.500 / 0.503 (lowest val loss at epoch 22 of 40), seed 1 0.497 / 0.506
                # against 0.509 / 0.517 (epoch 30). The tie goes to the rule with no choice in it: the DAG would
                # pick the epoch on its own 358 val faces, a noisier choice than the whole val split's.
                "train.restore_best_weights": False,
                "train.label_smoothing": 0.1,
                "train.precision": "auto",
                # K folds of 40 epochs would double the ten minutes: `-S cv.enabled=true` when there is time
                "cv.enabled": False,
                "evaluate.tta.flip": True,
                "evaluate.tta.crops": 4,
            },
        ),
        Recipe(
            "cpu-full",
            "all of Training on 2 CPU cores: training in at most 30 minutes",
            {
                # Chosen on val of the shared full file (all 23,649 training faces): with one conv in the
                # 48x48 stage, no dropout between blocks and mirror + 10 % shifts only, this VGG reached 0.637
                # val accuracy (0.651 with the mirror averaged in) in 24 epochs, against 0.617 with two convs,
                # block dropout and rotation + zoom (16 epochs), and 0.599 for the old simple_cnn recipe. The
                # model underfits at this budget, so regularisation costs more than it gives. Behind the 40x40
                # crop below it ends 40 epochs at train accuracy 0.80 against val 0.64, yet rotation 10, zoom
                # 0.1 and erasing 0.25 still lost on the whole val split (seed 42, 2026-12-02): 0.6439, and
                # 0.6544 with TTA, against 0.6496 and 0.6641, at train accuracy 0.71; and without the 10 %
                # shifts (the crop's placement the only shift) 0.6419 and 0.6613, at train accuracy 0.85.
                "augment.online.horizontal_flip": True,
                "augment.online.rotation_deg": 0,
                "augment.online.width_shift": 0.1,
                "augment.online.height_shift": 0.1,
                "augment.online.zoom": 0.0,
                "augment.online.erasing": 0.0,
                "subsample.fraction": 1.0,
                "augment.oversample.enabled": False,
                "model.architecture": "vgg",
                "model.width": 32,
                "model.depth": 4,
                "model.first_stage_convs": 1,
                # two convs in each later stage: one (model.stage_convs 1) trains 1.56x as fast, 50 epochs in the
                # budget, yet lost about a point on the whole val split (0.6294 / 0.6533 with TTA, 2026-12-05)
                # 512 units tied on val (0.6428 / 0.6604 with TTA in 30 epochs, 2026-12-05)
                "model.dense_units": 256,
                "model.dropout": 0.3,
                "model.block_dropout": 0.0,
                # The network sees a 40x40 crop of the face, at random in training and the centre at inference
                # (inside the saved model, which still takes 48x48 faces): 0.69x the pixels, so an epoch costs
                # about 40 s instead of 50-55 here, 32-40 epochs fit in the budget instead of 22, and the served
                # model predicts 1.45x as fast (int8 ONNX 5,663-6,410 images/s against 4,292: 2.7-3.2x `fer`'s
                # Keras model, against 2.2x). Its price on the whole val split (2026-12-02, whole recipes, three
                # seeds of the crop against one of the whole face): the served model 0.6496, 0.6300 and 0.6445
                # against 0.6422, with the TTA below 0.6641, 0.6618 and 0.6610 against 0.6706; about 0.8 points
                # with TTA, one standard error. The recipe takes the speed: it is the only network here near 3x
                # `fer`. `-S model.input_crop=0 -S train.epochs=22 -S train.restore_best_weights=true` undoes it.
                "model.input_crop": 40,
                # At most 29 minutes of training, so the 30 hold on any machine: the cosine decay is planned
                # over the epochs that fit, re-planned each epoch (on Sapphire Rapids in bfloat16, 32 of the 40
                # in a run with slow epochs on the shared machine, all 40 in one without).
                "train.epochs": 40,
                "train.time_budget_minutes": 29,
                # The last epoch's weights, where the cosine ends: with label smoothing, val loss turns up
                # while val accuracy still rises (a 28-epoch whole-face run had its lowest val loss at epoch 24
                # and 0.6377 val accuracy there, against 0.6451 at its last), as in `cpu-fast`.
                "train.restore_best_weights": False,
                "train.batch_size": 64,
                "train.optimizer": "adamw",
                "train.learning_rate": 0.002,
                # Keras' AdamW decays by weight_decay x learning rate per step, so this is nearly none; 0.05 tied
                # on val with TTA and lost without (0.6391 / 0.6641 against 0.6496 / 0.6641, seed 42, 2026-12-02)
                "train.weight_decay": 0.0005,
                "train.schedule": "cosine",
                "train.warmup_epochs": 1,
                "train.early_stopping_patience": 40,
                "train.label_smoothing": 0.1,
                "train.precision": "auto",
                # K more trainings of 25 minutes do not fit: `-S cv.enabled=true` when there is time
                "cv.enabled": False,
                "evaluate.tta.flip": True,
                "evaluate.tta.crops": 4,
                # shifts of 1 pixel rather than 3: on the whole val split 0.6706 vs 0.6624 with TTA for the
                # whole-face batch-64 model, 0.6598 vs 0.6556 for the batch-128 one, 0.6641 vs 0.6633 for this
                # 40x40-crop one (cpu-fast's model, trained with zoom and rotation, prefers 0.9: 0.5156 vs 0.5094)
                "evaluate.tta.crop_fraction": 0.95,
            },
        ),
        Recipe(
            "gpu",
            "the strongest single model for one GPU (KERAS_BACKEND=jax), mixed precision, 5-fold ensemble",
            {
                # Chosen on val of the shared full file (2026-12-04, one H200, `benchmarks/gpu_device.py sweep
                # benchmarks/gpu_variants.yaml`: four variants side by side, about 5.6 minutes of training each).
                # The recipe before (literature augmentation, dropout 0.4 and 0.2 between blocks, 100 epochs)
                # underfit: train accuracy 0.75 against val 0.67 on an H100 (2026-11-22). This one trains on
                # random 44x44 crops with the mirror and nothing else, as the FER-2013 VGG results do, and ends
                # at train accuracy 1.000. Val accuracy as served / with flip + 4 shifts, val macro-F1:
                #   this (VGG13-style, 181 epochs)                  0.6581 / 0.6820, F1 0.644 (registered: best)
                #   with 3 convs a later stage (VGG16-style, 103)  0.6596 / 0.6695, F1 0.640
                #   with rotation 10, zoom 0.1, erasing 0.25 (171)  0.6445 / 0.6647, F1 0.601
                #   VGG16-style with that augmentation (100)        0.6382 / 0.6658, F1 0.598
                # A second sweep (benchmarks/gpu_variants_regularise.yaml, 2.2 minutes each, this recipe as the
                # baseline of the same run: 0.6510 / 0.6701) found no gain in weight decay 0.002 (0.6357 /
                # 0.6635) or 0.005 (0.6539 / 0.6695), nor in dropout 0.2 between blocks (0.6490 / 0.6536).
                "augment.online.horizontal_flip": True,
                "augment.online.rotation_deg": 0,
                "augment.online.width_shift": 0.0,
                "augment.online.height_shift": 0.0,
                "augment.online.zoom": 0.0,
                "augment.online.erasing": 0.0,
                "subsample.fraction": 1.0,
                "augment.oversample.enabled": False,
                "model.architecture": "vgg",
                "model.width": 64,
                "model.depth": 4,
                "model.stage_convs": 2,
                "model.input_crop": 44,
                "model.dropout": 0.5,
                "model.block_dropout": 0.0,
                "model.dense_units": 512,
                # what the chosen run trained (its 5.6-minute budget, shared with three others, fitted 181)
                "train.epochs": 180,
                "train.early_stopping_patience": 180,
                # the last epoch's weights, where the cosine ends (train accuracy 1.000 there; val loss turns up
                # long before val accuracy stops rising, as in the CPU recipes)
                "train.restore_best_weights": False,
                "train.batch_size": 128,
                "train.optimizer": "sgd",
                "train.learning_rate": 0.05,
                "train.weight_decay": 0.0005,
                "train.schedule": "cosine",
                "train.warmup_epochs": 3,
                "train.label_smoothing": 0.1,
                "train.precision": "auto",
                "cv.folds": 5,
                "cv.ensemble": True,
                "evaluate.tta.flip": True,
                "evaluate.tta.crops": 4,
                "register.require_gpu": True,
            },
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ParamsError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}") from None


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``key=value`` as ``dvc exp run -S`` takes it, the value read as YAML (``40``, ``true``, ``[a, b]``)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"{assignment!r}: expected key=value, e.g. train.epochs=40")
    return key.strip(), yaml_value(text, assignment) if text.strip() else None


def yaml_value(text: str, where: str) -> Any:
    """A value written on the command line, read as YAML as DVC reads it; ParamsError naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ParamsError(f"-S {where}: {text!r} is not a YAML value ({problem}); write one as DVC reads it, "
                          "e.g. 40, 0.5, true, [1, 2] or text") from None  # fmt: skip


def _set(document: Any, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``train.epochs``) in a nested mapping, creating missing sections."""
    *parents, leaf = dotted.split(".")
    node = document
    for part in parents:
        if part not in node:
            node[part] = {}
        node = node[part]
        if not hasattr(node, "__setitem__"):
            raise ParamsError(f"{dotted}: {part} is not a section of params")
    node[leaf] = value


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with each dotted key set to its value."""
    merged = copy.deepcopy(raw)
    for dotted, value in values.items():
        _set(merged, dotted, value)
    return merged


def resolve(recipe: Recipe, raw: dict[str, Any], overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Params]:
    """The recipe's values (then ``overrides``) over ``raw``, checked: a bad key or value is an error
    before any work starts."""
    values = {**recipe.values, **dict(parse_assignment(item) for item in overrides)}
    return values, parse_params(with_values(raw, values), source=f"params.yaml with recipe {recipe.name}")


def set_arguments(values: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``, each value written as YAML flow text."""
    arguments = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        arguments += ["-S", f"{key}={text}"]
    return arguments


def dvc_command(recipe: Recipe, values: dict[str, Any], queue: bool = False) -> list[str]:
    return ["dvc", "exp", "run", "-n", recipe.name, *(["--queue"] if queue else []), *set_arguments(values)]


def apply_to_file(params_file: Path, values: dict[str, Any]) -> None:
    """Write ``values`` into ``params_file`` in place, keeping its comments and layout (ruamel round trip,
    as ``dvc exp run -S`` does). Written aside and renamed: a failure leaves the file as it was."""
    from ruamel.yaml import YAML

    editor = YAML()
    editor.preserve_quotes = True
    document = editor.load(params_file.read_text(encoding="utf-8"))
    for dotted, value in values.items():
        _set(document, dotted, value)
    staged = params_file.with_name(f".{params_file.name}.recipe")
    with staged.open("w", encoding="utf-8") as handle:
        editor.dump(document, handle)
    staged.replace(params_file)


def recipe_command(action: str, name: str | None, params_file: Path, overrides: Sequence[str] = (),
                   queue: bool = False) -> int:  # fmt: skip
    """``ferflow recipe list|show|apply|run [NAME] [-S key=value ...]``."""
    import shlex
    import subprocess

    if action == "list" or name is None:
        if action != "list":
            raise ParamsError(f"ferflow recipe {action} needs a recipe name: {', '.join(RECIPES)}")
        for recipe in RECIPES.values():
            print(f"{recipe.name:<10} {recipe.summary}")
        return 0
    recipe = get_recipe(name)
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    values, _ = resolve(recipe, raw, overrides)  # any bad value stops here, before DVC or a file is touched
    command = dvc_command(recipe, values, queue=queue)
    if action == "show":
        print(f"# {recipe.name}: {recipe.summary}")
        for key, value in values.items():
            print(f"{key}: {value!r}")
        print(f"\n{shlex.join(command)}")
        return 0
    if action == "apply":
        apply_to_file(params_file, values)
        print(f"recipe {recipe.name}: {len(values)} values written into {params_file}; `dvc repro` runs it")
        return 0
    print(shlex.join(command), flush=True)
    return subprocess.run(command, check=False).returncode

"""Model cards (Markdown) for registered versions, built only from what MLflow logged for the run: params,
tags, metrics and artifacts. Nothing here is a hand-written number."""

from __future__ import annotations

import datetime as dt
from typing import Any

WEAK_F1_GAP = 0.1  # a class this far below the macro-F1 is called out as a weakness


def _load_dict(run_id: str, path: str) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except (MlflowException, OSError, ValueError):
        return None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cv_run(client, experiment_id: str, run) -> Any | None:
    """The latest finished cv run of the same recipe (model and train params) on the same data."""
    data_hash = run.data.tags.get("ferflow.data_hash", "")
    candidates = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`ferflow.stage` = 'cv' and tags.`ferflow.data_hash` = '{data_hash}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    recipe = {k: v for k, v in run.data.params.items() if k.startswith(("model.", "train.", "augment.online."))}
    for candidate in candidates:
        if all(candidate.data.params.get(key) == value for key, value in recipe.items()):
            return candidate
    return None


def _gate_text(version) -> str:
    """The promotion gate's verdict on this version, from the tags the gate wrote on it."""
    tags = version.tags
    if "gate" not in tags:
        return "The gate has not judged this version yet (`ferflow promote` runs it)."
    if "gate.p_value" not in tags:
        return f"{tags['gate'][:1].upper()}{tags['gate'][1:]}."
    outcome = "promoted" if tags.get("gate.promoted") == "true" else "not promoted"
    return (f"Compared with champion version {tags.get('gate.champion_version')} on the same "
            f"{tags.get('gate.faces')} test faces ({tags.get('gate.test')} test on {tags.get('gate.metric')}): "
            f"difference {float(tags['gate.difference']):+.4f}, one-sided p = {float(tags['gate.p_value']):.4f}, "
            f"interval [{float(tags['gate.ci_low']):+.4f}, {float(tags['gate.ci_high']):+.4f}]: {outcome}. "
            f"Details: {tags['gate']}.")  # fmt: skip


def build_model_card(client, name: str, version, run, experiment_id: str) -> str:
    run_id = run.info.run_id
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    class_names = tags.get("ferflow.classes", "").split(",")
    per_class = _load_dict(run_id, "evaluate/per_class.json") or {}
    confusion = _load_dict(run_id, "evaluate/confusion_matrix.json")
    counts = _load_dict(run_id, "data/class_counts.json") or {}
    trained = dt.datetime.fromtimestamp(run.info.start_time / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = params.get("data.source", "?")
    kept = {
        "averaged": f"; saved: the moving average of the weights over about {params.get('train.ema_epochs', '?')}"
                    " epochs, whose validation loss was lower",
        "last_epoch": "; saved: the last epoch's weights",
    }.get(tags.get("ferflow.weights", "best_epoch"), "")  # fmt: skip

    def metric(key: str) -> str:
        return f"{metrics[key]:.4f}" if key in metrics else "n/a"

    out = [
        f"# Model card: {name} version {version.version}",
        "",
        f"{params.get('model.architecture', '?')} trained {trained} on {tags.get('ferflow.device_type', '?')} "
        f"({tags.get('ferflow.device_name', '?')}); chosen on val (macro-F1 {metric('valid_f1_macro')}); "
        f"test accuracy {metric('test_accuracy')}, macro-F1 {metric('test_f1_macro')}. MLflow run `{run_id}`.",
        "",
        "## Intended use",
        "",
        "Reading the facial expression (" + ", ".join(class_names) + ") of a face in a photograph, for "
        "research, teaching, user-experience studies and interfaces that adapt to a consenting user's "
        "expression. Input: one face, cropped to 48x48 grey levels (`ferflow predict` finds and crops faces).",
        "",
        "## Out of scope",
        "",
        "- Identifying or recognising people, or tracking them: the model knows nothing about identity.",
        "- Surveillance, policing, hiring, credit, insurance, education grading or any decision about a person.",
        "- Inferring what someone feels: an expression is not an emotion, and posed or cultural expressions differ.",
        "- Faces far from frontal, very small, or in other modalities (infrared, drawings) than the training data.",
        "",
        "## Training data",
        "",
        f"Source `{source}`, subsample fraction {params.get('subsample.fraction', '?')}, classes "
        f"`{params.get('subsample.classes', '?')}`; data hash `{tags.get('ferflow.data_hash', '?')}`, test split "
        f"hash `{tags.get('ferflow.test_hash', '?')}`.",
    ]
    if source == "synthetic":
        out += ["", "**Synthetic data:** these faces come from ferflow's procedural generator. Scores on them show "
                "that the pipeline learns; they say nothing about performance on real photographs."]  # fmt: skip
    if counts:
        out += ["", _table(["class", *counts], [[c, *(counts[s].get(c, 0) for s in counts)] for c in class_names])]
        out += ["", f"Training images after class balancing: {params.get('data.train_rows', '?')}."]
    copies = {key.rsplit(".", 1)[1]: value for key, value in tags.items() if key.startswith("ferflow.data.copies.")}
    if copies:
        found = ", ".join(f"{pair} {count}" for pair, count in copies.items() if count != "0") or "none"
        out += ["", f"Exact copies found by validation (copy's split - split of the face it copies): {found}. "
                "Train and val copies were removed so that no test face leaks into training or model selection; "
                "test rows were kept as they are. Faces with two labels: "
                f"{tags.get('ferflow.data.label_conflict_faces', '0')}."]  # fmt: skip
    out += [
        "",
        "## How each split was used",
        "",
        f"- **train** ({tags.get('ferflow.data.train_from', 'Usage Training')}): fitting the weights.",
        f"- **val** ({tags.get('ferflow.data.val_from', 'Usage PublicTest')}): choosing the epoch (lowest val "
        "loss) and early stopping, judging test-time augmentation, and ranking the eligible runs for registration "
        f"(`{version.tags.get('ranked_by', 'register.metric')}`).",
        f"- **test** ({tags.get('ferflow.data.test_from', 'Usage PrivateTest')}): reported below, once, and used by "
        "the promotion gate to compare this version with the champion on the same faces. It chose nothing else.",
    ]
    out += [
        "",
        "## Training",
        "",
        _table(
            ["setting", "value"],
            [
                [key, f"`{value}`"]
                for key, value in sorted(params.items())
                if key.startswith(("model.", "train.", "augment.online."))
            ],
        ),  # fmt: skip
        "",
        f"Device: {tags.get('ferflow.device_type', '?')} ({tags.get('ferflow.device_name', '?')}), Keras "
        f"{tags.get('ferflow.keras_version', '?')} on {tags.get('ferflow.keras_backend', '?')}. Training time "
        f"{metrics.get('train_seconds', float('nan')):.0f} s over {metrics.get('epochs_run', float('nan')):.0f} "
        f"epochs (best epoch {metrics.get('best_epoch', float('nan')) + 1:.0f}, lowest validation loss{kept}). "
        f"Git commit `{tags.get('mlflow.source.git.commit', '?')}`.",
        "",
        "## Evaluation",
        "",
        "The model as registered and served (no test-time augmentation):",
        "",
        _table(
            ["metric", "val", "test"],
            [[key, metric(f"valid_{key}"), metric(f"test_{key}")]
             for key in ("accuracy", "f1_macro", "f1_weighted", "auc", "loss")],
        ),  # fmt: skip
        "",
        f"Test-time augmentation ({tags.get('ferflow.evaluate.tta', 'none')}): "
        f"{tags.get('ferflow.evaluate.tta_verdict', 'none configured')}.",
    ]
    if tags.get("ferflow.evaluate.tta_used") == "true":
        out += ["", f"With it: test accuracy {metric('test_tta_accuracy')}, macro-F1 {metric('test_tta_f1_macro')} "
                f"(val accuracy {metric('valid_tta_accuracy')})."]  # fmt: skip
    if per_class:
        out += ["", _table(["class", "precision", "recall", "F1", "support"],
                           [[c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"]]
                            for c, r in per_class.items()])]  # fmt: skip
    if confusion:
        names = confusion["class_names"]
        matrix = [[n, *row] for n, row in zip(names, confusion["counts"], strict=True)]
        out += ["", "Confusion matrix (rows: true class, columns: predicted):", "", _table(["", *names], matrix)]
    out += ["", "## Promotion gate", "", _gate_text(version)]
    out += ["", "## Weaknesses", ""]
    if per_class and "test_f1_macro" in metrics:
        weak = [
            (c, r) for c, r in per_class.items() if r["support"] and r["f1"] < metrics["test_f1_macro"] - WEAK_F1_GAP
        ]
        rare = [(c, r) for c, r in per_class.items() if 0 < r["support"] < 10]
        out += [f"- {c}: F1 {r['f1']:.3f} (recall {r['recall']:.3f}) on {r['support']} test faces, "
                f"more than {WEAK_F1_GAP} below the macro-F1." for c, r in weak]  # fmt: skip
        out += [f"- {c}: only {r['support']} test faces; its scores are uncertain." for c, r in rare]
        missing = [c for c, r in per_class.items() if not r["support"]]
        out += [f"- {c}: absent from the test split; not evaluated." for c in missing]
        if not (weak or rare or missing):
            out.append(f"- No class is more than {WEAK_F1_GAP} below the macro-F1 on this test split.")
    else:
        out.append("- Per-class results were not logged for this run.")
    out += ["", "## Cross-validation", ""]
    cv = _cv_run(client, experiment_id, run)
    if cv is not None:
        cvm = cv.data.metrics
        rows = [[key, f"{cvm[f'cv_{key}_mean']:.4f}", f"{cvm[f'cv_{key}_std']:.4f}"]
                for key in ("accuracy", "f1_macro", "f1_weighted", "loss") if f"cv_{key}_mean" in cvm]  # fmt: skip
        out += [f"{cv.data.params.get('cv.folds', '?')}-fold stratified (x{cv.data.params.get('cv.repeats', '1')}) "
                f"on the training rows, same recipe and data; MLflow run `{cv.info.run_id}`.", "",
                _table(["metric", "mean", "std"], rows)]  # fmt: skip
        if "ensemble_test_accuracy" in cvm:
            out += ["", f"Fold-model ensemble on the test split: accuracy {cvm['ensemble_test_accuracy']:.4f}, "
                    f"macro-F1 {cvm.get('ensemble_test_f1_macro', float('nan')):.4f}."]  # fmt: skip
    else:
        out.append("No cross-validation run of this recipe on this data was found.")
    out += [
        "",
        "## Limitations",
        "",
        "- 48x48 grey input: fine detail and colour are lost; expressions that differ subtly (fear/surprise, "
        "anger/disgust) are confused most.",
        "- FER-2013-style data is web-scraped, mostly frontal, with label noise (human agreement is about 65 %) "
        "and an uneven mix of ages, skin tones and genders; performance across groups was not measured.",
        "- The face detector used at inference (OpenCV Haar cascade) misses profile, rotated and small faces.",
        "",
        "## Provenance",
        "",
        f"Registered model `{name}`, version {version.version}, from run `{run_id}` (model "
        f"`{tags.get('ferflow.model_uri', '?')}`).",
    ]
    return "\n".join(out) + "\n"

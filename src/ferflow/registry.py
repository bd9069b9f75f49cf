"""The MLflow Model Registry side of the lifecycle: eligible runs, registration, the promotion gate, rollback.

Versions are promoted by alias: ``challenger`` points at the best eligible run's version (ranked on val),
``champion`` at the version in use. The gate predicts the same test faces with both and promotes only a
challenger that is better by the margin and significantly so by a paired test
(:mod:`ferflow.models.comparison`); the test's figures are recorded on the challenger version (``gate.*``).

The registered model's tag ``ferflow.champion_history`` lists earlier champions (newest
last), which is what ``rollback`` walks back through. Promotion changes one alias and reads it back; the
history tag is written first, so an interruption at any point leaves ``champion`` on a valid version.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ferflow.errors import FerflowError

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "ferflow.champion_history"
LOWER_IS_BETTER = {"valid_loss", "test_loss"}


class RegistryError(FerflowError):
    """The registry cannot do what was asked (no eligible run, no challenger, nothing to roll back to)."""


def eligible_runs(client, experiment_id: str, data_hash: str, classes: str, test_hash: str,
                  require_gpu: bool) -> list[Any]:  # fmt: skip
    """Finished, evaluated training runs on the same data, class set and test split (GPU-trained only with
    ``require_gpu``)."""
    filters = [
        "attributes.status = 'FINISHED'",
        "tags.`ferflow.stage` = 'train'",
        "tags.`ferflow.evaluated` = 'true'",
        f"tags.`ferflow.data_hash` = '{data_hash}'",
        f"tags.`ferflow.test_hash` = '{test_hash}'",
    ]
    if require_gpu:
        filters.append("tags.`ferflow.device_type` = 'GPU'")
    runs = client.search_runs([experiment_id], filter_string=" and ".join(filters), max_results=5000)
    return [run for run in runs if run.data.tags.get("ferflow.classes") == classes]


def best_run(runs: Iterable[Any], metric: str) -> Any:
    """The run with the best ``metric``; ties go to the earlier run (the champion-in-waiting keeps its place)."""
    scored = [run for run in runs if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])]
    if not scored:
        raise RegistryError(f"no eligible run has the metric {metric!r}")
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(scored, key=lambda run: (sign * run.data.metrics[metric], run.info.start_time))


def version_for_run(client, name: str, run_id: str) -> Any | None:
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return version
    return None


def register_run(client, name: str, run, metric_names: Iterable[str]) -> tuple[Any, bool]:
    """(version, created): the run's existing version of ``name``, or a new one with tags recording where it
    came from."""
    import mlflow

    existing = version_for_run(client, name, run.info.run_id)
    if existing is not None:
        # The run may have been evaluated again since (say with test-time augmentation): the gate reads these.
        for metric in metric_names:
            if metric in run.data.metrics:
                client.set_model_version_tag(name, existing.version, metric, f"{run.data.metrics[metric]:.6g}")
        return client.get_model_version(name, existing.version), False
    tags = run.data.tags
    model_uri = tags.get("ferflow.model_uri")
    if not model_uri:
        raise RegistryError(f"run {run.info.run_id} has no logged model (tag ferflow.model_uri)")
    version_tags = {
        "run_id": run.info.run_id,
        "data_hash": tags.get("ferflow.data_hash", ""),
        "test_hash": tags.get("ferflow.test_hash", ""),
        "classes": tags.get("ferflow.classes", ""),
        "architecture": tags.get("ferflow.architecture", ""),
        "keras_backend": tags.get("ferflow.keras_backend", ""),
        "device_type": tags.get("ferflow.device_type", ""),
        "device_name": tags.get("ferflow.device_name", ""),
        "git_commit": tags.get("mlflow.source.git.commit", ""),
        **{name_: f"{run.data.metrics[name_]:.6g}" for name_ in metric_names if name_ in run.data.metrics},
    }
    if not _registered_model_exists(client, name):
        client.create_registered_model(name, description="Facial expression recognition (ferflow)")
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    return client.get_model_version(name, version.version), True


def _registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def alias_version(client, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    text = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [item for item in text.split(",") if item]


@dataclass
class Decision:
    """What the promotion gate decided, and why, in words a person reads in a log."""

    promoted: bool
    reason: str
    champion: str | None  # version after the decision
    previous: str | None = None  # version before the decision
    metrics: dict[str, float] = field(default_factory=dict)


def _metric(version, metric: str) -> float | None:
    value = version.tags.get(metric)
    return float(value) if value not in (None, "") else None


GATE_TAGS = ("gate.champion_version", "gate.test", "gate.metric", "gate.difference", "gate.p_value", "gate.ci_low",
             "gate.ci_high", "gate.faces", "gate.promoted")  # fmt: skip


def promote(client, name: str, gate, predict: Callable[[Any], Any] | None = None, labels=None,
            faces_hash: str | None = None, on_step: Callable[[str], None] | None = None) -> Decision:  # fmt: skip
    """Move ``champion`` to the ``challenger`` version if there is no champion, or if on the same test faces
    (``labels``; ``predict(version)`` gives a version's predicted labels there) the challenger beats the
    champion by ``gate.margin`` in ``gate.metric`` and the paired ``gate.test`` finds it significant at
    ``gate.alpha``. Otherwise nothing changes. The faces must be the challenger's own test split
    (``faces_hash`` equal to its ``test_hash``): on any other faces it may have trained on some of them. The
    comparison is recorded on the challenger version (``gate`` and ``gate.*`` tags).
    """
    from ferflow.models.comparison import compare

    step = on_step or (lambda _name: None)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"registered model {name!r} has no {CHALLENGER!r} alias; run the register stage first")
    champion = alias_version(client, name, CHAMPION)
    kept = str(champion.version) if champion is not None else None
    if kept == str(challenger.version):
        if challenger.tags.get("gate") and challenger.tags.get("gate.promoted") == "false":
            # A promotion stopped after the alias moved and before it was recorded: record it now.
            client.set_model_version_tag(name, challenger.version, "gate.promoted", "true")
            history = _history(client, name)
            return Decision(True, f"finished promoting version {kept}: it was stopped after champion moved to it",
                            kept, history[-1] if history else None)  # fmt: skip
        return Decision(False, f"version {kept} is already the champion", kept, kept)
    scores: dict[str, float] = {}
    tags: dict[str, str] = dict.fromkeys(GATE_TAGS, "")
    if champion is not None:
        if champion.tags.get("classes") != challenger.tags.get("classes"):
            return Decision(False, f"champion version {kept} reads other classes ({champion.tags.get('classes')}) "
                            f"than challenger version {challenger.version} ({challenger.tags.get('classes')}); "
                            "they are not comparable; champion kept", kept, kept)  # fmt: skip
        if predict is None or labels is None:
            return Decision(False, f"no test faces to compare champion version {kept} and challenger version "
                            f"{challenger.version} on (pass the clean arrays); champion kept", kept, kept)  # fmt: skip
        if faces_hash is not None and faces_hash != challenger.tags.get("test_hash"):
            return Decision(False, f"the test faces given (hash {faces_hash}) are not challenger version "
                            f"{challenger.version}'s test split ({challenger.tags.get('test_hash')}): it may "
                            "have trained on some of them; rerun the pipeline on its data; champion kept",
                            kept, kept)  # fmt: skip
        try:
            champion_answers = predict(champion)
        except Exception as exc:  # a champion that cannot be loaded or scored must not crash registration
            return Decision(False, f"champion version {kept} could not be scored on the test faces "
                            f"({type(exc).__name__}: {exc}); champion kept", kept, kept)  # fmt: skip
        n_classes = len(challenger.tags.get("classes", "").split(","))
        result = compare(labels, champion_answers, predict(challenger), test=gate.test, metric=gate.metric,
                         n_classes=n_classes, alpha=gate.alpha, bootstrap_samples=gate.bootstrap_samples,
                         seed=gate.seed)  # fmt: skip
        scores = {key: value for key, value in result.as_dict().items() if isinstance(value, float)}
        wins = result.difference >= gate.margin and result.p_value < gate.alpha
        verdict = (f"{gate.metric} {result.candidate:.4f} vs champion version {kept}'s {result.reference:.4f} on the "
                   f"same {result.faces} test faces: difference {result.difference:+.4f} (margin {gate.margin}), "
                   f"{result.statistic}, one-sided p = {result.p_value:.4f} (alpha {gate.alpha}), "
                   f"{1 - gate.alpha:.0%} interval [{result.ci_low:+.4f}, {result.ci_high:+.4f}]")  # fmt: skip
        tags.update({"gate": verdict, "gate.champion_version": kept, "gate.test": result.test,
                     "gate.metric": result.metric, "gate.difference": f"{result.difference:.6g}",
                     "gate.p_value": f"{result.p_value:.6g}", "gate.ci_low": f"{result.ci_low:.6g}",
                     "gate.ci_high": f"{result.ci_high:.6g}", "gate.faces": str(result.faces),
                     "gate.promoted": "false"})  # fmt: skip
        if not wins:
            _tag_version(client, name, challenger.version, tags)
            why = "not better by the margin" if result.difference < gate.margin else "not significant"
            return Decision(False, f"challenger version {challenger.version} kept out ({why}): {verdict}; "
                            "champion kept", kept, kept, scores)  # fmt: skip
        reason_detail = f": {verdict}"
    else:
        tags.update({"gate": "promoted: there was no champion", "gate.promoted": "false"})
        reason_detail = " (there was no champion)"
    _tag_version(client, name, challenger.version, tags)  # "promoted" is written only once it is true

    previous = kept
    if previous is not None:
        # Remember the outgoing champion first: if we stop right after, champion is unchanged and valid.
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*_history(client, name), previous]))
    step("history")
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    step("alias")
    _verify_alias(client, name, CHAMPION, challenger.version, restore=previous)
    client.set_model_version_tag(name, challenger.version, "gate.promoted", "true")
    reason = (f"challenger version {challenger.version} promoted to champion"
              + (f" over version {previous}" if previous else "") + reason_detail)  # fmt: skip
    return Decision(True, reason, str(challenger.version), previous, scores)


def _tag_version(client, name: str, version: str, tags: dict[str, str]) -> None:
    """Write the gate's tags; an empty value removes a tag left by an earlier comparison of this version."""
    from mlflow.exceptions import MlflowException

    for key, value in tags.items():
        if value:
            client.set_model_version_tag(name, version, key, value)
            continue
        with contextlib.suppress(MlflowException):  # it was not there
            client.delete_model_version_tag(name, version, key)


def rollback(client, name: str) -> Decision:
    """Point ``champion`` back at the previous champion (walking back one step per call)."""
    history = _history(client, name)
    current = alias_version(client, name, CHAMPION)
    while history and current is not None and history[-1] == str(current.version):
        history.pop()  # left by a promotion interrupted before it moved the alias
    if not history:
        raise RegistryError(f"registered model {name!r} has no earlier champion to roll back to")
    target = history[-1]
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise RegistryError(f"cannot roll {name!r} back to version {target}, the previous champion: that version "
                            "no longer exists (deleted); the champion is unchanged. Promote a version by hand "
                            "(`ferflow promote`)") from None
    client.set_registered_model_alias(name, CHAMPION, target)
    _verify_alias(client, name, CHAMPION, target, restore=str(current.version) if current else None)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))
    was = str(current.version) if current else None
    return Decision(True, f"champion rolled back from version {was} to version {target}", target, was)


def _verify_alias(client, name: str, alias: str, expected: str, restore: str | None) -> None:
    found = alias_version(client, name, alias)
    if found is None or str(found.version) != str(expected):
        if restore is not None:
            client.set_registered_model_alias(name, alias, restore)
        raise RegistryError(f"alias {alias!r} of {name!r} reads back as "
                            f"{found.version if found else None}, not {expected}; restored {restore}")  # fmt: skip


def versions_table(client, name: str, metrics: Iterable[str]) -> list[dict[str, Any]]:
    """One row per version, newest first, with its aliases and key metrics."""
    metric_names = list(metrics)
    if not _registered_model_exists(client, name):
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in client.search_model_versions(f"name = '{name}'"):
        rows.append({
            "version": int(version.version),
            "aliases": sorted(aliases.get(str(version.version), [])),
            "run_id": version.run_id,
            "architecture": version.tags.get("architecture", ""),
            "device": version.tags.get("device_type", ""),
            **{metric: _metric(version, metric) for metric in metric_names},
            "created": version.creation_timestamp,
        })  # fmt: skip
    return sorted(rows, key=lambda row: -row["version"])

"""The MLflow Model Registry side of the lifecycle: eligible runs, registration, the promotion gate, rollback.

Versions are promoted by alias: ``challenger`` points at the best eligible run's version, ``champion`` at the
version in use. The registered model's tag ``ferflow.champion_history`` lists earlier champions (newest
last), which is what ``rollback`` walks back through. Promotion changes one alias and reads it back; the
history tag is written first, so an interruption at any point leaves ``champion`` on a valid version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ferflow.errors import FerflowError

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "ferflow.champion_history"
LOWER_IS_BETTER = {"test_loss"}


class RegistryError(FerflowError):
    """The registry cannot do what was asked (no eligible run, no challenger, nothing to roll back to)."""


def better(metric: str, candidate: float, reference: float, margin: float = 0.0) -> bool:
    """``candidate`` beats ``reference`` by at least ``margin`` in the metric's direction."""
    if metric in LOWER_IS_BETTER:
        return candidate <= reference - margin
    return candidate >= reference + margin


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
        "device_type": tags.get("ferflow.device_type", ""),
        "device_name": tags.get("ferflow.device_name", ""),
        "git_commit": tags.get("ferflow.git_commit", ""),
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


def promote(client, name: str, metric: str, margin: float,
            rescore: Callable[[Any], float] | None = None,
            on_step: Callable[[str], None] | None = None) -> Decision:  # fmt: skip
    """Move ``champion`` to the ``challenger`` version if it beats the champion by ``margin`` on the same test
    data, or if there is no champion. Otherwise nothing changes.

    Versions judged on different test splits are not comparable by their logged metrics: then ``rescore``
    (a function scoring a version on the challenger's test split) is used for the champion, and without
    it the gate refuses.
    """
    step = on_step or (lambda _name: None)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"registered model {name!r} has no {CHALLENGER!r} alias; run the register stage first")
    champion = alias_version(client, name, CHAMPION)
    challenger_score = _metric(challenger, metric)
    if challenger_score is None:
        raise RegistryError(f"challenger version {challenger.version} has no {metric} tag")
    kept = str(champion.version) if champion is not None else None
    if kept == str(challenger.version):
        return Decision(False, f"version {kept} is already the champion", kept, kept, {metric: challenger_score})
    if champion is not None:
        if champion.tags.get("classes") != challenger.tags.get("classes"):
            return Decision(False, f"champion version {kept} reads other classes ({champion.tags.get('classes')}) "
                            f"than challenger version {challenger.version} ({challenger.tags.get('classes')}); "
                            "they are not comparable; champion kept", kept, kept)  # fmt: skip
        same_test = champion.tags.get("test_hash") == challenger.tags.get("test_hash")
        champion_score = _metric(champion, metric) if same_test else None
        if champion_score is None and rescore is not None:
            champion_score = rescore(champion)
        if champion_score is None:
            return Decision(False, f"champion version {kept} has no {metric} on the challenger's test split; "
                            "rerun the pipeline so the gate can score it there; champion kept", kept, kept)  # fmt: skip
        scores = {f"challenger_{metric}": challenger_score, f"champion_{metric}": champion_score}
        if not better(metric, challenger_score, champion_score, margin):
            return Decision(False, f"challenger version {challenger.version} ({metric} {challenger_score:.4f}) does "
                            f"not beat champion version {kept} ({champion_score:.4f}) by the margin "
                            f"{margin}; champion kept", kept, kept, scores)  # fmt: skip
    else:
        scores = {f"challenger_{metric}": challenger_score}

    previous = kept
    if previous is not None:
        # Remember the outgoing champion first: if we stop right after, champion is unchanged and valid.
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*_history(client, name), previous]))
    step("history")
    client.set_registered_model_alias(name, CHAMPION, challenger.version)
    step("alias")
    _verify_alias(client, name, CHAMPION, challenger.version, restore=previous)
    reason = (f"challenger version {challenger.version} promoted to champion"
              + (f" over version {previous}" if previous else " (there was no champion)"))  # fmt: skip
    return Decision(True, reason, str(challenger.version), previous, scores)


def rollback(client, name: str) -> Decision:
    """Point ``champion`` back at the previous champion (walking back one step per call)."""
    history = _history(client, name)
    current = alias_version(client, name, CHAMPION)
    while history and current is not None and history[-1] == str(current.version):
        history.pop()  # left by a promotion interrupted before it moved the alias
    if not history:
        raise RegistryError(f"registered model {name!r} has no earlier champion to roll back to")
    target = history[-1]
    client.get_model_version(name, target)  # raises if that version was deleted
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

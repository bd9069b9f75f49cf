"""Stage ``register``: register the best eligible run in the MLflow Model Registry, write its model card,
point ``challenger`` at it and (with ``register.auto_promote``) apply the promotion gate.

Eligible runs are this experiment's finished, evaluated training runs on the same data (data hash), class
set and test split as the run the pipeline just trained, and GPU-trained ones only with
``register.require_gpu``. They are ranked by ``register.metric``, a val metric of the model as served (no
test-time augmentation): the test split chooses nothing. A run that is already registered keeps its version.
The gate then compares the challenger with the champion on the same test faces (``register.gate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ferflow import paths, registry, tracking
from ferflow.io import atomic_open, exclusive_lock, write_json
from ferflow.model_card import build_model_card
from ferflow.params import Params
from ferflow.run_info import RunInfo

METRICS = (
    "valid_accuracy", "valid_f1_macro", "valid_f1_weighted", "valid_auc", "valid_loss",
    "test_accuracy", "test_f1_macro", "test_f1_weighted", "test_auc", "test_loss",
)  # fmt: skip


def test_faces(name: str, clean_arrays: Path):
    """(predict, labels, faces_hash): ``predict(version)`` gives a registered version's predicted labels on the
    test split of ``clean_arrays``, as served (no test-time augmentation), so that the gate compares two
    versions on the very same faces; ``faces_hash`` identifies that split (the runs' ``test_hash``)."""
    from ferflow.io import CLEAN_KEYS, array_digest, read_npz

    clean = read_npz(clean_arrays, CLEAN_KEYS)
    is_test = clean["splits"] == "test"
    images = clean["images"][is_test]

    def predict(version) -> np.ndarray:
        from ferflow.models.serving import load_logged_model
        from ferflow.models.training import predict_proba

        model = load_logged_model(f"models:/{name}/{version.version}")
        return predict_proba(model, images).argmax(axis=1)

    return predict, clean["labels"][is_test], array_digest(images, clean["labels"][is_test])


def run(
    params: Params, run_info: Path, clean_arrays: Path, registration_out: Path, card_out: Path, repo_root: Path
) -> dict[str, Any]:
    facts = RunInfo.read(run_info)
    # Parallel experiments (`dvc queue start -j N`) reach this stage at about the same time: each ranks the
    # runs, registers and moves aliases, so they take turns, and the later one ranks the earlier one's run too.
    with exclusive_lock(repo_root / paths.REGISTRY_LOCK), tracking.store(repo_root) as client:
        return _register(params, facts, client, clean_arrays, registration_out, card_out)  # the gate loads models:/


def _register(
    params: Params, facts: RunInfo, client, clean_arrays: Path, registration_out: Path, card_out: Path
) -> dict[str, Any]:
    settings = params.registry
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        raise registry.RegistryError(f"MLflow experiment {params.mlflow.experiment!r} does not exist; run train first")
    runs = registry.eligible_runs(client, experiment.experiment_id, facts.data_hash, facts.classes,
                                  facts.test_hash, settings.require_gpu)  # fmt: skip
    if not runs:
        why = " trained on a GPU (register.require_gpu is true)" if settings.require_gpu else ""
        raise registry.RegistryError(
            f"no finished, evaluated run{why} on data {facts.data_hash} with classes {facts.classes} in "
            f"experiment {params.mlflow.experiment!r}; this pipeline's run {facts.run_id} was trained on "
            f"{facts.device_type}"
        )
    best = registry.best_run(runs, settings.metric)
    # The test split is read before the registry changes: a missing or broken file then changes nothing.
    predict, labels, faces_hash = test_faces(settings.model_name, clean_arrays)
    version, created = registry.register_run(client, settings.model_name, best, METRICS)
    client.set_model_version_tag(settings.model_name, version.version, "ranked_by", settings.metric)
    client.set_registered_model_alias(settings.model_name, registry.CHALLENGER, version.version)

    decision = None
    if settings.auto_promote:
        decision = registry.promote(client, settings.model_name, settings.gate, predict, labels, faces_hash)
    write_model_card(client, settings.model_name, version.version, best, experiment.experiment_id, card_out)
    champion = registry.alias_version(client, settings.model_name, registry.CHAMPION)
    summary = {
        "model_name": settings.model_name,
        "challenger_version": int(version.version),
        "registered_new_version": created,
        "run_id": best.info.run_id,
        "eligible_runs": len(runs),
        "metric": settings.metric,
        "value": best.data.metrics[settings.metric],
        "champion_version": int(champion.version) if champion else None,
        "promoted": bool(decision and decision.promoted),
        "gate": decision.reason if decision else "auto_promote is false: run `ferflow promote`",
    }
    write_json(registration_out, summary)
    state = "registered new" if created else "kept"
    print(f"register: {state} version {version.version} of {settings.model_name} (run {best.info.run_id}, "
          f"{settings.metric} {summary['value']:.4f}, best of {len(runs)} eligible runs) as {registry.CHALLENGER}; "
          f"{summary['gate']}")  # fmt: skip
    return summary


DESCRIPTION_LIMIT = 5000  # characters: MLflow's model_versions.description column


def version_description(card: str, run_id: str) -> str:
    """The whole model card as the version's description, or, if MLflow cannot hold it, its first sections
    up to the limit and where the whole card is."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    pointer = f"\n\n(The whole card is the `model_card.md` artifact of run {run_id}.)"
    sections, kept = card.split("\n## "), ""
    for number, section in enumerate(sections):
        candidate = section if number == 0 else f"{kept}\n## {section}"
        if len(candidate) + len(pointer) > DESCRIPTION_LIMIT:
            break
        kept = candidate
    return (kept or card[: DESCRIPTION_LIMIT - len(pointer)]) + pointer


def write_model_card(client, name: str, version_number: str, run, experiment_id: str, card_out: Path | None) -> str:
    """Build the version's model card from what MLflow holds (the gate's verdict included), log it with the run,
    use its head as the version's description and write it to ``card_out``."""
    version = client.get_model_version(name, version_number)
    card = build_model_card(client, name, version, run, experiment_id)
    client.log_text(run.info.run_id, card, "model_card.md")
    client.update_model_version(name, version.version, description=version_description(card, run.info.run_id))
    if card_out is not None:
        with atomic_open(card_out) as handle:
            handle.write(card)
    return card

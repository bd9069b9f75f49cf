"""Stage ``register``: register the best eligible run in the MLflow Model Registry, write its model card,
point ``challenger`` at it and (with ``register.auto_promote``) apply the promotion gate.

Eligible runs are this experiment's finished, evaluated training runs on the same data (data hash), class
set and test split as the run the pipeline just trained, and GPU-trained ones only with
``register.require_gpu``. A run that is already registered keeps its version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferflow import registry, tracking
from ferflow.errors import DataError
from ferflow.io import atomic_open, read_json, write_json
from ferflow.model_card import build_model_card
from ferflow.params import Params, TtaParams

METRICS = ("test_accuracy", "test_f1_macro", "test_f1_weighted", "test_auc", "test_loss")


def champion_rescorer(name: str, clean_arrays: Path, metric: str, tta: TtaParams):
    """Scores a registered version on the test split of ``clean_arrays`` (the challenger's test data), with
    the same test-time augmentation the challenger was evaluated with."""

    def rescore(version) -> float:
        import mlflow

        from ferflow.io import read_npz
        from ferflow.models.evaluation import classification_metrics, predict_with_tta

        clean = read_npz(clean_arrays)
        is_test = clean["splits"] == "test"
        model = mlflow.keras.load_model(f"models:/{name}/{version.version}")
        proba = predict_with_tta(model, clean["images"][is_test], tta.flip, tta.crops, tta.crop_fraction)
        scores = classification_metrics(clean["labels"][is_test], proba, [str(c) for c in clean["class_names"]])
        return float(scores[metric.removeprefix("test_")])

    return rescore


def run(
    params: Params, run_info: Path, clean_arrays: Path, registration_out: Path, card_out: Path, repo_root: Path
) -> dict[str, Any]:
    import mlflow

    settings = params.registry
    facts = read_json(run_info)
    for key in ("data_hash", "test_hash", "classes"):
        if key not in facts:
            raise DataError(f"{run_info}: no {key!r}; rerun the train stage")
    mlflow.set_tracking_uri(tracking.tracking_uri(repo_root))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        raise registry.RegistryError(f"MLflow experiment {params.mlflow.experiment!r} does not exist; run train first")
    runs = registry.eligible_runs(client, experiment.experiment_id, facts["data_hash"], facts["classes"],
                                  facts["test_hash"], settings.require_gpu)  # fmt: skip
    if not runs:
        why = " trained on a GPU (register.require_gpu is true)" if settings.require_gpu else ""
        raise registry.RegistryError(
            f"no finished, evaluated run{why} on data {facts['data_hash']} with classes {facts['classes']} in "
            f"experiment {params.mlflow.experiment!r}; this pipeline's run {facts['run_id']} was trained on "
            f"{facts.get('device_type', '?')}"
        )
    best = registry.best_run(runs, settings.metric)
    version, created = registry.register_run(client, settings.model_name, best, METRICS)
    card = build_model_card(client, settings.model_name, version, best, experiment.experiment_id)
    client.log_text(best.info.run_id, card, "model_card.md")
    client.update_model_version(settings.model_name, version.version, description=card.split("\n## ", 1)[0])
    client.set_registered_model_alias(settings.model_name, registry.CHALLENGER, version.version)

    decision = None
    if settings.auto_promote:
        decision = registry.promote(
            client, settings.model_name, settings.metric, settings.promotion_margin,
            rescore=champion_rescorer(settings.model_name, clean_arrays, settings.metric, params.evaluate.tta),
        )  # fmt: skip
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
    with atomic_open(card_out) as handle:
        handle.write(card)
    write_json(registration_out, summary)
    state = "registered new" if created else "kept"
    print(f"register: {state} version {version.version} of {settings.model_name} (run {best.info.run_id}, "
          f"{settings.metric} {summary['value']:.4f}, best of {len(runs)} eligible runs) as {registry.CHALLENGER}; "
          f"{summary['gate']}")  # fmt: skip
    return summary

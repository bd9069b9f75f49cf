"""The evaluation protocol on real FER-2013: what validation removes, and the default recipe's val and test
figures, plain and with test-time augmentation.

Builds a complete three-split FER-2013 file from ``../shared/data/fer2013-train-publictest.csv.gz`` (a
stratified 3,589 of its Training rows relabelled ``PrivateTest``, the size of the real PrivateTest; the copies
FER-2013 has within Training then become natural train-test leaks), copies the pipeline into a temporary
git + DVC repository and runs ``dvc repro`` with every param at its default but ``data.source`` (and those
given with ``--set``). Then it reruns ``evaluate`` with each TTA setting of ``--tta`` and prints one table.
The test split is reported; nothing here is chosen on it.

    .venv/bin/python benchmarks/fer_protocol.py                         # the three-split file
    .venv/bin/python benchmarks/fer_protocol.py --source train-publictest  # the shared file as it is (test carved)
    .venv/bin/python benchmarks/fer_protocol.py --set subsample.fraction=1.0 --keep /tmp/fer-run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from _pipeline import pipeline_copy, run, source_file

from ferflow.recipes import apply_to_file, parse_assignment

TTA_SETTINGS = {
    "flip": {"flip": True, "crops": 0},
    "flip+4shift": {"flip": True, "crops": 4, "crop_mode": "shift"},
    "flip+5zoom": {"flip": True, "crops": 5, "crop_mode": "zoom"},
}


def print_validation(source: str, validate: dict, work: Path) -> None:
    from ferflow.data.quality import reason_kinds

    print(f"\n## Validation ({source}: {validate['rows']} rows after the subsample)\n")
    print(
        f"- malformed or blank: {validate['malformed_rows']}; exact copies: {validate['duplicates']['copies']} "
        f"({validate['duplicates']['copy_fraction']:.2%}); quarantined: {validate['quarantined_rows']}"
    )
    print(
        "- copies by pair (copy's split - face's split): "
        + ", ".join(f"{pair} {count}" for pair, count in validate["duplicates"]["pairs"].items())
    )
    print(f"- label conflicts: {validate['duplicates']['label_conflict_faces']} faces")
    print(f"- splits: {validate['split_sizes']} ({validate['split_provenance']['test']})")
    quarantine = pd.read_csv(work / "data/interim/quarantine.csv", dtype=str, keep_default_na=False)
    kinds = reason_kinds(quarantine["reason"])
    for reason, count in kinds.items():
        print(f"  - {reason}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["three-split", "train-publictest"], default="three-split")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE params override (YAML value)")
    parser.add_argument("--tta", nargs="*", default=list(TTA_SETTINGS), choices=list(TTA_SETTINGS))
    parser.add_argument("--validate-only", action="store_true", help="stop after the validate stage")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="fer-protocol-"))
    work.mkdir(parents=True, exist_ok=True)
    values = {"data.source": str(source_file(args.source, work)), **dict(map(parse_assignment, args.set))}
    pipeline_copy(work, values)

    print(f"dvc repro in {work} ({args.source}, overrides {args.set or 'none'})", file=sys.stderr)
    run(["dvc", "repro", *(["validate"] if args.validate_only else [])], work)
    print_validation(args.source, json.loads((work / "reports/validate/metrics.json").read_text()), work)
    if args.validate_only:
        return
    evaluations = {"none": json.loads((work / "reports/evaluate/metrics.json").read_text())}
    for name in args.tta:
        apply_to_file(work / "params.yaml", {f"evaluate.tta.{key}": value for key, value in TTA_SETTINGS[name].items()})
        run(["dvc", "repro", "evaluate"], work)
        evaluations[name] = json.loads((work / "reports/evaluate/metrics.json").read_text())
    history = json.loads((work / "reports/train/history.json").read_text())
    cv_file = work / "reports/cv/metrics.json"
    cv = json.loads(cv_file.read_text()) if cv_file.is_file() else {}
    plain = evaluations["none"]
    print(
        f"\n## Default recipe ({len(history)} epochs, {sum(r['epoch_seconds'] for r in history):.0f} s of training)\n"
    )
    print("| TTA | val acc | val macro-F1 | test acc | test macro-F1 | verdict |")
    print("|---|---|---|---|---|---|")
    print(
        f"| none | {plain['val']['accuracy']:.4f} | {plain['val']['f1_macro']:.4f} | {plain['accuracy']:.4f} | "
        f"{plain['f1_macro']:.4f} | |"
    )
    for name in args.tta:
        tta = evaluations[name]["tta"]
        val, test = tta.get("val", {}), tta.get("test", {})
        val_acc = tta.get("val_accuracy_tta", float("nan"))
        test_acc = f"{test['accuracy']:.4f}" if test else "not scored"
        test_f1 = f"{test['f1_macro']:.4f}" if test else "not scored"
        print(
            f"| {tta['setting']} | {val_acc:.4f} | {val.get('f1_macro', float('nan')):.4f} | {test_acc} | "
            f"{test_f1} | {tta['verdict']} |"
        )
    if cv:
        print(
            f"\ncv: accuracy {cv['mean']['accuracy']:.4f} ± {cv['std']['accuracy']:.4f}, macro-F1 "
            f"{cv['mean']['f1_macro']:.4f} ± {cv['std']['f1_macro']:.4f}"
            + (
                f"; fold ensemble on test: accuracy {cv['ensemble_test']['accuracy']:.4f}"
                if "ensemble_test" in cv
                else ""
            )
        )
    registration = json.loads((work / "reports/register/registration.json").read_text())
    print(f"register: {registration['gate']}")


if __name__ == "__main__":
    main()

"""The ``ferflow`` command: one sub-command per pipeline stage. It parses arguments, loads the params
once, and calls the stage's ``run``; errors meant for people are printed without a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ferflow import __version__, paths
from ferflow.errors import FerflowError, Terminated
from ferflow.params import Params, load_params


def _download(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import download

    download.run(params.data, args.out, args.manifest, args.cache_dir, progress=not args.no_progress)


def _subsample(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import subsample

    subsample.run(params.subsample, args.raw, args.out, args.summary)


def _validate(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import validate

    validate.run(
        params.validation, args.table, args.subsample_summary, args.out, args.quarantine, args.report,
        args.summary, args.metrics,
    )  # fmt: skip


def _augment(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import augment

    augment.run(params.augment, args.clean, args.out, args.summary, args.preview, args.class_counts)


def _train(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import train

    train.run(
        params, args.train_arrays, args.clean, args.model, args.history, args.run_info, args.curves,
        args.checkpoints, args.repo_root,
    )  # fmt: skip


def _evaluate(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import evaluate

    evaluate.run(
        params.evaluate, args.model, args.clean, args.run_info, args.metrics, args.confusion_records,
        args.confusion, args.report, args.plots, args.repo_root,
    )  # fmt: skip


def _cv(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import cv

    cv.run(params, args.train_arrays, args.clean, args.metrics, args.repo_root)


def _register(args: argparse.Namespace, params: Params) -> None:
    from ferflow.stages import register

    register.run(params, args.run_info, args.clean, args.out, args.card, args.repo_root)


def _promote(args: argparse.Namespace, params: Params) -> int:
    from ferflow.lifecycle import promote_command

    return promote_command(params, args.repo_root, rollback=args.rollback, clean_arrays=args.clean)


def _models(args: argparse.Namespace, params: Params) -> None:
    from ferflow.lifecycle import models_command

    models_command(params, args.repo_root, as_json=args.json)


def _retrain(args: argparse.Namespace, params: Params) -> int:
    from ferflow.lifecycle import retrain_command

    return retrain_command(params, args.repo_root, args.params or args.repo_root / "params.yaml")


def _predict(args: argparse.Namespace, params: Params) -> int:
    from ferflow.inference import predict_command

    return predict_command(params, args.repo_root, args)


def _export(args: argparse.Namespace, params: Params) -> int:
    from ferflow.export import export_command

    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    return export_command(args.model, params.registry.model_name, args.out, formats, args.repo_root,
                          args.calibration)  # fmt: skip


def _recipe(args: argparse.Namespace, params: Params) -> int:
    from ferflow.recipes import recipe_command

    params_file = args.params or args.workspace / "params.yaml"
    return recipe_command(args.action, args.name, params_file, args.set or (), queue=args.queue)


def _sweep(args: argparse.Namespace, params: Params) -> int:
    from ferflow.sweep import sweep_command

    params_file = args.params or args.workspace / "params.yaml"
    return sweep_command(params_file, args.workspace, args.set or (), args.jobs, args.recipe, wait=not args.no_wait)


def _server(args: argparse.Namespace, params: Params) -> int:
    from ferflow.server import server_command

    return server_command(args.action, args.root, args.port, args.pg_port, args.workers)


def build_parser(root: Path | None = None) -> argparse.ArgumentParser:
    """The command line. Default paths and params.yaml are the workspace's (``root``, found from the current
    folder), so the commands work from any folder inside it; paths given on the command line are taken as the
    user wrote them. ``repo_root`` owns the MLflow store: the workspace, or for a DVC experiment's copy under
    ``.dvc/tmp/exps`` the project that queued it (:func:`ferflow.paths.find_repo_root`)."""
    root = root or paths.find_workspace_root()

    def _add_paths(parser: argparse.ArgumentParser, options: dict[str, tuple[Path, str]]) -> None:
        for flag, (default, help_text) in options.items():
            parser.add_argument(flag, type=Path, default=root / default, help=f"{help_text} (default: {default})")

    parser = argparse.ArgumentParser(
        prog="ferflow",
        description="Facial expression recognition pipeline; `dvc repro` runs the stages in order.",
    )
    parser.add_argument("--version", action="version", version=f"ferflow {__version__}")
    parser.add_argument("--params", type=Path, default=None,
                        help="params file (default: params.yaml at the repository's root)")  # fmt: skip
    parser.set_defaults(workspace=root, repo_root=paths.find_repo_root(root))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stage: Callable[..., argparse.ArgumentParser] = commands.add_parser
    download = stage("download", help="acquire the raw data (synthetic, file, archive, image folders, URL, Kaggle)")
    _add_paths(download, {
        "--out": (paths.RAW_TABLE, "canonical FER table to write"),
        "--manifest": (paths.RAW_MANIFEST, "manifest JSON to write"),
        "--cache-dir": (paths.DOWNLOAD_CACHE, "where downloads are kept between runs"),
    })  # fmt: skip
    download.add_argument("--no-progress", action="store_true", help="no progress bars")
    download.set_defaults(handler=_download)

    subsample = stage("subsample", help="stratified fraction of the raw table, optionally on a class subset")
    _add_paths(subsample, {
        "--raw": (paths.RAW_TABLE, "canonical FER table to read"),
        "--out": (paths.SUBSAMPLE_TABLE, "subsample table to write"),
        "--summary": (paths.SUBSAMPLE_SUMMARY, "counts and class names JSON to write"),
    })  # fmt: skip
    subsample.set_defaults(handler=_subsample)

    validate = stage("validate", help="Great Expectations data-quality gate; clean arrays and quarantine")
    _add_paths(validate, {
        "--table": (paths.SUBSAMPLE_TABLE, "subsample table to validate"),
        "--subsample-summary": (paths.SUBSAMPLE_SUMMARY, "subsample summary (class names)"),
        "--out": (paths.CLEAN_ARRAYS, "clean arrays to write"),
        "--quarantine": (paths.QUARANTINE, "quarantined rows with reasons"),
        "--report": (paths.VALIDATION_REPORT, "Great Expectations result JSON"),
        "--summary": (paths.VALIDATION_SUMMARY, "human-readable summary"),
        "--metrics": (paths.VALIDATION_METRICS, "validation metrics JSON"),
    })  # fmt: skip
    validate.set_defaults(handler=_validate)

    augment = stage("augment", help="class balancing by augmented oversampling; preview plots")
    _add_paths(augment, {
        "--clean": (paths.CLEAN_ARRAYS, "clean arrays to read"),
        "--out": (paths.TRAIN_ARRAYS, "training arrays to write"),
        "--summary": (paths.AUGMENT_SUMMARY, "counts JSON to write"),
        "--preview": (paths.AUGMENT_PREVIEW, "preview grid PNG"),
        "--class-counts": (paths.AUGMENT_CLASS_COUNTS, "class-count bars PNG"),
    })  # fmt: skip
    augment.set_defaults(handler=_augment)

    train = stage("train", help="train the model from params, tracked in MLflow; resumes after a kill")
    _add_paths(train, {
        "--train-arrays": (paths.TRAIN_ARRAYS, "training arrays to read"),
        "--clean": (paths.CLEAN_ARRAYS, "clean arrays (validation split) to read"),
        "--model": (paths.MODEL, "trained model to write (.keras)"),
        "--history": (paths.TRAIN_HISTORY, "per-epoch history JSON"),
        "--run-info": (paths.TRAIN_RUN, "MLflow run id and training facts JSON"),
        "--curves": (paths.TRAIN_CURVES, "training curves PNG"),
        "--checkpoints": (paths.TRAIN_CHECKPOINTS, "resumable state while training runs"),
    })  # fmt: skip
    train.set_defaults(handler=_train)

    evaluate = stage("evaluate", help="score the model on the test split; logs into the training's MLflow run")
    _add_paths(evaluate, {
        "--model": (paths.MODEL, "trained model to read"),
        "--clean": (paths.CLEAN_ARRAYS, "clean arrays (test split) to read"),
        "--run-info": (paths.TRAIN_RUN, "the training's run JSON"),
        "--metrics": (paths.EVALUATE_METRICS, "test metrics JSON"),
        "--confusion-records": (paths.EVALUATE_CONFUSION_RECORDS, "records for DVC's confusion template"),
        "--confusion": (paths.EVALUATE_CONFUSION, "confusion matrices JSON"),
        "--report": (paths.EVALUATE_REPORT, "classification report text"),
        "--plots": (paths.EVALUATE_PLOTS, "folder for confusion matrix and sample-face PNGs"),
    })  # fmt: skip
    evaluate.set_defaults(handler=_evaluate)

    cv = stage("cv", help="stratified K-fold cross-validation of the training recipe, tracked in MLflow")
    _add_paths(cv, {
        "--train-arrays": (paths.TRAIN_ARRAYS, "training arrays to read"),
        "--clean": (paths.CLEAN_ARRAYS, "clean arrays (test split for the ensemble) to read"),
        "--metrics": (paths.CV_METRICS, "per-fold and summary metrics JSON"),
    })  # fmt: skip
    cv.set_defaults(handler=_cv)

    register = stage("register", help="register the best eligible run, write its model card, apply the gate")
    _add_paths(register, {
        "--run-info": (paths.TRAIN_RUN, "the training's run JSON"),
        "--clean": (paths.CLEAN_ARRAYS, "clean arrays (test split to re-score a champion on)"),
        "--out": (paths.REGISTRATION, "registration summary JSON"),
        "--card": (paths.MODEL_CARD, "model card Markdown"),
    })  # fmt: skip
    register.set_defaults(handler=_register)

    promote = stage("promote", help="move champion to the challenger if it beats it by the margin (or --rollback)")
    promote.add_argument("--rollback", action="store_true", help="point champion back at the previous champion")
    _add_paths(promote, {"--clean": (paths.CLEAN_ARRAYS, "test split to re-score the champion on if needed")})
    promote.set_defaults(handler=_promote)

    models = stage("models", help="list the registered versions with their aliases and key metrics")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)

    retrain = stage("retrain", help="run the pipeline, register and gate; exit 0 promoted, 10 kept, 1 failed")
    retrain.set_defaults(handler=_retrain)

    predict = stage("predict", help="read the expression of the faces in images, folders or URLs")
    predict.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="image files, folders, http(s) URLs")
    predict.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or a .keras file "
                         "(default: the champion of register.model_name)")  # fmt: skip
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--annotate", type=Path, metavar="OUT", help="write annotated images to this folder")
    predict.add_argument("--no-detect", action="store_true", help="inputs are already cropped faces (FER style)")
    predict.set_defaults(handler=_predict)

    export = stage("export", help="write the model as ONNX and LiteRT files, checked against Keras and timed")
    export.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or a .keras file "
                        "(default: the champion of register.model_name)")  # fmt: skip
    export.add_argument("--out", type=Path, default=root / "exports", help="output folder (default: exports)")
    export.add_argument("--formats", default="onnx,litert",
                        help="comma-separated: onnx, litert, onnx-int8 (default: onnx,litert)")
    export.add_argument("--calibration", type=Path,
                        help="onnx-int8: the clean.npz whose training faces calibrate it and whose val faces "
                             "check it (default: data/processed/clean.npz)")  # fmt: skip
    export.set_defaults(handler=_export)

    recipe = stage("recipe", help="named params recipes for real FER-2013 (cpu-fast, cpu-full, gpu)")
    recipe.add_argument("action", choices=["list", "show", "apply", "run"],
                        help="list the recipes; show one's values and dvc command; apply it to params.yaml; "
                        "or run it as a DVC experiment")  # fmt: skip
    recipe.add_argument("name", nargs="?", help="recipe name")
    recipe.add_argument("-S", "--set", action="append", metavar="KEY=VALUE",
                        help="override one more param, as dvc exp run -S does (repeatable)")  # fmt: skip
    recipe.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    recipe.set_defaults(handler=_recipe)

    sweep = stage("sweep", help="queue a grid of params values as DVC experiments and run N at a time")
    sweep.add_argument("-S", "--set", action="append", metavar="KEY=V1,V2",
                       help="one axis of the grid: a params key and its comma-separated values (repeatable)")
    sweep.add_argument("--jobs", "-j", type=int, default=1,
                       help="experiments run at once (dvc queue start -j; default: 1; 0: only queue)")
    sweep.add_argument("--recipe", help="a named recipe's values under every point of the grid")
    sweep.add_argument("--no-wait", action="store_true", help="start the queue and return without following it")
    sweep.set_defaults(handler=_sweep)

    server = stage("server", help="a shared MLflow tracking server: PostgreSQL store, artifacts served (start/stop)")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--root", type=Path, default=root / ".mlflow-server",
                        help="PostgreSQL cluster, artifacts and logs (default: .mlflow-server)")  # fmt: skip
    server.add_argument("--port", type=int, default=5000, help="MLflow server port on 127.0.0.1 (default: 5000)")
    server.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL port on 127.0.0.1 (default: 5433)")
    server.add_argument("--workers", type=int, default=2, help="MLflow server worker processes (default: 2)")
    server.set_defaults(handler=_server)
    return parser


def _params(args: argparse.Namespace) -> Params:
    """``--params``, else the repository's params.yaml. Outside a repository, ``predict --model FILE`` needs no
    params file: it runs on the typed defaults (the values params.yaml spells out)."""
    if args.params is not None:
        return load_params(args.params)
    default = args.workspace / "params.yaml"
    if not default.is_file() and args.command == "predict" and args.model:
        return Params()
    return load_params(default)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


# Commands that load Keras and with it TensorFlow's C++ start-up logs (see ferflow.native_logs).
_LOADS_KERAS = frozenset({"train", "evaluate", "cv", "register", "promote", "predict", "export"})


def entry() -> int:
    """The installed ``ferflow`` command (and ``python -m ferflow``): :func:`main`, with native logs filtered."""
    argv = sys.argv[1:]
    if _LOADS_KERAS.intersection(argv[:3]):
        from ferflow.native_logs import filter_native_logs

        filter_native_logs()
    return main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        params = _params(args)
        code = args.handler(args, params)
    except FerflowError as exc:
        print(f"ferflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the machine said no (disk full, permissions, a vanished mount): no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"ferflow {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ferflow {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Terminated:
        print(f"ferflow {args.command}: terminated (SIGTERM); no partial output was kept", file=sys.stderr)
        return 143
    return code or 0

"""The `fashionnet` command: each sub-command is a few lines over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fashionnet.errors import FashionNetError

if TYPE_CHECKING:
    from fashionnet.config import TrainConfig

log = logging.getLogger("fashionnet")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", module="keras")


def _config_from_args(args) -> TrainConfig:
    from fashionnet.config import TrainConfig, default_branch
    from fashionnet.heads import HeadSpec

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    if getattr(args, "preset", None):
        config = config.with_preset(args.preset)
    overrides = {}
    for name in _TRAIN_SETTINGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "multi":  # added to the config file's, with or without --heads
            value = sorted(set(config.multi) | set(value))
        overrides[name] = str(value) if name == "dataset" else value
    heads = list(config.heads)
    multi = args.multi or []
    if args.heads:
        heads = [HeadSpec(n.strip(), kind="multi" if n.strip() in multi else "single",
                          branch=default_branch(n.strip()))
                 for n in args.heads.split(",") if n.strip()]
    for item in args.loss_weight or []:
        name, _, weight = item.partition("=")
        if not heads:
            from fashionnet.data.sources import DEFAULT_HEADS
            heads = [HeadSpec(n, branch=default_branch(n)) for n in DEFAULT_HEADS]
        match = [h for h in heads if h.name == name]
        if not match or not weight:
            raise FashionNetError(f"--loss-weight {item!r}: expected HEAD=WEIGHT with a head "
                                  f"among {[h.name for h in heads]}")
        try:
            value = float(weight)
        except ValueError:
            raise FashionNetError(f"--loss-weight {item!r}: {weight!r} is not a number") from None
        # replace, not assignment: HeadSpec validates (finite, not negative) when it is built
        heads[heads.index(match[0])] = dataclasses.replace(match[0], loss_weight=value)
    overrides["heads"] = heads
    return config.with_overrides(**overrides)


#: TrainConfig settings that are command-line options (all but the manifest column names),
#: their text, choices and ranges declared once in `fashionnet.config.SETTINGS`.
_TRAIN_SETTINGS = ("dataset", "multi", "separator", "architecture", "input_size", "epochs",
                   "batch_size", "learning_rate", "lr_decay", "bn_momentum", "augment",
                   "shape_jitter", "mirror_average", "cutout", "garment_map",
                   "category_garment_map", "garment_tone", "random_backdrop",
                   "category_dropout", "local_contrast", "recolor",
                   "recolor_outside", "balance_classes", "label_smoothing", "split",
                   "val_fraction", "test_fraction", "holdout", "seed", "patience", "dedupe",
                   "precise_bn", "calibrate", "strict", "cache", "allow_outside",
                   "backbone", "category_attention")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from fashionnet.config import PRESETS

    _add_setting(p, "dataset")
    p.add_argument("--config", type=Path,
                   help="TOML config (`fashionnet init-config` writes one); flags override it")
    p.add_argument("--heads", help="head names in folder-name order, or the manifest columns "
                                   "to train (default: color,category for folders, every "
                                   "column of a manifest)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="quick: the cheap study protocol (64 px, 12 epochs, cosine schedule)")
    p.add_argument("--loss-weight", action="append", metavar="HEAD=W",
                   help="weight of one head's loss (repeatable; default 1.0 each)")
    for name in _TRAIN_SETTINGS[1:]:
        _add_setting(p, name)


def _add_setting(p: argparse.ArgumentParser, name: str) -> None:
    """One TrainConfig setting as an option: help, choices and type from its declaration."""
    from fashionnet.config import SETTINGS, describe_default

    setting = SETTINGS[name]
    flag = "--" + name.replace("_", "-")
    default = describe_default(name)
    text = setting.help + (f" (default: {default})" if default != "none" else "")
    if setting.kind in (int, float) and setting.range_text():
        text += f"; {setting.range_text()}"
    kwargs: dict = {"help": text.replace("%", "%%")}
    if setting.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif setting.kind is list:
        kwargs.update(type=_names, metavar=setting.metavar)
    elif setting.choices:
        kwargs["choices"] = list(setting.choices)
    else:
        kwargs.update(type=Path if name == "dataset" else setting.kind,
                      metavar=setting.metavar)
    p.add_argument(flag, default=None, **kwargs)


def cmd_train(args) -> int:
    from fashionnet.extras import require_training

    config = _config_from_args(args)
    require_training("fashionnet train")
    if not config.dataset:
        raise FashionNetError("no dataset given: fashionnet train --dataset PHOTOS_OR_MANIFEST "
                              "(or dataset = ... in --config)")
    if not Path(config.dataset).exists():  # before the seconds that importing TensorFlow takes
        raise FashionNetError(f"{config.dataset}: dataset not found (expected a folder or a "
                              f"manifest)")
    from fashionnet.outputs import check_destination, dataset_inputs

    if args.track:
        from fashionnet.extras import require

        require("--track mlflow", "track", "mlflow")
    if not args.resume:  # resume decides itself (a finished run is returned as it is)
        check_destination(args.output, dataset_inputs(config.dataset, config.path_column),
                          overwrite=args.overwrite)
    if config.holdout:  # a hold-out that cannot work is refused before TensorFlow loads
        from fashionnet.data.sources import read_dataset
        from fashionnet.data.splits import check_holdout
        from fashionnet.heads import fit_classes

        records, names = read_dataset(config.dataset, [h.name for h in config.heads] or None,
                                      config.multi, config.separator, config.multi_separator,
                                      config.path_column, allow_outside=config.allow_outside)
        check_holdout(records, fit_classes(config.head_specs(names), records), config.holdout)
    from fashionnet.extras import import_keras_quietly

    import_keras_quietly()  # every cheap refusal above came before this
    if args.workers is not None or args.address:
        if args.resume:
            raise FashionNetError("--resume is for one-process runs; Ray workers resume by "
                                  "themselves after a failure (--max-failures)")
        from fashionnet.cluster.training import train_on_ray

        workers = 2 if args.workers is None else args.workers
        result = train_on_ray(config, args.output, workers=workers,
                              address=args.address, overwrite=args.overwrite,
                              max_failures=args.max_failures, storage=args.storage,
                              cpus_per_worker=args.cpus_per_worker)
        print(_metrics_summary(result.metrics))
        resumed = result.cluster["resumed_from_epoch"]
        print(f"model bundle: {result.bundle.path} (trained on {workers} Ray "
              f"worker(s){f', resumed after epoch {resumed}' if resumed else ''})")
        return 0
    from fashionnet.training import train

    result = train(config, args.output, overwrite=args.overwrite,
                   verbose=2 if args.quiet else "auto", resume=args.resume,
                   track=args.track, tracking_uri=args.tracking_uri)
    print(_metrics_summary(result.metrics))
    print(f"model bundle: {result.bundle.path}")
    return 0


def _metrics_summary(metrics: dict) -> str:
    test = metrics["test"]
    if not test.get("count"):
        return "no test split"
    parts = [f"{name} {100 * h['accuracy']:.2f}%" for name, h in test["heads"].items()]
    return (f"test accuracy ({test['count']} images): " + ", ".join(parts)
            + f"; exact match {100 * test['exact_match']:.2f}%")


def _model_or_default(model: Path | None) -> Path:
    """``--model`` when given, else the bundle shipped inside the package."""
    if model is not None:
        return model
    from fashionnet.default_model import default_model_path

    return default_model_path()


def cmd_classify(args) -> int:
    import time

    from fashionnet.inference import expand_inputs, load

    if args.engine == "ray":
        return _classify_on_ray(args)
    if args.output or args.workers is not None or args.address:
        raise FashionNetError("--output, --workers and --address go with --engine ray")
    if args.top_k < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise FashionNetError("--top-k and --batch-size must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise FashionNetError(f"--threshold must be from 0 to 1, not {args.threshold}")
    paths = expand_inputs(args.inputs)
    if args.annotate:  # never over a photo, never into a folder of the user's
        from fashionnet.outputs import check_destination, claim_output

        check_destination(args.annotate, [("photo", p) for p in [*args.inputs, *paths]],
                          overwrite=True, flag="--annotate")
        args.annotate.mkdir(parents=True, exist_ok=True)
        claim_output(args.annotate, "classify --annotate")
    started = time.perf_counter()
    predictor = load(_model_or_default(args.model), backend=args.backend,
                     precision=args.precision, abstain=not args.no_abstain)
    predictor.batch_size = args.batch_size or predictor.batch_size
    if args.threshold is not None:
        predictor.heads = [dataclasses.replace(h, threshold=args.threshold) if h.multi else h
                           for h in predictor.heads]
    # The bar goes to stderr, and only when that is a terminal (tqdm's disable=None): a CSV
    # redirected to a file still shows its progress; a log file gets none.
    results = predictor.predict_files(paths, strict=args.strict, progress=True)
    seconds = time.perf_counter() - started
    failures = written = 0
    if args.annotate:
        from fashionnet.annotate import annotate, output_names

        names = output_names(args.inputs, paths)
    rows = []
    for index, result in enumerate(results):
        if result.error:
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
            if args.format == "csv":  # one row per input, as the Ray path writes
                rows.append(_csv_error_row(result, predictor.heads, args.top_k,
                                           predictor.rules))
            continue
        if args.annotate:
            annotate(paths[index], result, args.annotate, name=names[index])
            written += 1
        if args.format == "csv":
            rows.append(_csv_row(result, args.top_k, predictor.rules))
        if args.format != "text":
            continue
        if len(results) > 1:
            print(f"{result.source}")
        for name, head in result.heads.items():
            print(f"{'  ' if len(results) > 1 else ''}{name}: {_describe(head, args.top_k)}")
    if args.format == "json":
        # Strict JSON: a non-finite number (NaN, Infinity) is written as null, never as NaN.
        print(json.dumps(_finite([r.to_dict() for r in results]), indent=2, allow_nan=False))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(_csv_header(predictor.heads, args.top_k, predictor.rules))
        writer.writerows(rows)
    if args.annotate:
        print(f"wrote {written} annotated image(s) to {args.annotate}", file=sys.stderr)
    done = len(results) - failures
    print(_label_set(predictor), file=sys.stderr)
    print(f"classified {done} image(s){f' ({failures} unreadable)' if failures else ''} in "
          f"{seconds:.2f} s ({done / max(seconds, 1e-9):.1f} img/s), backend "
          f"{predictor.backend}, {'calibrated' if predictor.temperatures else 'not calibrated'}",
          file=sys.stderr)
    return 1 if failures == len(results) else 0


def _classify_on_ray(args) -> int:
    """``classify --engine ray INPUT --output OUT/``: Parquet shards, a summary line."""
    from fashionnet.cluster.labelling import label

    if len(args.inputs) != 1 or not args.output:
        raise FashionNetError("--engine ray takes one INPUT (a folder, a manifest or a text file "
                              "of paths) and --output OUT/")
    unsupported = [flag for flag, used in (("--annotate", args.annotate), ("--strict", args.strict),
                                           ("--format", args.format != "text"),
                                           ("--top-k", args.top_k != 1),
                                           ("--threshold", args.threshold is not None)) if used]
    if unsupported:
        raise FashionNetError(f"{', '.join(unsupported)}: not available with --engine ray (it "
                              f"writes every probability to Parquet; unreadable files are rows)")
    summary = label(_model_or_default(args.model), args.inputs[0], args.output,
                    workers=1 if args.workers is None else args.workers, address=args.address,
                    batch_size=args.batch_size or 64,
                    backend=args.backend, overwrite=args.overwrite,
                    progress=sys.stderr.isatty())
    errors = summary["errors"]
    print(f"labelled {summary['labelled']} image(s){f' ({errors} unreadable)' if errors else ''} "
          f"in {summary['seconds']:.2f} s ({summary['images_per_second']:.1f} img/s) on "
          f"{summary['workers']} Ray worker(s), backend {summary['backend']}; wrote "
          f"{args.output} (Parquet shards and _summary.json)", file=sys.stderr)
    return 1 if errors == summary["images"] else 0


def _describe(head, top_k: int) -> str:
    """``red (95.07%)``, or with ``top_k`` the k most likely labels of a single-label head."""
    if head.multi or top_k == 1:
        return head.describe()
    best = sorted(head.probabilities.items(), key=lambda item: -item[1])[:top_k]
    ranked = ", ".join(f"{label} ({p:.2%})" for label, p in best)
    return f"unknown (out-of-set {head.out_of_set:.2f}); closest: {ranked}" if head.unknown \
        else ranked


def _label_set(predictor) -> str:
    """What the model can name, and whether it may say "unknown": said with every answer."""
    heads = "; ".join(f"{h.name}: {', '.join(h.classes)}" for h in predictor.heads)
    abstains = sorted(predictor.rules)
    note = (f"; {', '.join(abstains)} may answer unknown (--no-abstain: never)" if abstains
            else "; no out-of-set rules: every answer is one of these")
    return f"the model knows {heads}{note}"


def _csv_header(heads, top_k: int, rules=()) -> list[str]:
    """``source``, per head its label and probability columns (with ``--top-k K``, one pair per
    rank of a single-label head: ``color``, ``color_probability``, ``color_2``, ...), and for
    a head with an out-of-set rule (``rules``) ``color_guess`` and ``color_out_of_set``;
    ``error``."""
    columns = ["source"]
    for head in heads:
        for rank in range(1 if head.multi else top_k):
            name = head.name if rank == 0 else f"{head.name}_{rank + 1}"
            columns += [name, f"{name}_probability"]
        if head.name in rules:
            columns += [f"{head.name}_guess", f"{head.name}_out_of_set"]
    return [*columns, "error"]


def _csv_row(result, top_k: int, rules=()) -> list[str]:
    """One cell per value: a single-label head's K best labels in K column pairs (the first
    label ``unknown``, its probability empty, when the head abstains); a multi-label head's
    set of labels (and their probabilities) joined with |."""
    row = [result.source]
    for name, head in result.heads.items():
        if head.multi:
            row += ["|".join(head.label), "|".join(f"{p:.6f}" for p in head.probability)]
            continue
        best = sorted(head.probabilities.items(), key=lambda item: -item[1])[:top_k]
        for rank, (label, p) in enumerate(best + [("", None)] * (top_k - len(best))):
            if rank == 0 and head.unknown:
                label, p = "unknown", None
            row += [label, "" if p is None else f"{p:.6f}"]
        if name in rules:
            row += [head.guess, "" if head.out_of_set is None else f"{head.out_of_set:.4f}"]
    return [*row, ""]


def _csv_error_row(result, heads, top_k: int, rules=()) -> list[str]:
    """An unreadable input's row: its source, empty label cells, and why."""
    width = len(_csv_header(heads, top_k, rules)) - 2
    return [result.source, *[""] * width, result.error]


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def cmd_demo(args) -> int:
    from fashionnet.extras import require_training

    require_training("fashionnet demo")
    from fashionnet.extras import import_keras_quietly

    import_keras_quietly()
    from fashionnet.demo import run_demo

    run_demo(args.output, epochs=args.epochs, overwrite=True, backbone=args.backbone)
    return 0


def cmd_evaluate(args) -> int:
    from fashionnet.extras import require

    require("fashionnet evaluate (its plots)", "train", "matplotlib")
    from fashionnet.evaluation import evaluate, summary_table

    out = args.output or Path(args.model) / "evaluation"
    if (out / "report.json").exists() and not args.overwrite:
        raise FashionNetError(f"{out}: already holds a report; choose another --output or pass "
                              f"--overwrite")
    from fashionnet.outputs import check_output, dataset_inputs

    check_output(out, [*dataset_inputs(args.dataset), ("model", args.model)])
    report = evaluate(args.model, args.dataset, output=out, subset=args.subset,
                      backend=args.backend, allow_outside=args.allow_outside,
                      abstain=not args.no_abstain)
    print(summary_table(report))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_calibrate(args) -> int:
    from fashionnet.extras import require_training

    require_training("fashionnet calibrate")
    from fashionnet.calibration import calibrate

    document = calibrate(args.model, args.dataset, keep=args.keep,
                         allow_outside=args.allow_outside)
    for name, rule in document.get("open_set", {}).items():
        print(f"{name}: unknown over {rule['score']} {rule['threshold']:.4g} "
              f"(keeps {rule['keep']:.0%} of the correct validation answers), temperature "
              f"{document['temperatures'].get(name, 1.0)}")
    print(f"wrote {Path(args.model) / 'labels.json'}")
    return 0


def cmd_study(args) -> int:
    from fashionnet.extras import require_training

    config = _config_from_args(args)
    require_training("fashionnet study")
    from fashionnet.extras import import_keras_quietly

    import_keras_quietly()
    from fashionnet.study import compositional_study

    combos = [c for c in args.combinations.split(",") if c] if args.combinations else None
    study = compositional_study(config, args.output, combinations=combos,
                                verbose=2 if args.quiet else "auto")
    print((Path(args.output) / "study.md").read_text())
    return 0 if study["folds"] else 1


def cmd_init_config(args) -> int:
    from fashionnet.config_template import write_config

    path = write_config(args.dataset, args.output, heads=args.heads, multi=args.multi,
                        overwrite=args.overwrite, allow_outside=args.allow_outside)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from fashionnet.extras import keras_modules, require

    if args.int8 and not args.format:  # quantize the existing model.onnx: no Keras needed
        require("fashionnet export --int8", "export", "onnx", "onnxruntime")
        from fashionnet.runtime.export import export_int8

        print(f"wrote {export_int8(args.model, args.calibration)}")
        return 0
    needs = keras_modules() + (["tf2onnx", "onnx", "onnxruntime"]
                               if "onnx" in (args.format or ["onnx"]) else ["tensorflow"])
    require("fashionnet export", "export", *needs)
    from fashionnet.runtime.export import LAST_PARITY, PARITY_TOLERANCE, export, export_int8

    for path in export(args.model, formats=args.format, overwrite=args.overwrite):
        print(f"wrote {path}")
    if LAST_PARITY:
        print("parity with Keras on 8 probe images, largest difference per head: "
              + ", ".join(f"{name} {gap:.1e}" for name, gap in LAST_PARITY.items())
              + f" (limit {PARITY_TOLERANCE:g})")
    if args.int8:
        print(f"wrote {export_int8(args.model, args.calibration)}")
    return 0


def cmd_serve(args) -> int:
    from fashionnet.extras import require

    require("fashionnet serve", "serve", "fastapi", "uvicorn", "python_multipart|multipart",
            "fastapi_offline")
    from fashionnet.server.app import serve

    for name in ("max_bytes", "max_request_bytes", "max_buffered_bytes", "max_pixels",
                 "max_batch", "request_timeout", "read_timeout", "upload_timeout",
                 "header_timeout", "model_batch"):
        value = getattr(args, name)
        if not math.isfinite(value) or value <= 0:  # NaN passes every comparison
            raise FashionNetError(f"--{name.replace('_', '-')} must be a finite positive "
                                  f"number, not {value}")
    if not math.isfinite(args.max_batch_delay_ms) or not 0 <= args.max_batch_delay_ms <= 1000:
        raise FashionNetError(f"--max-batch-delay-ms must be from 0 to 1000, not "
                              f"{args.max_batch_delay_ms}")
    for name in ("workers", "queue", "batch_queue", "model_workers", "model_threads",
                 "lone_threads"):
        if getattr(args, name) < 0:
            raise FashionNetError(f"--{name} must be 0 (automatic) or more, not "
                                  f"{getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise FashionNetError(f"--port must be from 0 to 65535, not {args.port}")
    serve(_model_or_default(args.model), host=args.host, port=args.port, max_bytes=args.max_bytes,
          max_request_bytes=args.max_request_bytes, max_buffered_bytes=args.max_buffered_bytes,
          max_pixels=args.max_pixels, max_batch=args.max_batch, workers=args.workers,
          queue=args.queue, request_timeout=args.request_timeout,
          read_timeout=args.read_timeout, upload_timeout=args.upload_timeout,
          header_timeout=args.header_timeout, model_batch=args.model_batch,
          max_batch_delay_ms=args.max_batch_delay_ms,
          batch_queue=args.batch_queue, model_threads=args.model_threads,
          lone_threads=args.lone_threads,
          model_workers=args.model_workers,
          precision=args.precision, abstain=not args.no_abstain,
          backend=args.backend, access_log_enabled=not args.no_access_log)
    return 0


def cmd_tune(args) -> int:
    from fashionnet.extras import require_cluster, require_training

    config = _config_from_args(args)
    require_cluster("fashionnet tune")
    require_training("fashionnet tune")
    if not config.dataset:
        raise FashionNetError("no dataset given: fashionnet tune --dataset PHOTOS_OR_MANIFEST")
    from fashionnet.tuning import tune

    summary = tune(config, args.output, trials=args.trials, objective=args.objective,
                   holdout=_names(args.tune_holdout) if args.tune_holdout else None,
                   settings=_names(args.settings) if args.settings else None,
                   max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                   address=args.address, seed=args.seed or 0, overwrite=args.overwrite,
                   time_budget=60 * args.minutes if args.minutes else None)
    print((Path(args.output) / "trials.md").read_text())
    best = summary["best"]
    print(f"best {summary['metric']} {100 * best[summary['metric']]:.2f} %: "
          f"{Path(args.output) / 'best.toml'} (fashionnet train --config "
          f"{Path(args.output) / 'best.toml'} --output runs/tuned)")
    return 0


def cmd_runs(args) -> int:
    from fashionnet.runs import format_runs, runs_table

    rows, notes = runs_table(args.folder)
    for note in notes:
        print(note, file=sys.stderr)
    if not rows:
        raise FashionNetError(f"{args.folder}: no model bundles (folders with labels.json) in it")
    sys.stdout.write(format_runs(rows, args.format))
    return 0


def cmd_card(args) -> int:
    from fashionnet.model_card import write_model_card

    print(f"wrote {write_model_card(args.model)}")
    return 0


def cmd_doctor(args) -> int:
    from fashionnet.doctor import run_doctor

    result = run_doctor(args.dataset, args.output, model=args.model,
                        heads=_names(args.heads) if args.heads else None,
                        multi=_names(args.multi) if args.multi else None,
                        separator=args.separator, allow_outside=args.allow_outside,
                        overwrite=args.overwrite, progress=not args.quiet, shown=args.shown)
    counts = result.counts()
    print(f"{len(result.paths)} images; " + (", ".join(f"{name} {n}" for name, n in counts.items())
                                             or "no issues found") + " (images per issue)")
    print(f"report: {Path(args.output) / 'report.html'} (and report.md, issues.csv, manifest.csv)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fashionnet.config import BACKBONES

    parser = _Parser(
        prog="fashionnet", formatter_class=_HelpFormatter, epilog=EXAMPLES["fashionnet"],
        description="Multi-output image classification (one head per attribute).")
    parser.add_argument("--version", action="version", version="fashionnet 0.1.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a bundle folder")
    _add_train_options(p)
    p.add_argument("--output", type=Path, required=True, help="bundle folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted, from its last epoch's checkpoint "
                        "(same --output and settings); a finished run is left as it is")
    p.add_argument("--quiet", action="store_true", help="no progress bar while decoding")
    p.add_argument("--track", choices=["mlflow"],
                   help="also log the run to MLflow (extra track); TensorBoard logs are always "
                        "written, to OUTPUT/tensorboard")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="with --track mlflow: where runs go (default: MLflow's, ./mlruns)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="data-parallel training on N Ray workers (extra cluster)")
    p.add_argument("--address", metavar="ADDR",
                   help="an existing Ray cluster (default with --workers: Ray on this machine)")
    p.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="with --workers: restarts from the last epoch's checkpoint after a "
                        "worker dies")
    p.add_argument("--storage", metavar="PATH_OR_URI",
                   help="with --workers: where checkpoints go (default: a hidden folder "
                        "beside --output; on a cluster, storage every node shares). Only this "
                        "run's own sub-folder is removed after success")
    p.add_argument("--cpus-per-worker", type=float, metavar="C",
                   help="with --workers: CPUs each worker reserves (default: this machine's "
                        "cores shared out, or 1 with --address)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="classify images with a trained bundle")
    p.add_argument("--model", type=Path,
                   help="bundle folder (default: the model shipped with fashionnet)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--format", choices=["text", "json", "csv"], default="text",
                   help="text: one line per head; json: every class probability; csv: one row "
                        "per image, an unreadable one with its error in the error column (exit "
                        "code 1 only when no image could be read)")
    p.add_argument("--json", action="store_const", const="json", dest="format",
                   help="the same as --format json")
    p.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="labels shown per single-label head in text and csv output")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="probability over which a multi-label head names a label (default: "
                        "each head's own, from training)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per model call (default: 8, the fastest on a small CPU; with "
                        "--engine ray, 64 images per Ray batch, run 8 at a time)")
    p.add_argument("--annotate", type=Path, metavar="OUT_DIR",
                   help="write a labelled PNG copy of each image here (the input tree mirrored)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto",
                   help="auto: model.onnx with onnxruntime when both exist, else Keras")
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                   help="fp32: model.onnx; int8: model.int8.onnx (`fashionnet export MODEL "
                        "--int8`); auto: int8 when the bundle has it, else fp32")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: label INPUT with Ray Data into Parquet shards (extra cluster)")
    p.add_argument("--output", metavar="OUT_DIR",  # a str: Path would collapse s3:// to s3:/
                   help="with --engine ray: folder (or URI) for the Parquet shards")
    p.add_argument("--workers", type=int, metavar="N",
                   help="with --engine ray: model actors (default 1)")
    p.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: an existing Ray cluster (default: Ray on this machine)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --engine ray: replace an existing output folder")
    p.add_argument("--no-abstain", action="store_true",
                   help="always name one of the model's labels, never unknown (default: a head "
                        "with an out-of-set rule answers unknown for what it has no name for)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("demo", help="train on a generated dataset (no download) and report")
    p.add_argument("--output", type=Path, default=Path("runs/demo"),
                   help="folder for the generated images and the bundle (replaced)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 15)")
    p.add_argument("--backbone", choices=list(BACKBONES), default=None,
                   help="the category heads' features (default: efficientnet-lite0, as "
                        "`train`; scratch: the fast option)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="per-head, exact-match and seen/unseen report")
    p.add_argument("--model", type=Path, required=True, help="bundle folder")
    p.add_argument("--dataset", type=Path, required=True,
                   help="folder or manifest, labelled like the training data")
    p.add_argument("--subset", choices=["train", "val", "test"],
                   help="only the images the bundle's run put in this split")
    p.add_argument("--output", type=Path, help="report folder (default: MODEL/evaluation)")
    p.add_argument("--allow-outside", action="store_true",
                   help="manifest paths may leave the manifest's folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto",
                   help="auto: model.onnx with onnxruntime when both exist, else Keras")
    p.add_argument("--no-abstain", action="store_true",
                   help="score without the out-of-set rules (accuracy figures are the same; "
                        "the answered share and risk-coverage are left out)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a bundle's out-of-set rules and temperatures "
                                         "again on its validation split")
    p.add_argument("--model", type=Path, required=True, help="bundle folder (with model.keras)")
    p.add_argument("--dataset", type=Path, required=True,
                   help="the folder or manifest the bundle was trained on")
    p.add_argument("--keep", type=float, default=0.96,
                   help="share of the correctly answered validation images that stay answered")
    p.add_argument("--allow-outside", action="store_true",
                   help="manifest paths may leave the manifest's folder")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("study", help="studies; 'compositional' = leave-one-combination-out")
    p.add_argument("kind", choices=["compositional"],
                   help="compositional: leave one combination out, one model per fold")
    _add_train_options(p)
    p.add_argument("--output", type=Path, default=Path("runs/study"),
                   help="study folder (resumable: finished folds are kept)")
    p.add_argument("--combinations", help="only these folds (default: every feasible one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while decoding")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("init-config", help="write a commented TOML config for a dataset")
    p.add_argument("--dataset", type=Path, required=True,
                   help="folder or manifest whose heads and classes the config lists")
    p.add_argument("--output", type=Path, default=Path("fashionnet.toml"),
                   help="the TOML file to write")
    p.add_argument("--heads", help="head names in folder-name order, or manifest columns")
    p.add_argument("--multi", help="comma-separated multi-label heads")
    p.add_argument("--allow-outside", action="store_true",
                   help="manifest paths may leave the manifest's folder (absolute paths, ../); "
                        "the config then says allow_outside = true")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_init_config)

    p = sub.add_parser("tune", help="search settings on Ray Tune for seen or unseen "
                                    "combinations (extra cluster)")
    _add_train_options(p)
    p.add_argument("--output", type=Path, required=True,
                   help="folder for best.toml, trials.csv and trials.md")
    p.add_argument("--trials", type=int, default=8, metavar="N", help="configurations to try")
    p.add_argument("--objective", choices=["heldout", "val"], default="heldout",
                   help="heldout: exact match on combinations kept out of each trial's "
                        "training; val: validation exact match")
    p.add_argument("--tune-holdout", metavar="COMBO,...",
                   help="with --objective heldout: the combinations kept out (default: the "
                        "largest one that can be)")
    p.add_argument("--settings", metavar="NAME,...",
                   help="tune only these (default: every setting declared tunable; on "
                        "the pretrained backbone, not the scratch branch's)")
    p.add_argument("--max-concurrent", type=int, metavar="K",
                   help="trials at once (default: as many as the CPUs allow)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="stop after M minutes: no new trial starts, running ones stop")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                   help="CPUs each trial reserves (and sizes TensorFlow's threads to)")
    p.add_argument("--address", metavar="ADDR", help="an existing Ray cluster")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier tune folder")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("runs", help="list the runs in a folder with their key figures")
    p.add_argument("folder", type=Path, nargs="?", default=Path("runs"),
                   help="folder holding bundles (default: runs)")
    p.add_argument("--format", choices=["table", "csv"], default="table",
                   help="an aligned table, or CSV for a spreadsheet")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("card", help="write a bundle's MODEL_CARD.md again (after evaluate)")
    p.add_argument("model", type=Path, help="bundle folder")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("export", help="export a bundle's model (ONNX, SavedModel)")
    p.add_argument("model", type=Path, help="bundle folder; the export is written into it")
    p.add_argument("--format", action="append", choices=["onnx", "savedmodel"],
                   help="repeatable (default: onnx)")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx, model.onnx quantized to int8 (ONNX Runtime "
                        "static quantization); alone, quantizes the existing model.onnx")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="with --int8: images to calibrate activation ranges on (default: the "
                        "bundle's training split, or its config's dataset)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model.onnx (or savedmodel/)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP API and web page")
    p.add_argument("--model", type=Path,
                   help="bundle folder (default: the model shipped with fashionnet)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--max-bytes", type=int, default=10_000_000, help="bytes per image")
    p.add_argument("--max-request-bytes", type=int, default=64_000_000,
                   help="bytes per request body (a batch)")
    p.add_argument("--max-buffered-bytes", type=int, default=256_000_000,
                   help="bytes of uploads held in memory by all requests together (else 503)")
    p.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="width x height per image, checked before decoding")
    p.add_argument("--max-batch", type=int, default=32, help="images per batch request")
    p.add_argument("--workers", type=int, default=0,
                   help="image decoding threads (default: one per CPU core)")
    p.add_argument("--queue", type=int, default=0,
                   help="requests waiting for a decoding thread before 503 (default: 32 per "
                        "worker)")
    p.add_argument("--model-batch", type=int, default=8, metavar="N",
                   help="dynamic batching: at most N images per model call, from concurrent "
                        "requests")
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0, metavar="MS",
                   help="how long a model call may wait for images still being decoded (never "
                        "when no other request is on its way; 0: never wait)")
    p.add_argument("--batch-queue", type=int, default=0, metavar="N",
                   help="images waiting for the model before 503 (default: 4 model batches, "
                        "at least 32 per decode worker)")
    p.add_argument("--model-workers", type=int, default=0, metavar="N",
                   help="model threads, each running its own batch (default: one per CPU "
                        "core, each call on one core; a lone request gets every core, see "
                        "--lone-threads)")
    p.add_argument("--model-threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime threads per model call (default: CPU cores / "
                        "--model-workers)")
    p.add_argument("--lone-threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime threads for a request with the server to itself (no "
                        "other decoding, queued or running), on a second session whose "
                        "threads spin within a call (default: CPU cores; 1: no second session)")
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                   help="fp32: model.onnx; int8: model.int8.onnx (`fashionnet export MODEL "
                        "--int8`); auto: int8 when the bundle has it, else fp32")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds for decode + inference, queue included (else 503)")
    p.add_argument("--read-timeout", type=float, default=15.0,
                   help="seconds a client may stay silent mid-upload (else 408)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a request's line and headers may take (else the connection "
                        "is closed)")
    p.add_argument("--upload-timeout", type=float, default=60.0,
                   help="seconds a whole request body may take, however it trickles in "
                        "(else 408)")
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto",
                   help="auto: model.onnx with onnxruntime when both exist, else Keras")
    p.add_argument("--no-abstain", action="store_true",
                   help="never answer unknown (\"label\": null): always one of the labels")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("doctor", help="find what is wrong with a dataset: unreadable files, "
                                      "duplicates, image quality, label errors (extra doctor)")
    p.add_argument("--dataset", type=Path, required=True, help="folder or manifest to check")
    p.add_argument("--model", type=Path,
                   help="a run trained on this dataset: adds label issues, outliers and "
                        "ambiguous images from its out-of-sample predictions and embeddings")
    p.add_argument("--output", type=Path, required=True, help="report folder to create")
    p.add_argument("--heads", help="head names in folder-name order, or the manifest columns "
                                   "(default: color,category for folders, every column of a "
                                   "manifest; with --model, the model's heads)")
    p.add_argument("--multi", help="comma-separated multi-label heads")
    p.add_argument("--separator", default="_", help="splits folder names into labels")
    p.add_argument("--allow-outside", action="store_true",
                   help="manifest paths may leave the manifest's folder")
    p.add_argument("--shown", type=int, default=40, metavar="N",
                   help="images shown per section of report.html (all are in issues.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_doctor)
    for name, command in sub.choices.items():
        command.formatter_class = _HelpFormatter
        command.epilog = EXAMPLES.get(name)
        command.description = next(a.help for a in sub._choices_actions if a.dest == name)
    return parser


#: One or two example lines per command, shown at the end of its --help.
EXAMPLES = {
    "fashionnet": "examples:\n  fashionnet demo\n"
                  "  fashionnet train --dataset photos/ --output runs/mine\n"
                  "  fashionnet classify --model runs/mine photo.jpg\n"
                  "  fashionnet COMMAND --help    # options of one command",
    "train": "examples:\n  fashionnet train --dataset photos/ --output runs/mine\n"
             "  fashionnet train --dataset labels.csv --multi occasions --output runs/m\n"
             "  fashionnet train --config fashionnet.toml --epochs 5 --output runs/trial\n"
             "  fashionnet train --dataset photos/ --workers 2 --output runs/ray    # on Ray",
    "classify": "examples:\n  fashionnet classify --model runs/mine photo.jpg\n"
                "  fashionnet classify --model runs/mine photos/ --format csv > labels.csv\n"
                "  fashionnet classify --model runs/mine --engine ray photos/ --output labels/",
    "demo": "example:\n  fashionnet demo --output runs/demo",
    "evaluate": "example:\n  fashionnet evaluate --model runs/mine --dataset photos/ "
                "--subset test",
    "study": "example:\n  fashionnet study compositional --dataset photos/ --preset quick "
             "--output runs/study",
    "init-config": "example:\n  fashionnet init-config --dataset labels.csv --multi occasions"
                   "\n  fashionnet train --config fashionnet.toml --output runs/m",
    "export": "example:\n  fashionnet export runs/mine    # writes runs/mine/model.onnx",
    "serve": "example:\n  fashionnet serve --model runs/mine --port 8000    # then open "
             "http://127.0.0.1:8000/",
    "doctor": "examples:\n  fashionnet doctor --dataset photos/ --output doctor/\n"
              "  fashionnet doctor --dataset photos/ --model runs/mine --output doctor/",
    "tune": "example:\n  fashionnet tune --dataset photos/ --output runs/tune --trials 16 "
            "--epochs 12\n  fashionnet train --config runs/tune/best.toml --output runs/tuned",
    "runs": "examples:\n  fashionnet runs runs/\n  fashionnet runs runs/ --format csv > runs.csv",
    "calibrate": "examples:\n  fashionnet calibrate --model runs/mine --dataset photos/\n"
                 "  fashionnet calibrate --model runs/mine --dataset photos/ --keep 0.9    # "
                 "answer more, abstain less",
    "card": "example:\n  fashionnet evaluate --model runs/mine --dataset photos/\n"
            "  fashionnet card runs/mine    # MODEL_CARD.md with the evaluation's figures",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's default shown unless its help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, plus a hint when a dataset path is given without --dataset."""

    argv: list[str] = []  # the command line being parsed, set by main

    def error(self, message: str):  # type: ignore[override]
        super().error(message + _dataset_hint(self))


def _dataset_hint(parser: argparse.ArgumentParser) -> str:
    """``fashionnet train photos/`` -> '; did you mean --dataset photos/?'"""
    argv = _Parser.argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ("train", "study", "tune", "init-config") or any(
            a == "--dataset" or a.startswith("--dataset=") for a in argv):
        return ""
    for action in parser._actions:  # the error may come from the top parser: find the command's
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            parser = action.choices[command]
    takes_value = {o for a in parser._actions for o in a.option_strings if a.nargs != 0}
    tokens = argv[argv.index(command) + 1:]
    for i, token in enumerate(tokens):
        if token.startswith("-") or token == "compositional":
            continue
        if i and tokens[i - 1] in takes_value:
            continue
        return f"; did you mean --dataset {token}?"
    return ""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (it may be swapped, e.g. by test capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    logger = logging.getLogger("fashionnet")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False
    _quiet_tensorflow()
    try:
        return args.func(args)
    except FashionNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

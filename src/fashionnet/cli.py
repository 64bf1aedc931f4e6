"""The `fashionnet` command: each sub-command is a few lines over the Python API."""

from __future__ import annotations

import argparse
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
    if args.dataset:
        overrides["dataset"] = str(args.dataset)
    for name in ("epochs", "batch_size", "learning_rate", "input_size", "split", "seed", "architecture",
                 "patience", "separator", "val_fraction", "test_fraction", "label_smoothing",
                 "recolor", "lr_decay", "bn_momentum", "augment"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if args.holdout:
        overrides["holdout"] = [c.strip() for c in args.holdout.split(",") if c.strip()]
    if args.strict:
        overrides["strict"] = True
    if args.no_cache:
        overrides["cache"] = False
    if args.no_dedupe:
        overrides["dedupe"] = False
    heads = list(config.heads)
    multi = [n.strip() for n in (args.multi or "").split(",") if n.strip()]
    if multi:
        # Honoured with or without --heads: without, the dataset's heads are all kept.
        overrides["multi"] = sorted(set(config.multi) | set(multi))
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
            match[0].loss_weight = float(weight)
        except ValueError:
            raise FashionNetError(f"--loss-weight {item!r}: {weight!r} is not a number") from None
    overrides["heads"] = heads
    if getattr(args, "allow_outside", False):
        overrides["allow_outside"] = True
    return config.with_overrides(**overrides)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path,
                   help="folder with one sub-folder per combination, or a CSV/JSON/JSONL manifest")
    p.add_argument("--config", type=Path, help="TOML config (see README); flags override it")
    p.add_argument("--heads", help="head names in folder-name order (default: color,category)")
    p.add_argument("--multi", help="comma-separated heads that are multi-label (manifests)")
    p.add_argument("--separator", help="folder-name separator (default: _)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--input-size", type=int)
    p.add_argument("--architecture", choices=["disentangled", "recipe", "gap"],
                   help="disentangled (default): one-pixel colour head, brightness-blind category "
                        "branch, trained with recolouring; recipe: the recipe's network and "
                        "training, exactly; gap: the recipe with global average pooling")
    p.add_argument("--preset", choices=["quick"],
                   help="quick: the cheap study protocol (64 px, 12 epochs, cosine schedule)")
    p.add_argument("--lr-decay", choices=["recipe", "cosine", "none"],
                   help="recipe: inverse-time per step; cosine: 1-epoch warm-up then cosine")
    p.add_argument("--bn-momentum", type=float, help="BatchNorm moving-average momentum")
    p.add_argument("--recolor", type=float, metavar="P",
                   help="share of training images repainted in another colour, label moved "
                        "with it (default 0.5 for disentangled, 0 for recipe)")
    p.add_argument("--split", choices=["standard", "recipe"],
                   help="standard: train/val/test (default); recipe: 80/20, test used as "
                        "validation, only to compare with the recipe")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--holdout", help="combinations kept out of training, e.g. red_shirt,blue_jeans")
    p.add_argument("--seed", type=int)
    p.add_argument("--patience", type=int, help="stop after N epochs without validation gain")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="flips, shifts, brightness/contrast (default: on for disentangled)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--loss-weight", action="append", metavar="HEAD=W")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    p.add_argument("--no-cache", action="store_true", help="do not cache decoded images")
    p.add_argument("--no-dedupe", action="store_true", help="skip near-duplicate grouping")
    p.add_argument("--allow-outside", action="store_true",
                   help="let manifest paths leave the manifest's folder (../, absolute paths)")


def cmd_train(args) -> int:
    from fashionnet.extras import require_training

    config = _config_from_args(args)
    require_training("fashionnet train")
    from fashionnet.training import train

    result = train(config, args.output, overwrite=args.overwrite,
                   verbose=2 if args.quiet else "auto")
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
    from fashionnet.inference import expand_inputs, load

    paths = expand_inputs(args.inputs)
    predictor = load(_model_or_default(args.model), backend=args.backend)
    results = predictor.predict_files(paths, strict=args.strict, progress=not args.json)
    failures = written = 0
    if args.annotate:
        from fashionnet.annotate import annotate, output_names

        names = output_names(args.inputs, paths)
    for index, result in enumerate(results):
        if result.error:
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
            continue
        if args.annotate:
            annotate(paths[index], result, args.annotate, name=names[index])
            written += 1
        if args.json:
            continue
        if len(results) > 1:
            print(f"{result.source}")
        for name, head in result.heads.items():
            print(f"{'  ' if len(results) > 1 else ''}{name}: {head.describe()}")
    if args.annotate:
        print(f"wrote {written} annotated image(s) to {args.annotate}", file=sys.stderr)
    if args.json:
        # Strict JSON: a non-finite number (NaN, Infinity) is written as null, never as NaN.
        print(json.dumps(_finite([r.to_dict() for r in results]), indent=2, allow_nan=False))
    return 1 if failures == len(results) else 0


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
    from fashionnet.demo import run_demo

    run_demo(args.output, epochs=args.epochs, overwrite=True)
    return 0


def cmd_evaluate(args) -> int:
    from fashionnet.extras import require

    require("fashionnet evaluate (its plots)", "train", "matplotlib")
    from fashionnet.evaluation import evaluate, summary_table

    out = args.output or Path(args.model) / "evaluation"
    report = evaluate(args.model, args.dataset, output=out, subset=args.subset,
                      backend=args.backend, allow_outside=args.allow_outside)
    print(summary_table(report))
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_study(args) -> int:
    from fashionnet.extras import require_training

    config = _config_from_args(args)
    require_training("fashionnet study")
    from fashionnet.study import compositional_study

    combos = [c for c in args.combinations.split(",") if c] if args.combinations else None
    study = compositional_study(config, args.output, combinations=combos,
                                verbose=2 if args.quiet else "auto")
    print((Path(args.output) / "study.md").read_text())
    return 0 if study["folds"] else 1


def cmd_init_config(args) -> int:
    from fashionnet.config_template import write_config

    path = write_config(args.dataset, args.output, heads=args.heads, multi=args.multi,
                        overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from fashionnet.extras import keras_modules, require

    needs = keras_modules() + (["tf2onnx", "onnx", "onnxruntime"]
                               if "onnx" in (args.format or ["onnx"]) else ["tensorflow"])
    require("fashionnet export", "export", *needs)
    from fashionnet.runtime.export import export

    for path in export(args.model, formats=args.format):
        print(f"wrote {path}")
    return 0


def cmd_serve(args) -> int:
    from fashionnet.extras import require

    require("fashionnet serve", "serve", "fastapi", "uvicorn", "python_multipart|multipart")
    from fashionnet.server.app import serve

    for name in ("max_bytes", "max_request_bytes", "max_buffered_bytes", "max_pixels",
                 "max_batch", "request_timeout", "read_timeout"):
        if getattr(args, name) <= 0:
            raise FashionNetError(f"--{name.replace('_', '-')} must be positive")
    serve(_model_or_default(args.model), host=args.host, port=args.port, max_bytes=args.max_bytes,
          max_request_bytes=args.max_request_bytes, max_buffered_bytes=args.max_buffered_bytes,
          max_pixels=args.max_pixels, max_batch=args.max_batch, workers=args.workers,
          queue=args.queue, request_timeout=args.request_timeout,
          read_timeout=args.read_timeout, backend=args.backend,
          access_log_enabled=not args.no_access_log)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionnet", description="Multi-output image classification (one head per attribute).")
    parser.add_argument("--version", action="version", version="fashionnet 0.1.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a bundle folder")
    _add_train_options(p)
    p.add_argument("--output", type=Path, required=True, help="bundle folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("classify", help="classify images with a trained bundle")
    p.add_argument("--model", type=Path,
                   help="bundle folder (default: the model shipped with fashionnet)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--annotate", type=Path, metavar="OUT_DIR", help="write labelled images here")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("demo", help="train on a generated dataset (no download) and report")
    p.add_argument("--output", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="per-head, exact-match and seen/unseen report")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--subset", choices=["train", "val", "test"],
                   help="only the images the bundle's run put in this split")
    p.add_argument("--output", type=Path, help="report folder (default: MODEL/evaluation)")
    p.add_argument("--allow-outside", action="store_true",
                   help="manifest paths may leave the manifest's folder")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("study", help="studies; 'compositional' = leave-one-combination-out")
    p.add_argument("kind", choices=["compositional"])
    _add_train_options(p)
    p.add_argument("--output", type=Path, default=Path("runs/study"))
    p.add_argument("--combinations", help="only these folds (default: every feasible one)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("init-config", help="write a commented TOML config for a dataset")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--output", type=Path, default=Path("fashionnet.toml"))
    p.add_argument("--heads")
    p.add_argument("--multi")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_init_config)

    p = sub.add_parser("export", help="export a bundle's model (ONNX, SavedModel)")
    p.add_argument("model", type=Path)
    p.add_argument("--format", action="append", choices=["onnx", "savedmodel"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP API and web page")
    p.add_argument("--model", type=Path,
                   help="bundle folder (default: the model shipped with fashionnet)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=10_000_000, help="bytes per image")
    p.add_argument("--max-request-bytes", type=int, default=64_000_000,
                   help="bytes per request body (a batch)")
    p.add_argument("--max-buffered-bytes", type=int, default=256_000_000,
                   help="bytes of uploads held in memory by all requests together (else 503)")
    p.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="width x height per image, checked before decoding")
    p.add_argument("--max-batch", type=int, default=32, help="images per batch request")
    p.add_argument("--workers", type=int, default=0,
                   help="decode + inference threads (default: one per CPU core)")
    p.add_argument("--queue", type=int, default=0,
                   help="requests waiting for a worker before 503 (default: 4 per worker)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds for decode + inference, queue included (else 503)")
    p.add_argument("--read-timeout", type=float, default=15.0,
                   help="seconds a client may stay silent mid-upload (else 408)")
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    p.add_argument("--backend", choices=["auto", "onnx", "keras"], default="auto")
    p.set_defaults(func=cmd_serve)
    return parser


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

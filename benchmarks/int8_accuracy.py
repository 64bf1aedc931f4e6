"""int8 against float32 for the shipped model: accuracy on the fashion test split, and speed.

    python benchmarks/int8_accuracy.py [--rounds 5] [--model BUNDLE]
                                       [--heldout runs/study_lite0/folds/black_jeans ...]

The shipped bundle carries no split.json, so its split is rebuilt the way `fashionnet train`
made it (its own config.json: standard split, seed 42, near-duplicate groups) and checked
against the split sizes its metrics.json records. A copy of the bundle gets that split.json;
`fashionnet export COPY --int8` quantizes it, calibrated on 200 images of the *training* split;
then `evaluate --subset test` scores float32 and int8 on the same 505 test images. The decision
rule of issue 36: int8 becomes the runtime default only if exact match moves by <= 0.3 points.

Held-out combinations (``--heldout FOLD``, repeatable): a fold bundle of a
leave-one-combination-out study (`fashionnet study`), trained without one combination. A copy is
exported to ONNX when it has no model.onnx, quantized the same way (calibrated on its own
training split, which never holds the held-out combination), and float32 and int8 are scored by
`evaluate --subset test`: exact match over the fold's test split, and on its seen and unseen
(held-out) combinations.

Speed: model only (decoded images in memory), batch 1 latency and batch-32 img/s, float32 and
int8 taking turns for ``--rounds`` rounds; min / median / max. Writes
results/current/int8.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashion"
BAR_POINTS = 0.3


def rebuilt_split(bundle: Path) -> dict:
    from fashionnet.config import TrainConfig
    from fashionnet.data.sources import dataset_root, relative_key
    from fashionnet.training import load_dataset, split_dataset

    data = json.loads((bundle / "config.json").read_text())
    data["dataset"] = str(FASHION)
    config = TrainConfig.from_dict(data)
    dataset = load_dataset(config, progress=False)
    split = split_dataset(dataset, config)
    expected = json.loads((bundle / "metrics.json").read_text())["split"]
    got = {name: len(getattr(split, name)) for name in ("train", "val", "test")}
    if any(got[k] != expected[k] for k in got):
        raise SystemExit(f"rebuilt split {got} differs from the bundle's {expected}")
    root = dataset_root(FASHION)
    return {"paths": "relative to the dataset root (its folder, or the manifest's folder)",
            **{name: [relative_key(dataset.records[i].path, root) for i in getattr(split, name)]
               for name in ("train", "val", "test")}}


def speed(bundle: Path, rounds: int) -> dict:
    from fashionnet.inference import load

    predictors = {p: load(bundle, precision=p) for p in ("fp32", "int8")}
    photo = sorted((FASHION / "red_dress").iterdir())[0]
    image = predictors["fp32"].decode(photo)
    one, batch = image[None], np.repeat(image[None], 32, axis=0)
    for p in predictors.values():
        for _ in range(10):
            p.predict_probabilities(one)
            p.predict_probabilities(batch)
    out: dict = {p: {"batch1_ms": [], "batch32_img_s": []} for p in predictors}
    for _ in range(rounds):
        for name, p in predictors.items():
            t = time.perf_counter()
            for _ in range(100):
                p.predict_probabilities(one)
            out[name]["batch1_ms"].append(10 * (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(10):
                p.predict_probabilities(batch)
            out[name]["batch32_img_s"].append(320 / (time.perf_counter() - t))
    return out


def heldout_fold(fold: Path, work: Path) -> dict:
    """float32 against int8 on one leave-one-combination-out fold: overall, seen, unseen."""
    from fashionnet.evaluation import evaluate
    from fashionnet.runtime.export import export, export_int8

    fp32 = work / f"{fold.name}-fp32"
    shutil.copytree(fold, fp32, ignore=shutil.ignore_patterns("tensorboard", "*.png"))
    if not (fp32 / "model.onnx").is_file():
        export(fp32, ["onnx"])
    export_int8(fp32)  # its own training split: the held-out combination is not in it
    int8 = work / f"{fold.name}-int8"
    shutil.copytree(fp32, int8)
    shutil.move(int8 / "model.int8.onnx", int8 / "model.onnx")
    (fp32 / "model.int8.onnx").unlink()  # else precision "auto" would run int8 here too
    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        r = evaluate(path, FASHION, subset="test", progress=False, backend="onnx")
        out[name] = {k: r.get(k) for k in ("exact_match", "seen_exact_match",
                                           "unseen_exact_match", "count")}
    config = json.loads((fold / "config.json").read_text())
    return {"fold": str(fold), "held_out": config.get("holdout"), **out}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle (default: the shipped model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "current" / "int8")
    parser.add_argument("--ship", action="store_true",
                        help="if int8 passes the bar, write its model.int8.onnx (calibrated on "
                             "the training split) into the bundle, making it the default")
    parser.add_argument("--heldout", type=Path, action="append", default=[],
                        help="a leave-one-combination-out fold bundle (repeatable): int8 "
                             "against float32 on its seen and unseen combinations")
    args = parser.parse_args()
    from fashionnet.default_model import default_model_path
    from fashionnet.evaluation import evaluate
    from fashionnet.runtime.export import export_int8

    source = args.model or default_model_path()
    work = Path(tempfile.mkdtemp(prefix="fashionnet-int8-"))
    try:
        fp32 = work / "fp32"
        shutil.copytree(source, fp32, ignore=shutil.ignore_patterns("__init__.py",
                                                                     "__pycache__"))
        split = rebuilt_split(fp32)
        (fp32 / "split.json").write_text(json.dumps(split))
        calibration = [FASHION / key for key in split["train"]]
        export_int8(fp32, calibration)  # the training split calibrates, never the test one
        int8 = work / "int8"  # the same bundle whose model.onnx is the int8 one
        shutil.copytree(fp32, int8)
        shutil.move(int8 / "model.int8.onnx", int8 / "model.onnx")
        # Out of the float32 bundle while it is scored: with model.int8.onnx beside it,
        # precision "auto" (what evaluate loads) would run int8 in both rows.
        shutil.move(fp32 / "model.int8.onnx", work / "model.int8.onnx")
        reports = {name: evaluate(path, FASHION, subset="test", progress=False,
                                  backend="onnx") for name, path in
                   (("fp32", fp32), ("int8", int8))}
        shutil.move(work / "model.int8.onnx", fp32 / "model.int8.onnx")
        heldout = [heldout_fold(fold, work) for fold in args.heldout]
        timings = speed(fp32, args.rounds)
        int8_bytes = (fp32 / "model.int8.onnx").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def figures(report: dict) -> dict:
        return {"exact_match": report["exact_match"],
                **{f"{h}_accuracy": v["accuracy"] for h, v in report["heads"].items()},
                "count": report.get("count")}

    rows = {name: figures(r) for name, r in reports.items()}
    moved = 100 * (rows["int8"]["exact_match"] - rows["fp32"]["exact_match"])
    fold_moves = [100 * (f["int8"]["exact_match"] - f["fp32"]["exact_match"]) for f in heldout]
    accurate = abs(moved) <= BAR_POINTS and all(abs(m) <= BAR_POINTS for m in fold_moves)
    # int8 is worth being the default only if it is also faster (model only, batch 32)
    faster = statistics.median(timings["int8"]["batch32_img_s"]) > statistics.median(
        timings["fp32"]["batch32_img_s"])
    default = accurate and faster
    if args.ship and default:
        (Path(source) / "model.int8.onnx").write_bytes(int8_bytes)
        print(f"wrote {Path(source) / 'model.int8.onnx'}")
    speeds = {name: {k: spread(v) for k, v in t.items()} for name, t in timings.items()}
    ratio = spread([a / b for a, b in zip(timings["int8"]["batch32_img_s"],
                                          timings["fp32"]["batch32_img_s"])])
    result = {"command": "python benchmarks/int8_accuracy.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
              "date": time.strftime("%Y-%m-%d %H:%M"), "model": str(source),
              "test_split": rows, "exact_match_change_points": moved,
              "bar_points": BAR_POINTS, "within_bar": accurate, "int8_faster": faster,
              "int8_default": default, "speed": speeds,
              "int8_vs_fp32_batch32": ratio, "heldout_folds": heldout}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    heads = [k for k in rows["fp32"] if k.endswith("_accuracy")]
    lines = ["# int8 (static quantization) against float32", "",
             f"`{result['command']}` on {result['machine']}, {result['date']}; model "
             f"{'shipped default' if args.model is None else args.model}. Test split rebuilt "
             f"from the bundle's config (sizes checked against its metrics.json); int8 "
             f"calibrated on 200 training-split images; both scored by `evaluate --subset "
             f"test`.", "",
             "| model | exact match | " + " | ".join(heads) + " |",
             "| --- | --- | " + " | ".join("---" for _ in heads) + " |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['exact_match']:.2f} % | " +
                     " | ".join(f"{100 * r[h]:.2f} %" for h in heads) + " |")
    if heldout:
        lines += ["", "Held-out combinations: leave-one-combination-out fold bundles, each "
                  "quantized on its own training split, scored on its test split (which holds "
                  "every image of the held-out combination):", "",
                  "| held out | model | exact match | seen | unseen (held out) | images |",
                  "| --- | --- | --- | --- | --- | --- |"]
        keys = ("exact_match", "seen_exact_match", "unseen_exact_match")
        for fold in heldout:
            for name in ("fp32", "int8"):
                r = fold[name]
                cells = [f"{100 * r[k]:.2f} %" if r.get(k) is not None else "n/a" for k in keys]
                lines.append(f"| {', '.join(fold['held_out'] or [])} | {name} | "
                             + " | ".join(cells) + f" | {r['count']} |")
            change = [f"{100 * (fold['int8'][k] - fold['fp32'][k]):+.2f} points"
                      if None not in (fold["int8"].get(k), fold["fp32"].get(k)) else "n/a"
                      for k in keys]
            lines.append("| | int8 - fp32 | " + " | ".join(change) + " | |")
    why = []
    if not accurate:
        why.append(f"exact match moves by more than {BAR_POINTS} points")
    if not faster:
        why.append("it is not faster than float32 (model only, batches of 32, medians)")
    lines += ["", f"Exact match moves by {moved:+.2f} points on the test split"
              + (f", {', '.join(f'{m:+.2f}' for m in fold_moves)} on the held-out folds"
                 if fold_moves else "")
              + f" (bar: {BAR_POINTS}; and int8 must be faster): int8 "
              f"{'qualifies as' if default else 'is not'} the runtime default"
              f"{'' if default else ' (' + '; '.join(why) + '); it stays an option (`--int8`)'}"
              + ("" if args.ship or not default else " (not written into the bundle: "
                 "--ship does that)") + ".", "",
              "Speed, model only, float32 and int8 taking turns (min / median / max):", "",
              "| model | batch 1, ms | batches of 32, img/s |", "| --- | --- | --- |"]
    for name, s in speeds.items():
        b1, b32 = s["batch1_ms"], s["batch32_img_s"]
        lines.append(f"| {name} | {b1['min']:.2f} / {b1['median']:.2f} / {b1['max']:.2f} | "
                     f"{b32['min']:.0f} / {b32['median']:.0f} / {b32['max']:.0f} |")
    lines += ["", f"int8 / float32 at batch 32, per round: {ratio['min']:.2f} / "
              f"{ratio['median']:.2f} / {ratio['max']:.2f}."]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

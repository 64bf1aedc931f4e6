"""FashionNet on Ray, measured: labelling images/s and training time, 1 vs 2 Ray workers.

    python benchmarks/cluster_bench.py [--rounds 3] [--skip-training] [--model BUNDLE]

Labelling: plain ``fashionnet classify DIR`` against ``fashionnet classify --engine ray DIR
--output OUT --workers 1`` and ``--workers 2``, each in a fresh process, interleaved
(plain, ray 1, ray 2, plain, ...) ``--rounds`` times on the full-size sample (210 photos)
and ``--large-rounds`` times on ``../shared/datasets/apparel`` (5,819 photos), with the
shipped default model (ONNX,
64 px). Images/s are the figures each command prints (from the model's load to the last
answer for plain; from the start of the Ray pipeline to the last Parquet shard for Ray, Ray's
own start reported apart); wall seconds are the whole process.

Training: ``fashionnet train --dataset ../shared/datasets/fashion --preset quick`` (12 epochs,
64 px) in one process, on 1 Ray worker and on 2 Ray workers: wall time, training images/s
(``metrics.json``) and test accuracy of each bundle, one run each (``--train-epochs`` for a
shorter run).

Writes results/current/cluster/bench.json and results/current/cluster/bench.md. Records the load average
before and after: on a shared machine the figures move with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
DATASETS = {"full-size sample (210 photos)": SHARED / "fashion-fullsize-sample",
            "apparel (5,819 photos)": SHARED / "apparel"}
FASHION = SHARED / "fashion"
FASHIONNET = [sys.executable, "-m", "fashionnet.cli"]
PLAIN_LINE = re.compile(r"classified (\d+) image\(s\).* in ([\d.]+) s \(([\d.]+) img/s\)")
RAY_LINE = re.compile(r"labelled (\d+) image\(s\).* in ([\d.]+) s \(([\d.]+) img/s\)")


def run(argv: list[str], pattern: re.Pattern | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    out = {"wall_seconds": round(wall, 2)}
    if pattern is not None:
        match = pattern.search(done.stderr)
        if not match:
            sys.exit(f"no summary line from {' '.join(argv)}:\n{done.stderr[-2000:]}")
        out.update(images=int(match.group(1)), seconds=float(match.group(2)),
                   images_per_second=float(match.group(3)))
    return out


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": round(statistics.median(values), 2),
            "max": max(values), "runs": values}


def labelling(model: Path, rounds: int, large_rounds: int, scratch: Path) -> dict:
    results: dict = {}
    for name, folder in DATASETS.items():
        if not folder.is_dir():
            print(f"skipping {name}: {folder} not found")
            continue
        runs: dict[str, list[dict]] = {"plain classify": [], "ray, 1 worker": [],
                                       "ray, 2 workers": []}
        for r in range(rounds if "sample" in name else large_rounds):
            runs["plain classify"].append(run(
                [*FASHIONNET, "classify", "--model", str(model), str(folder), "--format", "csv"],
                PLAIN_LINE))
            for workers in (1, 2):
                out = scratch / f"labels-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                got = run([*FASHIONNET, "classify", "--engine", "ray", "--model", str(model),
                           str(folder), "--output", str(out), "--workers", str(workers)],
                          RAY_LINE)
                summary = json.loads((out / "_summary.json").read_text())
                got.update(ray_start_seconds=summary["ray_start_seconds"],
                           errors=summary["errors"])
                runs[f"ray, {workers} worker{'s' if workers > 1 else ''}"].append(got)
            print(f"{name} round {r + 1}: " + ", ".join(
                f"{k} {v[-1]['images_per_second']} img/s" for k, v in runs.items()), flush=True)
        results[name] = {
            side: {"images": rows[0]["images"],
                   "images_per_second": spread([x["images_per_second"] for x in rows]),
                   "wall_seconds": spread([x["wall_seconds"] for x in rows]),
                   **({"ray_start_seconds": spread([x["ray_start_seconds"] for x in rows])}
                      if "ray_start_seconds" in rows[0] else {})}
            for side, rows in runs.items()}
    return results


TRAIN_SIDES = {"one process": [], "ray, 1 worker": ["--workers", "1"],
               "ray, 2 workers": ["--workers", "2"]}


def training(epochs: int | None, scratch: Path, sides: list[str]) -> dict:
    if not FASHION.is_dir():
        return {}
    results = {}
    extra = ["--epochs", str(epochs)] if epochs else []
    for side, flags in ((s, TRAIN_SIDES[s]) for s in sides):
        out = scratch / f"run-{len(results)}"
        got = run([*FASHIONNET, "train", "--dataset", str(FASHION), "--preset", "quick", *extra,
                   "--output", str(out), "--quiet", *flags])
        metrics = json.loads((out / "metrics.json").read_text())
        test = metrics["test"]
        results[side] = {
            "wall_seconds": got["wall_seconds"], "fit_seconds": metrics["train_seconds"],
            "train_images_per_second": metrics["train_images_per_second"],
            "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
            "test_exact_match": round(test["exact_match"], 4),
            "test_accuracy": {h: round(v["accuracy"], 4) for h, v in test["heads"].items()},
        }
        print(f"training, {side}: {results[side]}", flush=True)
    return results


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(data: dict) -> str:
    lines = [f"`python benchmarks/cluster_bench.py` on {data['machine']}, {data['date']}; load "
             f"average {data['load_before']} before, {data['load_after']} after.", ""]
    if data["labelling"]:
        lines += ["### Labelling (shipped default model, ONNX, 64 px)", "",
                  "| dataset | engine | images/s min / median / max | wall s (median) | "
                  "Ray start s (median) |", "| --- | --- | --- | --- | --- |"]
        for name, sides in data["labelling"].items():
            for side, row in sides.items():
                ips, wall = row["images_per_second"], row["wall_seconds"]
                start = row.get("ray_start_seconds", {}).get("median", "–")
                lines.append(f"| {name} | {side} | {ips['min']} / {ips['median']} / {ips['max']} "
                             f"| {wall['median']} | {start} |")
        lines.append("")
    if data["training"]:
        lines += ["### Training (fashion, `--preset quick`)", "",
                  "| run | wall s | fit s | train images/s | epochs (best) | test exact match "
                  "| test accuracy |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for side, row in data["training"].items():
            acc = ", ".join(f"{h} {100 * a:.2f} %" for h, a in row["test_accuracy"].items())
            lines.append(f"| {side} | {row['wall_seconds']} | {row['fit_seconds']} | "
                         f"{row['train_images_per_second']} | {row['epochs_run']} "
                         f"({row['best_epoch']}) | {100 * row['test_exact_match']:.2f} % "
                         f"| {acc} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "src/fashionnet/default_model")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, sample")
    parser.add_argument("--large-rounds", type=int, default=3,
                        help="interleaved rounds on apparel (5,819 photos: minutes each)")
    parser.add_argument("--train-epochs", type=int, help="default: the quick preset's 12")
    parser.add_argument("--skip-labelling", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-sides", default=";".join(TRAIN_SIDES),
                        help=f"';'-separated, of: {'; '.join(TRAIN_SIDES)}")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "current" / "cluster")
    args = parser.parse_args()
    data = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load()}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as scratch:
        data["labelling"] = ({} if args.skip_labelling
                             else labelling(args.model, args.rounds, args.large_rounds,
                                            Path(scratch)))
        data["training"] = {} if args.skip_training else training(
            args.train_epochs, Path(scratch), args.train_sides.split(";"))
    data["load_after"] = load()
    args.output.mkdir(parents=True, exist_ok=True)
    name = "bench" if not args.skip_labelling else "bench_training"
    if args.train_sides != ";".join(TRAIN_SIDES):
        name += "_" + "_".join(re.sub(r"\W+", "", s) for s in args.train_sides.split(";"))
    (args.output / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.output / f"{name}.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

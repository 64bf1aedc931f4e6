"""Both backbones side by side, as shipped (ONNX, float32): cold start, one photo, batches.

    python benchmarks/backbone_speed.py SCRATCH_BUNDLE LITE0_BUNDLE [--rounds 3]

Per round and model, taking turns: the cold start of a new process that loads the bundle and
answers one photo (``fashionnet.load`` + ``predict_files``); one photo end to end in-process
(decode + model, median of 20); and the model alone on batches of 32 decoded images (img/s).
Min / median / max over the rounds. The load average is recorded: on a shared machine the
absolute figures move; the two models are compared within each round. Writes
results/current/backbone_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "datasets" / "fashion" / "red_dress"

COLD = """
import sys, time
t = time.perf_counter()
from fashionnet.inference import load
p = load(sys.argv[1], precision="fp32")
p.predict_files([sys.argv[2]])
print(time.perf_counter() - t)
"""


def one_round(bundle: Path, photo: Path) -> dict:
    from fashionnet.inference import load

    out = subprocess.run([sys.executable, "-c", COLD, str(bundle), str(photo)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    cold = float(out.stdout.split()[-1])
    predictor = load(bundle, precision="fp32")
    predictor.predict_files([photo])  # warm
    times = []
    for _ in range(20):
        started = time.perf_counter()
        predictor.predict_files([photo])
        times.append(time.perf_counter() - started)
    size = predictor.bundle.preprocessing.size
    batch = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    predictor.predict_probabilities(batch)
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 4:
        predictor.predict_probabilities(batch)
        n += 32
    return {"cold_start_s": cold, "one_photo_ms": 1000 * statistics.median(times),
            "batch32_img_s": n / (time.perf_counter() - started)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs=2, type=Path)
    parser.add_argument("--names", default="scratch (64 px),efficientnet-lite0 (224 px)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "current" / "backbone_speed")
    args = parser.parse_args()
    names = args.names.split(",")
    photo = sorted(PHOTO.iterdir())[0]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, bundle in zip(names, args.bundles):
            runs[name].append(one_round(bundle, photo))
    summary = {"load_average_before": load_before, "load_average_after": os.getloadavg()[0],
               "rounds": args.rounds, "models": {}}
    for name, bundle in zip(names, args.bundles):
        size = sum(p.stat().st_size for p in bundle.glob("model.onnx")) / 1e6
        summary["models"][name] = {"bundle": str(bundle), "onnx_mb": round(size, 1), **{
            key: [min(r[key] for r in runs[name]), statistics.median(r[key] for r in runs[name]),
                  max(r[key] for r in runs[name])] for key in runs[name][0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    fmt = lambda v, d: " / ".join(f"{x:.{d}f}" for x in v)  # noqa: E731
    lines = ["# Both backbones as shipped (ONNX, float32), side by side", "",
             f"`python benchmarks/backbone_speed.py {' '.join(map(str, args.bundles))}` on this "
             f"2-core CPU, load average {load_before:.1f} before and "
             f"{summary['load_average_after']:.1f} after (other jobs running); min / median / "
             f"max over {args.rounds} interleaved rounds.", "",
             "| model | ONNX size | cold start (s) | one photo, decode + model (ms) | "
             "batches of 32 (img/s) |", "| --- | --- | --- | --- | --- |"]
    for name, m in summary["models"].items():
        lines.append(f"| {name} | {m['onnx_mb']} MB | {fmt(m['cold_start_s'], 2)} | "
                     f"{fmt(m['one_photo_ms'], 1)} | {fmt(m['batch32_img_s'], 0)} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime session options on this machine: threads x spinning, float32 and int8.

    python benchmarks/session_options.py [--model BUNDLE] [--rounds 7]

Every configuration loads the same bundle (`fashionnet.inference.load` with ``threads``,
``spin`` and ``precision``) and takes turns with the others for ``--rounds`` rounds: 100
batch-1 calls (wall ms per call, and CPU ms per call: every thread of the process), then 5
batches of 32 (img/s). Min / median / max over rounds. Writes results/current/onnx_session_options.
{md,json}. On a machine shared with other jobs, a configuration that spins waits for the
cores it spins on: run it there, at the same time of day, for the answer that applies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "current" / "onnx_session_options")
    args = parser.parse_args()
    from fashionnet.default_model import default_model_path
    from fashionnet.inference import load
    from fashionnet.runtime.runners import cores

    model = args.model or default_model_path()
    precisions = ["fp32"] + (["int8"] if (Path(model) / "model.int8.onnx").is_file() else [])
    configs = {(prec, threads, spin): load(model, precision=prec, threads=threads, spin=spin)
               for prec in precisions for threads in sorted({1, cores()})
               for spin in (True, False)}
    size = next(iter(configs.values())).bundle.preprocessing.size
    one = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = np.repeat(one, 32, axis=0)
    for p in configs.values():
        for _ in range(10):
            p.predict_probabilities(one)
        p.predict_probabilities(batch)
    res = {k: {"batch1_ms": [], "cpu_ms_per_call": [], "batch32_img_s": []} for k in configs}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for key, p in configs.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(100):
                p.predict_probabilities(one)
            res[key]["batch1_ms"].append(10 * (time.perf_counter() - wall))
            res[key]["cpu_ms_per_call"].append(10 * (time.process_time() - cpu))
            wall = time.perf_counter()
            for _ in range(5):
                p.predict_probabilities(batch)
            res[key]["batch32_img_s"].append(160 / (time.perf_counter() - wall))

    def mmm(v, fmt):
        return " / ".join(fmt.format(x) for x in (min(v), statistics.median(v), max(v)))

    lines = ["# ONNX Runtime session options, interleaved", "",
             f"`python benchmarks/session_options.py {' '.join(sys.argv[1:])}` on "
             f"{platform.machine()}, {cores()} cores, {time.strftime('%Y-%m-%d %H:%M')}; load "
             f"average before {load_before:.1f}. Model: "
             f"{'shipped default' if args.model is None else args.model}. Min / median / max "
             f"over {args.rounds} rounds; inter-op threads 1, sequential execution in all.", "",
             "| precision | intra-op threads | spinning | batch 1, ms | CPU ms per batch-1 call "
             "| batches of 32, img/s |", "| --- | --- | --- | --- | --- | --- |"]
    for (prec, threads, spin), r in res.items():
        lines.append(f"| {prec} | {threads} | {'on' if spin else 'off'} | "
                     f"{mmm(r['batch1_ms'], '{:.2f}')} | {mmm(r['cpu_ms_per_call'], '{:.2f}')} | "
                     f"{mmm(r['batch32_img_s'], '{:.0f}')} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(
        {"load_average_before": load_before, "rounds": args.rounds,
         "results": [{"precision": k[0], "threads": k[1], "spin": k[2], **v}
                     for k, v in res.items()]}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

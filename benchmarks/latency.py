"""Batch-1 ONNX Runtime latency of several models, interleaved in one process.

    python benchmarks/latency.py runs/default3 runs/default4 --recipe

Absolute latencies on a shared machine drift by 2x from one hour to the next (results/current/
benchmarks.md); a comparison counts only when the models take turns in one run. Each round
times every model for ``--calls`` calls on the same random 1-image batch; the table gives
min / median / max over ``--rounds`` rounds of the mean time per call. ``--recipe`` adds the
recipe network (untrained, 96 px: speed does not depend on the weights) exported to ONNX, the
model behind the 2.97 ms the issue's target was set from. Writes results/current/latency.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from bench import ROOT, recipe_model, spread  # benchmarks/ is on sys.path when run as a script


def recipe_onnx(folder: Path) -> Path:
    """The recipe network at 96 px, untrained, exported to ONNX."""
    model = recipe_model()
    model(np.zeros((1, 96, 96, 3), np.float32))
    path = folder / "recipe.onnx"
    model.export(str(path), format="onnx", verbose=False)
    return path


def session(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = sess.get_inputs()[0]
    size = spec.shape[1] if isinstance(spec.shape[1], int) else 64
    image = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    return lambda: sess.run(None, {spec.name: image})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path, help="bundle folders with model.onnx")
    parser.add_argument("--recipe", action="store_true", help="add the recipe network (96 px)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "current" / "latency")
    args = parser.parse_args()

    models = {str(b): b / "model.onnx" for b in args.bundles}
    with tempfile.TemporaryDirectory() as tmp:
        if args.recipe:
            models["recipe network, 96 px (untrained)"] = recipe_onnx(Path(tmp))
        calls = {name: session(path) for name, path in models.items()}
        for call in calls.values():  # warm-up: first calls allocate
            for _ in range(50):
                call()
        per_call: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    call()
                per_call[name].append(1000 * (time.perf_counter() - start) / args.calls)

    rows = {name: {**spread(v), "rounds": v} for name, v in per_call.items()}
    load = os.getloadavg()
    lines = [
        "# Batch-1 latency, ONNX Runtime, interleaved",
        "",
        f"`python benchmarks/latency.py {' '.join(map(str, args.bundles))}"
        f"{' --recipe' if args.recipe else ''}` on {platform.machine()}, {os.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d %H:%M')}; load average after the run "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}. {args.rounds} rounds of"
        f" {args.calls} calls per model, models taking turns; ms per call.",
        "",
        "| model | min | median | max |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {r['min']:.3f} | {r['median']:.3f} | {r['max']:.3f} |"
          for name, r in rows.items()),
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text("\n".join(lines))
    args.output.with_suffix(".json").write_text(json.dumps(
        {"rounds": args.rounds, "calls": args.calls, "load_average": load, "models": rows},
        indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

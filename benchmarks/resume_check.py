"""Kill -9 a training run at a random instant, `--resume` it, compare with uninterrupted runs.

    python benchmarks/resume_check.py [--dataset ../shared/datasets/fashion] [--epochs 10]

Runs, all with the same seed (so the same split and test images):
  A, A2  uninterrupted, twice: what the same command gives twice on this CPU;
  R      killed with SIGKILL at a random second of its training, then resumed until done.
"Noise" is stated two ways: |A - A2| (run-to-run, same seed) and the bootstrap 95 %
interval of A's test exact match (the test set's own sampling noise). Writes
results/current/resume.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(dataset: Path, out: Path, epochs: int, seed: int, resume: bool) -> list[str]:
    return [sys.executable, "-m", "fashionnet.cli", "train", "--dataset", str(dataset),
            "--output", str(out), "--epochs", str(epochs), "--seed", str(seed), "--quiet",
            *(["--resume"] if resume else [])]


def run(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as f:
        subprocess.run(cmd, stdout=f, stderr=f, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - started


def figures(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    return {"exact_match": test["exact_match"],
            **{f"{h}_accuracy": v["accuracy"] for h, v in test["heads"].items()},
            "count": test["count"], "epochs_run": metrics["epochs_run"]}


def bootstrap_halfwidth(p: float, n: int, draws: int = 4000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    samples = rng.binomial(n, p, size=draws) / n
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float((hi - lo) / 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path,
                        default=ROOT.parent / "shared" / "datasets" / "fashion")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashionnet-resume-check"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "current" / "resume")
    parser.add_argument("--reuse", action="store_true",
                        help="only write the report again from the runs in --work")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        kill = json.loads((args.work / "kill.json").read_text())
        return report(args, kill["seconds"], kill["kill_at"], kill["done_at_kill"])
    log = args.work / "log.txt"
    for name in ("A", "A2", "R"):
        subprocess.run(["rm", "-rf", str(args.work / name), str(args.work / f".{name}.run")])
    seconds = {"A": run(train_cmd(args.dataset, args.work / "A", args.epochs, args.seed,
                                  False), log)}
    seconds["A2"] = run(train_cmd(args.dataset, args.work / "A2", args.epochs, args.seed,
                                  False), log)
    # R: killed at a random instant of its training (after decoding, before the last epoch).
    kill_at = random.Random(args.seed).uniform(0.3, 0.85) * seconds["A"]
    started = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.Popen(train_cmd(args.dataset, args.work / "R", args.epochs,
                                          args.seed, False), stdout=f, stderr=f,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        try:
            proc.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    state_file = args.work / ".R.run" / "checkpoint" / "state.json"
    done_at_kill = json.loads(state_file.read_text())["epochs_done"] if state_file.is_file() else 0
    seconds["R"] = time.perf_counter() - started
    seconds["R"] += run(train_cmd(args.dataset, args.work / "R", args.epochs, args.seed, True),
                        log)
    (args.work / "kill.json").write_text(json.dumps({
        "seconds": seconds, "kill_at": kill_at, "done_at_kill": done_at_kill}))
    return report(args, seconds, kill_at, done_at_kill)


def report(args, seconds: dict, kill_at: float, done_at_kill: int) -> int:
    result = {name: figures(args.work / name) for name in ("A", "A2", "R")}
    a, a2, r = result["A"], result["A2"], result["R"]
    summary = {
        "dataset": str(args.dataset), "epochs": args.epochs, "seed": args.seed,
        "killed_after_seconds": round(kill_at, 1), "epochs_done_at_kill": done_at_kill,
        "runs": result, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "resumed_minus_A": {k: r[k] - a[k] for k in a if k.endswith(("match", "accuracy"))},
        "A2_minus_A": {k: a2[k] - a[k] for k in a if k.endswith(("match", "accuracy"))},
        "test_ci95_halfwidth_exact": bootstrap_halfwidth(a["exact_match"], a["count"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = ["| run | exact match | " + " | ".join(k for k in a if k.endswith("accuracy"))
            + " | epochs | seconds |", "| --- " * (4 + sum(k.endswith("accuracy") for k in a))
            + "|"]
    for name, label in (("A", "uninterrupted"), ("A2", "uninterrupted, again"),
                        ("R", f"killed after epoch {done_at_kill}, resumed")):
        f = result[name]
        rows.append(f"| {label} | {100 * f['exact_match']:.2f} % | "
                    + " | ".join(f"{100 * f[k]:.2f} %" for k in f if k.endswith("accuracy"))
                    + f" | {f['epochs_run']} | {seconds[name]:.0f} |")
    text = "\n".join([
        "# Resume after kill -9", "",
        f"`python benchmarks/resume_check.py --dataset {args.dataset} --epochs {args.epochs}` "
        f"(seed {args.seed}, test split of {a['count']} images, this 2-core CPU).", "",
        *rows, "",
        f"Resumed minus uninterrupted, exact match: "
        f"{100 * summary['resumed_minus_A']['exact_match']:+.2f} points; the same command "
        f"run twice: {100 * summary['A2_minus_A']['exact_match']:+.2f} points; the test set's "
        f"bootstrap 95 % half-width: ±{100 * summary['test_ci95_halfwidth_exact']:.2f} "
        f"points.", "",
        "A resumed run restores the weights, the optimizer (its step count, so the learning-rate "
        "schedule goes on), the best epoch and the history; the order in which the images are "
        "shuffled, and the random draws of the augmentations, start again from their seeds. So "
        "it is not bit-equal to an uninterrupted run (which this CPU reproduces exactly), but "
        "within the test set's own sampling noise.", ""])
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

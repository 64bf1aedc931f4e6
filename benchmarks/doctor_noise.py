"""How well does `fashionnet doctor` find wrong labels? Plant them, then count.

Writes a manifest of ``../shared/datasets/fashion`` (paths point at the shared files: no image
is copied) in which a seeded 5 % of the colour labels and 5 % of the category labels are moved
to another class; trains a quick model on that noisy manifest (unless the run exists); runs the
doctor with the model; and scores the flagged images per head against the planted ones
(precision, recall, F1) into ``results/current/doctor/noise.md`` and ``noise.json``.

    python benchmarks/doctor_noise.py                      # prepare, train (~5-10 min), score
    python benchmarks/doctor_noise.py --prepare-only       # just the noisy manifest
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from fashionnet.data.sources import read_dataset  # noqa: E402


def plant_noise(dataset: Path, rate: float, seed: int) -> tuple[list[dict], dict[str, list[str]]]:
    """Rows of a noisy manifest (absolute paths) and, per head, the paths whose label moved.

    Each head is noised independently: ``round(rate * n)`` images drawn without replacement,
    each label moved to another class of that head drawn uniformly.
    """
    records, heads = read_dataset(dataset)
    rng = np.random.default_rng(seed)
    rows = [{"path": str(r.path.resolve()), **{h: r.labels[h] for h in heads}} for r in records]
    planted: dict[str, list[str]] = {}
    for head in heads:
        classes = sorted({row[head] for row in rows})
        chosen = rng.choice(len(rows), size=round(rate * len(rows)), replace=False)
        for i in sorted(chosen):
            others = [c for c in classes if c != rows[i][head]]
            rows[i][head] = others[int(rng.integers(len(others)))]
        planted[head] = sorted(rows[i]["path"] for i in chosen)
    return rows, planted


def write_manifest(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def score(flagged: set[str], planted: set[str]) -> dict:
    hits = len(flagged & planted)
    precision = hits / len(flagged) if flagged else float("nan")
    recall = hits / len(planted) if planted else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"flagged": len(flagged), "planted": len(planted), "found": hits,
            "precision": precision, "recall": recall, "f1": f1}


def flagged_by_head(issues_json: Path, root: Path) -> dict[str, dict[str, set[str]]]:
    """{head: {source: absolute paths flagged with a label issue}} from the doctor's issues.json."""
    out: dict[str, dict[str, set[str]]] = {}
    for row in json.loads(issues_json.read_text())["issues"]:
        if row["issue"] != "label_issue":
            continue
        path = str((root / row["path"]).resolve())
        per = out.setdefault(row["head"], {})
        per.setdefault("all", set()).add(path)
        per.setdefault(row["source"], set()).add(path)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared/datasets/fashion")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fashionnet_doctor_noise"),
                        help="where the noisy manifest and the doctor's report go")
    parser.add_argument("--run", type=Path, default=REPO / "runs/doctor_noisy",
                        help="model trained on the noisy manifest (trained when missing)")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--results", type=Path, default=REPO / "results/current/doctor")
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()

    rows, planted = plant_noise(args.dataset, args.rate, args.seed)
    manifest = args.work / "noisy.csv"
    write_manifest(rows, manifest)
    (args.work / "planted.json").write_text(json.dumps(planted, indent=1))
    print(f"wrote {manifest} ({len(rows)} rows; planted "
          + ", ".join(f"{h} {len(p)}" for h, p in planted.items()) + ")")
    if args.prepare_only:
        return 0
    fashionnet = [sys.executable, "-m", "fashionnet.cli"]
    if not (args.run / "labels.json").is_file():
        subprocess.run([*fashionnet, "train", "--dataset", str(manifest), "--allow-outside",
                        "--preset", "quick", "--output", str(args.run), "--quiet"], check=True)
    report = args.work / "report"
    started = time.perf_counter()
    subprocess.run([*fashionnet, "doctor", "--dataset", str(manifest), "--allow-outside",
                    "--model", str(args.run), "--output", str(report), "--overwrite"], check=True)
    seconds = time.perf_counter() - started
    flagged = flagged_by_head(report / "issues.json", manifest.parent)
    results: dict = {"dataset": str(args.dataset), "rate": args.rate, "seed": args.seed,
                     "images": len(rows), "model": str(args.run), "doctor_seconds": seconds,
                     "machine": f"{platform.machine()}, {platform.python_version()}",
                     "heads": {}}
    for head, paths in planted.items():
        per = flagged.get(head, {})
        held_out = _held_out(args.run, manifest.parent)
        results["heads"][head] = {
            "all": score(per.get("all", set()), set(paths)),
            "held_out": score(per.get("held-out", set()), set(paths) & held_out),
            "cross_validated": score(per.get("cross-validated", set()), set(paths) - held_out),
        }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "noise.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "noise.md").write_text(render(results, args))
    print((args.results / "noise.md").read_text())
    return 0


def _held_out(run: Path, root: Path) -> set[str]:
    split = json.loads((run / "split.json").read_text())
    return {str((root / p).resolve()) for name in ("val", "test") for p in split[name]}


def render(results: dict, args: argparse.Namespace) -> str:
    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.1f} %"

    lines = ["# Doctor: planted label noise", "",
             f"`python benchmarks/doctor_noise.py` — {results['images']} images of "
             f"`{args.dataset.name}`, {100 * args.rate:.0f} % of each head's labels moved to "
             f"another class (seed {args.seed}); model `{args.run.name}` trained on the noisy "
             f"labels with `--preset quick`; doctor {results['doctor_seconds']:.0f} s "
             f"({results['machine']}).", "",
             "| head | out-of-sample source | planted | flagged | found | precision | recall | F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = {"all": "**all images**", "held_out": "run's own held-out predictions",
             "cross_validated": "cross-validated on embeddings"}
    for head, per in results["heads"].items():
        for key, name in names.items():
            s = per[key]
            lines.append(f"| {head} | {name} | {s['planted']} | {s['flagged']} | {s['found']} | "
                         f"{pct(s['precision'])} | {pct(s['recall'])} | {pct(s['f1'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""What `fashionnet doctor` finds on ``../shared/datasets/apparel`` as published.

Trains a quick model on apparel (unless the run exists), runs the doctor with it, and writes
``results/current/doctor/apparel/``: ``summary.md`` (issue counts, the top flagged label issues,
named by their path in the dataset) and ``top.json``. No image of the dataset, not even a
thumbnail, is written into the repository: its README forbids committing them; open the
paths in ``../shared/datasets/apparel`` (or the doctor's own report.html) to see them.

    python benchmarks/doctor_apparel.py          # ~10-15 min of training the first time
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared/datasets/apparel")
    parser.add_argument("--run", type=Path, default=REPO / "runs/doctor_apparel")
    parser.add_argument("--report", type=Path, default=Path("/tmp/fashionnet_doctor_apparel"))
    parser.add_argument("--results", type=Path, default=REPO / "results/current/doctor/apparel")
    parser.add_argument("--top", type=int, default=12, help="label issues listed")
    parser.add_argument("--reuse", action="store_true", help="keep the doctor's report if present")
    args = parser.parse_args()

    fashionnet = [sys.executable, "-m", "fashionnet.cli"]
    if not (args.run / "labels.json").is_file():
        subprocess.run([*fashionnet, "train", "--dataset", str(args.dataset), "--preset", "quick",
                        "--output", str(args.run), "--quiet"], check=True)
    if not (args.reuse and (args.report / "issues.json").is_file()):
        subprocess.run([*fashionnet, "doctor", "--dataset", str(args.dataset), "--model",
                        str(args.run), "--output", str(args.report), "--overwrite"], check=True)
    document = json.loads((args.report / "issues.json").read_text())
    issues = document["issues"]
    top = [row for row in issues if row["issue"] == "label_issue"][:args.top]
    args.results.mkdir(parents=True, exist_ok=True)
    for old in args.results.glob("*.jpg"):  # thumbnails an earlier version wrote
        old.unlink()
    conflicts = [row for row in issues if row["issue"] == "duplicate_label_conflict"]
    summary = {key: document[key] for key in ("images", "issue_counts", "out_of_sample_sources",
                                              "notes", "seconds")}
    (args.results / "top.json").write_text(json.dumps(
        {**summary, "label_issues": top, "duplicate_label_conflicts": conflicts[:20]},
        indent=1) + "\n")
    (args.results / "summary.md").write_text(render(summary, top, conflicts, args))
    print((args.results / "summary.md").read_text())
    return 0


def render(summary: dict, top: list[dict], conflicts: list[dict],
           args: argparse.Namespace) -> str:
    lines = ["# Doctor on apparel, as published", "",
             f"`python benchmarks/doctor_apparel.py`: {summary['images']} images, model "
             f"`{args.run.name}` (`fashionnet train --dataset {args.dataset.name} --preset "
             f"quick`), doctor {summary['seconds']:.0f} s on this 2-core CPU.", "",
             "| issue | images |", "| --- | --- |"]
    lines += [f"| {name} | {count} |" for name, count in summary["issue_counts"].items()]
    lines += ["", "Out-of-sample sources: " + "; ".join(
        f"{head}: {s['held-out']} held-out, {s['cross-validated']} cross-validated"
        for head, s in summary["out_of_sample_sources"].items()) + ".", "",
        "## Top label issues (worst first)", "",
        f"Images named by their path in `{args.dataset}` (none is committed here).", "",
        "| image | head | given | suggested | score | from |",
        "| --- | --- | --- | --- | --- | --- |"]
    for row in top:
        lines.append(f"| `{row['path']}` | {row['head']} | {row['given']} | "
                     f"{row['suggested']} | {row['score']:.3f} | {row['source']} |")
    groups = sorted({row["group"] for row in conflicts})
    lines += ["", f"Duplicate sets whose labels disagree: {len(groups)} (first ones: "
              + ", ".join(groups[:5]) + ")." if groups else ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Per-fold and per-seed figures of the default's fashion study over several seeds.

    python benchmarks/levers/study_default_seeds/summarise.py results/levers/study_default_mirror/study.json \
        results/levers/study_default_seeds/seed7.json results/levers/study_default_seeds/seed11.json
"""

import json
import statistics
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    studies = [json.loads(Path(p).read_text()) for p in paths]
    seeds = [s["config"]["seed"] for s in studies]
    folds = list(studies[0]["folds"])
    print("| held-out | " + " | ".join(f"seed {s}: unseen / seen" for s in seeds)
          + " | mean over seeds: unseen / seen |")
    print("| --- |" + " --- |" * (len(seeds) + 1))
    for fold in folds:
        cells = [(s["folds"][fold]["unseen_exact_match"] * 100, s["folds"][fold]["seen_exact_match"] * 100)
                 for s in studies if fold in s["folds"]]
        mean = (statistics.mean(c[0] for c in cells), statistics.mean(c[1] for c in cells))
        print(f"| {fold} | " + " | ".join(f"{u:.1f} % / {n:.1f} %" for u, n in cells)
              + f" | {mean[0]:.1f} % / {mean[1]:.1f} % |")
    rows = []
    for s in studies:
        unseen = [f["unseen_exact_match"] * 100 for f in s["folds"].values()]
        seen = [f["seen_exact_match"] * 100 for f in s["folds"].values()]
        worst = min(s["folds"], key=lambda k: s["folds"][k]["unseen_exact_match"])
        rows.append((statistics.mean(unseen), min(unseen), worst, statistics.mean(seen)))
    print("| **study mean** | " + " | ".join(f"**{u:.2f} %** (worst {w:.1f} %, {k}) / **{n:.2f} %**"
                                         for u, w, k, n in rows)
          + f" | **{statistics.mean(r[0] for r in rows):.2f} %** / "
            f"**{statistics.mean(r[3] for r in rows):.2f} %** |")
    print()
    unseen, seen = [r[0] for r in rows], [r[3] for r in rows]
    print(f"unseen mean per seed: min {min(unseen):.2f}, max {max(unseen):.2f}; "
          f"seen: min {min(seen):.2f}, max {max(seen):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""A lever against the default, seed by seed, on the same splits (the seed draws the split).

    python benchmarks/levers/study_balance/compare.py \
        results/levers/study_default_mirror/study.json:results/levers/study_balance/seed42.json \
        results/levers/study_default_seeds/seed7.json:results/levers/study_balance/seed7.json

Each argument is BEFORE:AFTER, two study.json files run at the same seed. The means are over
the folds AFTER has (a study stopped early is compared on the folds it finished).
"""

import json
import statistics
import sys
from pathlib import Path


def figures(study: dict, only: list[str]) -> tuple[float, float, str, float]:
    folds = {k: study["folds"][k] for k in only}
    unseen = {k: f["unseen_exact_match"] * 100 for k, f in folds.items()}
    worst = min(unseen, key=unseen.get)
    seen = statistics.mean(f["seen_exact_match"] * 100 for f in folds.values())
    return statistics.mean(unseen.values()), unseen[worst], worst, seen


def main(pairs: list[str]) -> None:
    print("| seed | held-out | unseen before → after | seen before → after | unseen category "
          "before → after |")
    print("| --- | --- | --- | --- | --- |")
    totals = []
    for pair in pairs:
        before, after = (json.loads(Path(p).read_text()) for p in pair.split(":"))
        seed = after["config"]["seed"]
        if before["config"]["seed"] != seed:
            raise SystemExit(f"{pair}: the two studies ran at different seeds")
        for fold, new in after["folds"].items():
            old = before["folds"][fold]
            print(f"| {seed} | {fold} | {old['unseen_exact_match'] * 100:.1f} → "
                  f"{new['unseen_exact_match'] * 100:.1f} % | {old['seen_exact_match'] * 100:.1f}"
                  f" → {new['seen_exact_match'] * 100:.1f} % | "
                  f"{old['unseen_head_accuracy']['category'] * 100:.1f} → "
                  f"{new['unseen_head_accuracy']['category'] * 100:.1f} % |")
        shared = list(after["folds"])
        totals.append((seed, figures(before, shared), figures(after, shared)))
    print()
    print("| seed | mean unseen | worst fold | mean seen |")
    print("| --- | --- | --- | --- |")
    for seed, (u0, w0, k0, s0), (u1, w1, k1, s1) in totals:
        print(f"| {seed} | {u0:.2f} → **{u1:.2f} %** | {w0:.1f} ({k0}) → **{w1:.1f} %** ({k1}) "
              f"| {s0:.2f} → **{s1:.2f} %** |")
    if len(totals) > 1:
        mean = [statistics.mean(t[i][j] for t in totals) for i in (1, 2) for j in (0, 3)]
        print(f"| **mean** | {mean[0]:.2f} → **{mean[2]:.2f} %** | | "
              f"{mean[1]:.2f} → **{mean[3]:.2f} %** |")


if __name__ == "__main__":
    main(sys.argv[1:])

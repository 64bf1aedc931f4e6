"""The apparel study under the quick protocol, every feasible fold, both networks side by side.

    python benchmarks/levers/apparel_quick/summarise.py \
        recipe=results/levers/apparel_quick/recipe/study.json,results/levers/apparel_quick/recipe_more/study.json,results/levers/apparel_quick/recipe_rest/study.json \
        default=results/levers/apparel_quick/default_first4_mirror.json,results/levers/apparel_quick/default_mirror_more/study.json,results/levers/apparel_quick/default_rest/study.json

Each argument is NAME=a comma-separated list of study.json files whose folds are merged (a fold
found twice is an error).
"""

# ruff: noqa: E501 (the command in the docstring is one line per network)
import json
import statistics
import sys
from pathlib import Path


def merged(paths: str) -> dict:
    folds: dict = {}
    for path in paths.split(","):
        for combo, fold in json.loads(Path(path).read_text())["folds"].items():
            if combo in folds:
                raise SystemExit(f"{path}: fold {combo} already read from another file")
            folds[combo] = fold
    return folds


def main(args: list[str]) -> None:
    if not args or any("=" not in a for a in args):
        raise SystemExit("usage: summarise.py NAME=study.json[,study.json...] [NAME=...]")
    networks = {name: merged(paths) for name, paths in (a.split("=", 1) for a in args)}
    combos = sorted(set.intersection(*(set(f) for f in networks.values())))
    print("| held-out | " + " | ".join(f"{n}: unseen exact | colour | category | seen exact"
                                         for n in networks) + " |")
    print("| --- |" + " --- | --- | --- | --- |" * len(networks))
    for combo in combos:
        cells = []
        for folds in networks.values():
            f = folds[combo]
            heads = f["unseen_head_accuracy"]
            cells += [f["unseen_exact_match"], heads["color"], heads["category"],
                      f["seen_exact_match"]]
        print(f"| {combo} | " + " | ".join(f"{100 * c:.1f} %" for c in cells) + " |")
    for name, folds in networks.items():
        unseen = [folds[c]["unseen_exact_match"] for c in combos]
        seen = [folds[c]["seen_exact_match"] for c in combos]
        worst = min(combos, key=lambda c: folds[c]["unseen_exact_match"])
        print(f"\n{name}: {len(combos)} folds, mean unseen {100 * statistics.mean(unseen):.1f} %, "
              f"worst {100 * min(unseen):.1f} % ({worst}), mean seen "
              f"{100 * statistics.mean(seen):.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])

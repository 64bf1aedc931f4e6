"""Does averaging independently trained models lift unseen exact match? No retraining.

Each fold of the default's fashion study was trained at three seeds. Averaging the three
models' probabilities on the held-out combination's images (which none of them saw) tells
whether their errors are independent (an ensemble gains) or shared (it does not).

    python benchmarks/levers/ensemble_seeds/ensemble.py ../shared/datasets/fashion \
        42=runs/x_study_mirror 7=runs/x_study_seed7 11=runs/x_study_seed11 \
        > results/levers/ensemble_seeds/ensemble.json

Seen images are scored only where no member trained or validated on them (the seeds split
differently), so that column is small (about 100 images over six folds).
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from fashionnet.inference import load

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def main(dataset: str, members: list[str]) -> dict:
    root = Path(dataset)
    runs = dict(m.split("=", 1) for m in members)
    folds = sorted(p.name for p in Path(next(iter(runs.values())), "folds").iterdir())
    images = sorted(str(p.relative_to(root)) for p in root.glob("*/*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    report: dict = {"members": runs, "folds": {}}
    for fold in folds:
        used = set()
        for run in runs.values():
            split = json.loads(Path(run, "folds", fold, "split.json").read_text())
            used |= set(split["train"]) | set(split["val"])
        unseen = [p for p in images if p.startswith(fold + "/")]
        seen = [p for p in images if p not in used and not p.startswith(fold + "/")]
        paths = unseen + seen
        truth = [dict(zip(("color", "category"), p.split("/")[0].split("_"))) for p in paths]
        probs = {}
        for seed, run in runs.items():
            predictor = load(Path(run, "folds", fold), backend="keras")
            batch = np.stack([predictor.decode(root / p) for p in paths])
            probs[seed] = dict(zip((h.name for h in predictor.heads),
                                   predictor.predict_probabilities(batch)))
            classes = {h.name: np.array(h.classes) for h in predictor.heads}
        row = {"unseen_images": len(unseen), "seen_images": len(seen)}
        for k in range(1, len(runs) + 1):
            for combo in itertools.combinations(runs, k):
                right = np.ones(len(paths), bool)
                for head, names in classes.items():
                    mean = np.mean([probs[s][head] for s in combo], axis=0)
                    right &= names[mean.argmax(1)] == np.array([t[head] for t in truth])
                row["+".join(combo)] = {"unseen": float(right[:len(unseen)].mean()),
                                        "seen": float(right[len(unseen):].mean())}
        report["folds"][fold] = row
    summary = {}
    for key in (k for k in report["folds"][folds[0]] if not k.endswith("_images")):
        unseen = [report["folds"][f][key]["unseen"] for f in folds]
        seen = [report["folds"][f][key]["seen"] for f in folds]
        summary[key] = {"mean_unseen": float(np.mean(unseen)), "worst_unseen": float(min(unseen)),
                        "mean_seen": float(np.mean(seen))}
        print(f"{key:10s} unseen {100 * np.mean(unseen):.2f} %  worst {100 * min(unseen):.1f} %  "
              f"seen {100 * np.mean(seen):.1f} %", file=sys.stderr)
    report["summary"] = summary
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:]), indent=1))

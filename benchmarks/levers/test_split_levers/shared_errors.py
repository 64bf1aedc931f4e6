"""Are the test split's errors the same images whatever the lever? And would averaging help?

Every model named here must have been trained at the same seed (the same 505 test images).
Prints each model's test accuracy, every ensemble's (probabilities averaged), how many errors
each pair of models shares, and the images each model gets wrong (``head_errors``, per head, was
added after ``shared_errors.json`` was written):

    python benchmarks/levers/test_split_levers/shared_errors.py ../shared/datasets/fashion runs/val0 \
        default=src/fashionnet/default_model cgm=runs/cgm_test val0=runs/val0 \
        > results/levers/test_split_levers/shared_errors.json

The second argument is a run whose ``split.json`` names the test images (the shipped bundle
keeps none). The default is read through ONNX, the runs through Keras.
"""

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from fashionnet.inference import load


def main(dataset: str, split_run: str, members: list[str]) -> dict:
    root = Path(dataset)
    test = json.loads(Path(split_run, "split.json").read_text())["test"]
    truth = [dict(zip(("color", "category"), p.split("/")[0].split("_"))) for p in test]
    runs = dict(m.split("=", 1) for m in members)
    probs, classes = {}, {}
    for name, run in runs.items():
        predictor = load(run)
        batch = np.stack([predictor.decode(root / p) for p in test])
        probs[name] = dict(zip((h.name for h in predictor.heads),
                               predictor.predict_probabilities(batch)))
        classes = {h.name: np.array(h.classes) for h in predictor.heads}
    report: dict = {"members": runs, "test_images": len(test), "ensembles": {}, "errors": {},
                    "head_errors": {}}
    for k in range(1, len(runs) + 1):
        for combo in itertools.combinations(runs, k):
            right = np.ones(len(test), bool)
            row, wrong = {}, {}
            for head, names in classes.items():
                mean = np.mean([probs[m][head] for m in combo], axis=0)
                ok = names[mean.argmax(1)] == np.array([t[head] for t in truth])
                row[head] = float(ok.mean())
                wrong[head] = [test[i] for i in np.flatnonzero(~ok)]
                right &= ok
            row["exact_match"] = float(right.mean())
            report["ensembles"]["+".join(combo)] = row
            if k == 1:
                report["errors"][combo[0]] = [test[i] for i in np.flatnonzero(~right)]
                report["head_errors"][combo[0]] = wrong
            print(f"{'+'.join(combo):24s} " + "  ".join(
                f"{h} {100 * v:.2f} %" for h, v in row.items()), file=sys.stderr)
    report["shared"] = {f"{a}&{b}": len(set(report["errors"][a]) & set(report["errors"][b]))
                        for a, b in itertools.combinations(runs, 2)}
    print(report["shared"], file=sys.stderr)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3:]), indent=1))

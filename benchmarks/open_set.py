"""Out-of-set answers measured on real photos the model never trained on (issue 34).

    python benchmarks/open_set.py [--model BUNDLE]

In-set: the shipped model's `fashion` test split (rebuilt from its config, as
benchmarks/int8_accuracy.py does). Colour out-of-set: ``../shared/datasets/apparel`` folders
whose colour is not one of the model's (brown_*, green_*, white_*); category out-of-set: its
*_shorts folders (*_pants left out: pants and jeans overlap). Nothing is trained on them.
Each candidate score is fitted the way training fits it (colour model on the training split,
threshold on the validation split, keeping 95 % of the correctly answered) and reported with
its AUROC, the share of out-of-set images answered ``unknown`` and the in-set coverage and
accuracy on what stays answered. Writes results/current/open_set.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "benchmarks"))


def decode(paths, size):
    from fashionnet.data.images import decode_many

    decoded = decode_many(paths, size, progress=False)
    return decoded.images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "current" / "open_set")
    args = parser.parse_args()
    from int8_accuracy import rebuilt_split

    from fashionnet.data.sources import read_folders
    from fashionnet.default_model import default_model_path
    from fashionnet.inference import load
    from fashionnet.open_set import auroc, fit_open_set

    model = args.model or default_model_path()
    predictor = load(model, precision="fp32") if "precision" in load.__code__.co_varnames \
        else load(model)
    heads = predictor.heads
    size = predictor.bundle.preprocessing.size
    split = rebuilt_split(model) if not (model / "split.json").is_file() else \
        json.loads((model / "split.json").read_text())
    fashion = SHARED / "fashion"
    images, labels = {}, {}
    for name in ("train", "val", "test"):
        paths = [fashion / key for key in split[name]]
        images[name] = decode(paths, size)
        labels[name] = {h.name: np.array([h.classes.index(
            p.parent.name.split("_")[0 if h.name == "color" else 1]) for p in paths])
            for h in heads}
    probs = {name: dict(zip([h.name for h in heads],
                            predictor.predict_probabilities(images[name])))
             for name in ("val", "test")}
    apparel = read_folders(SHARED / "apparel")
    colour_names = set(next(h for h in heads if h.name == "color").classes)
    out_colour = [r.path for r in apparel if r.labels["color"] not in colour_names]
    out_category = [r.path for r in apparel if r.labels["category"] == "shorts"]
    ood = {"color": decode(out_colour, size), "category": decode(out_category, size)}
    ood_probs = {head: dict(zip([h.name for h in heads], predictor.predict_probabilities(x)))
                 for head, x in ood.items()}
    report = {"model": str(model), "in_set": len(images["test"]),
              "out_of_set": {"color": len(out_colour), "category": len(out_category)},
              "heads": {}}
    for head in heads:
        rows = {}
        for score in (("msp", "colour") if head.name == "color" else ("msp",)):
            spec = fit_open_set(score, probs["val"][head.name], labels["val"][head.name],
                                images["val"], images["train"], labels["train"][head.name])
            s_in = spec.scores(probs["test"][head.name], images["test"])
            s_out = spec.scores(ood_probs[head.name][head.name], ood[head.name])
            answered = s_in <= spec.threshold
            right = probs["test"][head.name].argmax(1) == labels["test"][head.name]
            rows[score] = {
                "auroc": auroc(s_in, s_out),
                "threshold": spec.threshold,
                "out_of_set_unknown": float((s_out > spec.threshold).mean()),
                "in_set_answered": float(answered.mean()),
                "in_set_accuracy_answered": float(right[answered].mean()),
                "in_set_accuracy_all": float(right.mean()),
            }
        report["heads"][head.name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Out-of-set answers", "",
             f"`python benchmarks/open_set.py` on `{Path(model).name}`: in-set = the fashion "
             f"test split ({report['in_set']} images); colour out-of-set = apparel's brown, "
             f"green and white photos ({len(out_colour)}); category out-of-set = apparel's "
             f"shorts ({len(out_category)}). Thresholds fitted on the validation split "
             f"(95 % of its correct answers kept).", "",
             "| head | score | AUROC | out-of-set answered unknown | in-set answered | "
             "in-set accuracy (answered / all) |", "| --- | --- | --- | --- | --- | --- |"]
    for head, rows in report["heads"].items():
        for score, r in rows.items():
            lines.append(f"| {head} | {score} | {r['auroc']:.3f} | "
                         f"{100 * r['out_of_set_unknown']:.1f} % | "
                         f"{100 * r['in_set_answered']:.1f} % | "
                         f"{100 * r['in_set_accuracy_answered']:.2f} / "
                         f"{100 * r['in_set_accuracy_all']:.2f} % |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

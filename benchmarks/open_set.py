"""Out-of-set answers measured on real photos the model never trained on (issue 34).

    python benchmarks/open_set.py [--model BUNDLE] [--out results/current/open_set]

In-set: the bundle's `fashion` test split (split.json). Colour out-of-set:
``../shared/datasets/apparel`` folders whose colour the model has no name for (brown_*, green_*,
white_*); category out-of-set: its *_shorts folders (*_pants left out: pants and jeans
overlap). Controls the issue does not ask for: labels the model knows, photographed by the other
source (apparel's black/blue/red pants for colour; its dresses, shirts and shoes for category),
which should mostly stay answered: a score that only told the two sources apart would flag
them too. Nothing is trained on any of them.

Two parts:

1. **As shipped**: the bundle's own rules (labels.json, fitted at training or by
   `fashionnet calibrate`), run by `fashionnet.inference.Predictor` on its ONNX model: AUROC,
   the share of out-of-set photos answered unknown, in-set coverage and accuracy.
2. **Candidates** (needs model.keras): each score of the issue fitted the same way (class
   statistics on the training split, threshold keeping `KEEP` of the correct validation answers)
   and scored alike: max softmax probability (msp), energy (minus log-sum-exp of the logits),
   and the Mahalanobis distance of the head's own features (unit length, shared covariance).

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def decode(paths, size):
    from fashionnet.data.images import decode_many

    decoded = decode_many(paths, size, progress=False)
    if len(decoded.kept) != len(paths):
        raise SystemExit(f"{len(paths) - len(decoded.kept)} unreadable images")
    return decoded.images


def photo_sets(bundle, heads):
    """name -> (paths, {head: class index or None}) for every set the report scores."""
    split = json.loads((bundle / "split.json").read_text())
    fashion = SHARED / "fashion"
    colour = next(h for h in heads if h.branch == "color")
    category = next(h for h in heads if h.name == "category")

    def labelled(paths):
        out = {h.name: [] for h in heads}
        for p in paths:
            c, k = p.parent.name.split("_")
            out[colour.name].append(colour.classes.index(c) if c in colour.classes else -1)
            out[category.name].append(category.classes.index(k) if k in category.classes
                                      else -1)
        return paths, {name: np.array(v) for name, v in out.items()}

    apparel = sorted(d for d in (SHARED / "apparel").iterdir() if d.is_dir())
    files = {d.name: sorted(p for p in d.iterdir() if p.is_file()) for d in apparel}
    sets = {name: labelled([fashion / key for key in split[name]])
            for name in ("train", "val", "test")}
    sets["ood_colour"] = labelled([p for name, ps in files.items() if not name.endswith(
        "_shorts") and name.split("_")[0] not in colour.classes for p in ps])
    sets["ood_category"] = labelled([p for name, ps in files.items()
                                     if name.endswith("_shorts") for p in ps])
    sets["control_known_colours"] = labelled([p for name, ps in files.items()
                                              if name.endswith("_pants")
                                              and name.split("_")[0] in colour.classes
                                              for p in ps])
    sets["control_known_categories"] = labelled([p for name, ps in files.items()
                                                 if name.split("_")[1] in category.classes
                                                 for p in ps])
    return sets


def as_shipped(model: Path, sets, images) -> dict:
    from fashionnet.inference import load

    predictor = load(model)
    rows = {}
    outputs = {}
    for name in ("test", "ood_colour", "ood_category", "control_known_colours",
                 "control_known_categories"):
        probs, emb = predictor.predict_outputs(images[name])
        outputs[name] = (probs, emb, predictor.out_of_set(probs, emb))
    for k, head in enumerate(predictor.heads):
        rule = predictor.rules.get(head.name)
        if rule is None:
            continue
        ood = "ood_colour" if head.branch == "color" else "ood_category"

        def scores(name, head=head):
            return outputs[name][2][head.name].scores

        labels = sets["test"][1][head.name]
        probs, _, verdicts = outputs["test"]
        answered = ~verdicts[head.name].unknown
        right = probs[k].argmax(1) == labels
        from fashionnet.open_set import auroc

        row = {"score": rule.score, "threshold": rule.threshold,
               "auroc": auroc(scores("test"), scores(ood)),
               "out_of_set_unknown": float(outputs[ood][2][head.name].unknown.mean()),
               "in_set_answered": float(answered.mean()),
               "in_set_accuracy_answered": float(right[answered].mean()),
               "in_set_accuracy_all": float(right.mean())}
        control = "control_known_colours" if head.branch == "color" else \
            "control_known_categories"
        probs_c, _, verdicts_c = outputs[control]
        ok = ~verdicts_c[head.name].unknown
        hit = probs_c[k].argmax(1) == sets[control][1][head.name]
        row.update(control_answered=float(ok.mean()),
                   control_accuracy_answered=float(hit[ok].mean()),
                   control_accuracy_all=float(hit.mean()))
        rows[head.name] = row
    return {"backend": predictor.backend, "heads": rows}


def candidates(model: Path, sets, images) -> dict:
    """Every candidate score, from the Keras model's logits and head features."""
    from fashionnet.extras import import_keras_quietly

    import_keras_quietly()
    import keras

    import fashionnet.model.layers  # noqa: F401
    from fashionnet.bundle import load_bundle
    from fashionnet.metrics import apply_temperature
    from fashionnet.open_set import KEEP, auroc, fit_embedding, mahalanobis, unit_length

    bundle = load_bundle(model)
    net = keras.saving.load_model(model / "model.keras", compile=False, safe_mode=True)
    heads = bundle.heads
    tensors = [net.get_layer(f"{h.name}_logits").output for h in heads] + [
        net.get_layer(f"{h.name}_logits").input for h in heads]
    probe = keras.Model(net.input, tensors)
    got = {}
    for name, x in images.items():
        parts = [probe(x[i:i + 32].astype(np.float32) / 255.0, training=False)
                 for i in range(0, len(x), 32)]
        got[name] = [np.concatenate([keras.ops.convert_to_numpy(p[j]) for p in parts])
                     for j in range(2 * len(heads))]
    out = {}
    for k, head in enumerate(heads):
        t = bundle.temperatures.get(head.name, 1.0)
        ood = "ood_colour" if head.branch == "color" else "ood_category"

        def probs(name, k=k, t=t):
            z = got[name][k]
            e = np.exp(z - z.max(1, keepdims=True))
            return apply_temperature(e / e.sum(1, keepdims=True), t, False)

        def energy(name, k=k):
            z = got[name][k]
            m = z.max(1)
            return -(m + np.log(np.exp(z - m[:, None]).sum(1)))

        train_labels = sets["train"][1][head.name]
        means, precision = fit_embedding(got["train"][len(heads) + k], train_labels,
                                         len(head.classes))

        def embedding(name, k=k, means=means, precision=precision):
            return mahalanobis(unit_length(got[name][len(heads) + k]), means, precision)

        scores = {"msp": lambda name, probs=probs: 1 - probs(name).max(1),
                  "energy": energy, "embedding": embedding}
        rows = {}
        val_right = probs("val").argmax(1) == sets["val"][1][head.name]
        test_right = probs("test").argmax(1) == sets["test"][1][head.name]
        for score, f in scores.items():
            threshold = np.quantile(f("val")[val_right], KEEP)
            answered = f("test") <= threshold
            rows[score] = {
                "auroc": auroc(f("test"), f(ood)),
                "out_of_set_unknown": float((f(ood) > threshold).mean()),
                "in_set_answered": float(answered.mean()),
                "in_set_accuracy_answered": float(test_right[answered].mean()),
                "features": int(got["train"][len(heads) + k].shape[1])}
            control = ("control_known_colours" if head.branch == "color"
                       else "control_known_categories")
            rows[score]["control_answered"] = float((f(control) <= threshold).mean())
        out[head.name] = rows
    return out


def cost(model: Path, images: np.ndarray, rounds: int = 7) -> dict:
    """What abstaining costs: the same predictor calls with and without the rules, taking
    turns, on a batch of 64 test photos and on one photo (ms, min / median / max)."""
    import time

    from fashionnet.inference import load

    sides = {"abstain": load(model), "no_abstain": load(model, abstain=False)}
    batch, one = images[:64], images[:1]
    times = {f"{side}_{kind}": [] for side in sides for kind in ("batch64", "single")}
    for side in sides.values():  # warm up
        side.predict_arrays(batch)
    for _ in range(rounds):
        for name, predictor in sides.items():
            for kind, x in (("batch64", batch), ("single", one)):
                start = time.perf_counter()
                predictor.predict_arrays(x)
                times[f"{name}_{kind}"].append(1000 * (time.perf_counter() - start))
    return {k: {"min": min(v), "median": float(np.median(v)), "max": max(v)}
            for k, v in times.items()}


def pct(x):
    return f"{100 * x:.1f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "current" / "open_set")
    parser.add_argument("--skip-candidates", action="store_true")
    args = parser.parse_args()
    from fashionnet.bundle import load_bundle
    from fashionnet.default_model import default_model_path
    from fashionnet.open_set import KEEP

    model = Path(args.model or default_model_path())
    bundle = load_bundle(model)
    sets = photo_sets(model, bundle.heads)
    size = bundle.preprocessing.size
    images = {name: decode(paths, size) for name, (paths, _) in sets.items()}
    report = {"model": str(model), "counts": {n: len(p) for n, (p, _) in sets.items()},
              "shipped": as_shipped(model, sets, images)}
    report["cost_ms"] = cost(model, images["test"])
    if not args.skip_candidates and (model / "model.keras").is_file():
        report["candidates"] = candidates(model, sets, images)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    n = report["counts"]
    lines = ["# Out-of-set answers", "",
             f"`python benchmarks/open_set.py --model {model.name}`: in-set = the fashion test "
             f"split ({n['test']} photos); colour out-of-set = apparel's brown, green and white "
             f"photos ({n['ood_colour']}); category out-of-set = apparel's shorts "
             f"({n['ood_category']}); controls from another source, labels the model knows: "
             f"for colour apparel's black, blue and red pants ({n['control_known_colours']}), "
             f"for category its dresses, shirts and shoes ({n['control_known_categories']}). "
             f"Thresholds keep {KEEP:.0%} of the correct validation answers.", "",
             "## As shipped (the bundle's rules, " + report["shipped"]["backend"] + ")", "",
             "| head | score | AUROC | out-of-set answered unknown | in-set answered | "
             "in-set accuracy answered / all | control answered | control accuracy "
             "answered / all |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for head, r in report["shipped"]["heads"].items():
        lines.append(f"| {head} | {r['score']} | {r['auroc']:.3f} | "
                     f"{pct(r['out_of_set_unknown'])} | {pct(r['in_set_answered'])} | "
                     f"{100 * r['in_set_accuracy_answered']:.2f} / "
                     f"{100 * r['in_set_accuracy_all']:.2f} % | {pct(r['control_answered'])} | "
                     f"{100 * r['control_accuracy_answered']:.1f} / "
                     f"{100 * r['control_accuracy_all']:.1f} % |")
    c = report["cost_ms"]
    lines += ["", "## Cost (ms, min / median / max of 7 interleaved rounds, load "
              f"{os.getloadavg()[0]:.1f})", "",
              "| call | with the rules | --no-abstain |", "| --- | --- | --- |"]
    for kind, label in (("batch64", "64 photos"), ("single", "one photo")):
        a, b = c[f"abstain_{kind}"], c[f"no_abstain_{kind}"]
        lines.append(f"| {label} | {a['min']:.1f} / {a['median']:.1f} / {a['max']:.1f} | "
                     f"{b['min']:.1f} / {b['median']:.1f} / {b['max']:.1f} |")
    if "candidates" in report:
        lines += ["", "## Candidates (Keras, each fitted alike)", "",
                  "| head | score | AUROC | out-of-set unknown | in-set answered | "
                  "in-set accuracy answered | control answered |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for head, rows in report["candidates"].items():
            for score, r in rows.items():
                control = pct(r["control_answered"])
                name = score if score != "embedding" else f"embedding ({r['features']}-d)"
                lines.append(f"| {head} | {name} | {r['auroc']:.3f} | "
                             f"{pct(r['out_of_set_unknown'])} | {pct(r['in_set_answered'])} | "
                             f"{100 * r['in_set_accuracy_answered']:.2f} % | {control} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leave-one-combination-out on frozen EfficientNet-Lite0 features: how far does a pretrained
category branch go before any fine-tuning, and at which input size?

    python benchmarks/backbone_study.py --dataset ../shared/datasets/fashion --sizes 224,160,128
    python benchmarks/backbone_study.py --dataset ../shared/datasets/apparel --no-balance-classes

The splits are the study's (`fashionnet study compositional`): one fold per feasible
combination (`feasible_holdouts`), `split_records` with the default fractions, seed and
near-duplicate groups (found on the default input size's decoded images), so a fold's unseen,
validation and seen-test images are the ones the trained network's fold is scored on. Each
image's pooled features (grayscale repeated to three channels, plain and mirrored) come from
`extract_features`, cached on disk, so only the first run at a size pays for the backbone. A
logistic regression on the standardised features is the category head; its C is chosen on the
fold's seen validation split. Two variants: ``plain`` (trained and scored on the images as
they are) and ``mirror`` (trained on both views, scoring the mean of both views'
probabilities). Figures are category accuracy: on the held-out combination (unseen), on the
seen validation split and on the seen test split.

Writes results/backbone/<name>.json and .md (``--name``, else the dataset folder's name).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
C_GRID = (0.01, 0.1, 1.0)


def load(dataset: Path):
    """Records, heads and near-duplicate groups, as the study's training run finds them."""
    return load_with_images(dataset)[:3]


def load_with_images(dataset: Path):
    """`load`, and the images decoded at the network's input size (the groups' source)."""
    from fashionnet.data.sources import read_folders

    return study_inputs(read_folders(dataset))


def study_inputs(records: list):
    """The readable ``records``, heads, near-duplicate groups and images at the input size."""
    from fashionnet.config import ARCHITECTURE_DEFAULTS
    from fashionnet.data.images import decode_many
    from fashionnet.data.splits import duplicate_groups
    from fashionnet.heads import HeadSpec

    size = ARCHITECTURE_DEFAULTS["disentangled"]["input_size"]
    decoded = decode_many([r.path for r in records], size, progress=False)
    records = [records[i] for i in decoded.kept]
    heads = [HeadSpec(name, sorted({r.labels[name] for r in records}))
             for name in ("color", "category")]
    return records, heads, duplicate_groups(decoded.images), decoded.images


def timing(sizes: list[int], batch: int = 64, rounds: int = 5) -> dict:
    """Backbone images per second on a warm batch, the sizes interleaved round by round so
    that other load on the machine falls on all of them alike; decoding left out."""
    from fashionnet.model.feature_cache import lite0_backbone

    backbones = {s: lite0_backbone(s) for s in sizes}
    rng = np.random.default_rng(0)
    batches = {s: rng.uniform(0, 255, (batch, s, s, 3)).astype(np.float32) for s in sizes}
    for s in sizes:
        backbones[s].model(batches[s])  # warm-up
    seconds: dict[int, list[float]] = {s: [] for s in sizes}
    loads = []
    for _ in range(rounds):
        for s in sizes:
            began = time.perf_counter()
            backbones[s].model(batches[s])
            seconds[s].append(time.perf_counter() - began)
        loads.append(os.getloadavg()[0])
    return {"batch": batch, "rounds": rounds, "load_average": [round(x, 1) for x in loads],
            "sizes": {str(s): {"median_images_per_second": round(batch / np.median(t), 1),
                               "ms_per_image": round(1000 * np.median(t) / batch, 1),
                               "best_images_per_second": round(batch / min(t), 1)}
                      for s, t in seconds.items()}}


def fit_head(train_x: np.ndarray, train_y: np.ndarray, c: float, balance: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=2000, class_weight="balanced" if balance else None))
    return model.fit(train_x, train_y)


def run_fold(views: dict[str, np.ndarray], y: np.ndarray, split, unseen: np.ndarray,
             variant: str, balance: bool, classes: list[str]) -> dict:
    plain, mirror = views["plain"], views["mirror"]
    train = split.train
    if variant == "plain":
        train_x, train_y = plain[train], y[train]
    else:
        train_x = np.concatenate([plain[train], mirror[train]])
        train_y = np.concatenate([y[train], y[train]])

    def probabilities(model, idx):
        p = model.predict_proba(plain[idx])
        return p if variant == "plain" else (p + model.predict_proba(mirror[idx])) / 2

    seen_test = np.setdiff1d(split.test, unseen)
    best = None
    began = time.perf_counter()
    for c in C_GRID:
        model = fit_head(train_x, train_y, c, balance)
        val = float((model.classes_[probabilities(model, split.val).argmax(1)]
                     == y[split.val]).mean())
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best

    def accuracy(idx):
        return float((model.classes_[probabilities(model, idx).argmax(1)] == y[idx]).mean())

    wrong = model.classes_[probabilities(model, unseen).argmax(1)]
    errors = Counter(classes[k] for k, t in zip(wrong, y[unseen]) if k != t)
    return {"C": c, "unseen_count": int(len(unseen)), "unseen_category": accuracy(unseen),
            "seen_val_category": val, "seen_test_category": accuracy(seen_test),
            "unseen_called": dict(errors.most_common()),
            "fit_seconds": round(time.perf_counter() - began, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets"
                        / "fashion")
    parser.add_argument("--sizes", default="224,160,128", help="input sizes, comma-separated")
    parser.add_argument("--no-balance-classes", dest="balance", action="store_false",
                        help="plain loss weights for the category head (apparel)")
    parser.add_argument("--combinations", help="only these folds, comma-separated")
    parser.add_argument("--variants", default="plain,mirror", help="plain and/or mirror")
    parser.add_argument("--name")
    parser.add_argument("--timing", action="store_true",
                        help="only time the backbone at --sizes (results/backbone/timing.json)")
    args = parser.parse_args(argv)
    if not set(args.variants.split(",")) <= {"plain", "mirror"}:
        parser.error("--variants: plain and/or mirror")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from fashionnet.data.splits import split_records
    from fashionnet.heads import combination
    from fashionnet.model.feature_cache import extract_features, lite0_backbone
    from fashionnet.study import feasible_holdouts

    name = args.name or args.dataset.resolve().name
    out = ROOT / "results" / "backbone"
    out.mkdir(parents=True, exist_ok=True)
    if args.timing:
        result = timing([int(s) for s in args.sizes.split(",")])
        result.update(cpu=platform.processor() or platform.machine(), cores=os.cpu_count())
        (out / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    previous = (json.loads((out / f"{name}.json").read_text())
                if (out / f"{name}.json").exists() else {})
    records, heads, groups = load(args.dataset)
    feasible, infeasible = feasible_holdouts(records, heads)
    folds = args.combinations.split(",") if args.combinations else feasible
    category = heads[1]
    combos = np.array([combination(r.labels, heads) for r in records])
    report = {"dataset": str(args.dataset), "images": len(records), "balance": args.balance,
              "c_grid": list(C_GRID), "infeasible": infeasible, "cpu": platform.processor()
              or platform.machine(), "cores": os.cpu_count(), "sizes": {}}
    if previous.get("balance") == args.balance and previous.get("images") == len(records):
        report["sizes"] = previous.get("sizes", {})  # other sizes' results are kept
    for size in (int(s) for s in args.sizes.split(",")):
        began = time.perf_counter()
        backbone = lite0_backbone(size)
        features = extract_features([r.path for r in records], backbone, ("plain", "mirror"))
        wall = time.perf_counter() - began
        if len(features.kept) != len(records):
            raise SystemExit(f"{len(records) - len(features.kept)} images unreadable")
        extraction = {"wall_seconds": round(wall, 1), "computed_images": features.computed,
                      "backbone_seconds": round(features.seconds, 1),
                      "images_per_second": round(2 * features.computed / features.seconds, 1)
                      if features.computed else None,
                      "load_average": round(os.getloadavg()[0], 1)}
        cold = previous.get("sizes", {}).get(str(size), {}).get("extraction", {})
        if not features.computed and cold.get("computed_images"):  # keep the cold run's speed
            extraction = dict(cold)
        print(f"\n{size} px: features of {len(records)} images x 2 views in {wall:.1f} s "
              f"({features.computed} computed, {extraction['images_per_second']} img/s)")
        y = np.array([category.index(r.labels["category"]) for r in records])
        result = {"extraction": extraction, "variants": {}}
        for variant in args.variants.split(","):
            rows = {}
            for combo in folds:
                split = split_records(records, heads, holdout=[combo], groups=groups)
                unseen = split.test[combos[split.test] == combo]
                rows[combo] = run_fold(features.views, y, split, unseen, variant, args.balance,
                                       category.classes)
                r = rows[combo]
                print(f"  {variant:6} {combo:14} unseen {100 * r['unseen_category']:5.1f} % "
                      f"({r['unseen_count']}) seen val {100 * r['seen_val_category']:5.1f} % "
                      f"seen test {100 * r['seen_test_category']:5.1f} %  C={r['C']}  "
                      f"errors {r['unseen_called']}")
            unseen_acc = [r["unseen_category"] for r in rows.values()]
            summary = {"mean_unseen_category": float(np.mean(unseen_acc)),
                       "min_unseen_category": float(np.min(unseen_acc)),
                       "mean_seen_val_category": float(np.mean(
                           [r["seen_val_category"] for r in rows.values()])),
                       "mean_seen_test_category": float(np.mean(
                           [r["seen_test_category"] for r in rows.values()]))}
            print(f"  {variant:6} mean unseen {100 * summary['mean_unseen_category']:.1f} %, "
                  f"worst {100 * summary['min_unseen_category']:.1f} %, seen val "
                  f"{100 * summary['mean_seen_val_category']:.1f} %, seen test "
                  f"{100 * summary['mean_seen_test_category']:.1f} %")
            result["variants"][variant] = {"folds": rows, "summary": summary}
        report["sizes"][str(size)] = result
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(render(report, name))
    print(f"\nwrote {out / name}.json and .md")
    return 0


def render(report: dict, name: str) -> str:
    lines = [f"# Frozen EfficientNet-Lite0 features, {name}: category accuracy per held-out "
             "combination", "",
             f"{report['images']} images; logistic regression on standardised pooled features "
             f"(C from {report['c_grid']} on the seen validation split), class weights "
             f"{'balanced' if report['balance'] else 'plain'}; grayscale x3 input. "
             f"CPU: {report['cores']} cores.", ""]
    for size, result in sorted(report["sizes"].items(), key=lambda item: int(item[0])):
        e = result["extraction"]
        speed = (f"{e['images_per_second']} img/s ({e['computed_images']} images x 2 views "
                 f"in {e['backbone_seconds']} s, decoding included)" if e["computed_images"]
                 else "features from the cache")
        lines += [f"## {size} px", "", f"Feature extraction: {speed}.", "",
                  "| variant | held-out combination | images | unseen category | seen val. | "
                  "seen test | C | unseen errors |", "| --- | --- | --- | --- | --- | --- | "
                  "--- | --- |"]
        for variant, block in result["variants"].items():
            for combo, r in block["folds"].items():
                errors = ", ".join(f"{k} {v}" for k, v in r["unseen_called"].items()) or "–"
                lines.append(f"| {variant} | {combo} | {r['unseen_count']} | "
                             f"{100 * r['unseen_category']:.1f} % | "
                             f"{100 * r['seen_val_category']:.1f} % | "
                             f"{100 * r['seen_test_category']:.1f} % | {r['C']} | {errors} |")
            s = block["summary"]
            lines.append(f"| **{variant}** | **mean** (worst) | | "
                         f"**{100 * s['mean_unseen_category']:.1f} %** "
                         f"({100 * s['min_unseen_category']:.1f} %) | "
                         f"{100 * s['mean_seen_val_category']:.1f} % | "
                         f"{100 * s['mean_seen_test_category']:.1f} % | | |")
        lines.append("")
    if report["infeasible"]:
        lines.append("Not held out (a label would lose its only training partner): "
                     + ", ".join(report["infeasible"]) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

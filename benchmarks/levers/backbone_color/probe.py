"""Colour from frozen EfficientNet-Lite0 features: does a linear probe on pretrained RGB
features name the colour of a held-out combination better than the shape-blind colour head?

    python benchmarks/levers/backbone_color/probe.py --dataset ../shared/datasets/apparel \
        --out results/levers/backbone_color/apparel.json

Folds and splits are the compositional study's (`fashionnet study compositional`): one fold
per feasible combination (`feasible_holdouts`), `split_records` with the default fractions
(20 % seen test, 10 % seen validation, stratified by combination, seed 42) and the same
near-duplicate groups, so the unseen and seen-test images are the ones the trained network's
fold was scored on. A logistic regression on standardised features predicts the colour; its C
(0.01, 0.1, 1.0) is chosen on the fold's seen validation split. Variants:

* ``rgb``: pooled 1280-d Lite0 features of the RGB image at 224 px (plain view).
* ``rgb_mirror``: trained on plain and mirrored views, scored on the mean of both views'
  probabilities.
* ``rgb_recolour``: as ``rgb``, trained on the training images plus one recoloured copy of
  each (`RecolorPlan.recolor` at 224 px, seed 42, label moved with the paint; images without a
  clear backdrop get no copy), as the network's colour head is trained (recolor = 0.5).
* ``gray_stats``: the category head's grayscale x3 Lite0 features (the feature cache)
  concatenated with colour statistics of the 64 px image (a shape-carrying reference).
* ``stats``: the colour statistics alone (shape-blind reference): RGB mean and standard
  deviation per channel and a normalised 4x4x4 RGB histogram.

RGB features are not in the project's feature cache (it holds grayscale only); they are
computed here once and kept as plain ``.npy`` files under ``--features`` (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
C_GRID = (0.01, 0.1, 1.0)
VARIANTS = ("rgb", "rgb_mirror", "rgb_recolour", "gray_stats", "stats")
# The compositional study's colour figure per fold, for comparison.
REFERENCE = {"apparel": ("results/backbone/training_apparel.json", ("folds",)),
             "fashion": ("results/backbone/training_fashion.json", ("study", "folds"))}


def load(dataset: Path):
    """Records, heads, near-duplicate groups and 64 px images, as the study finds them."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from backbone_study import load_with_images

    return load_with_images(dataset)


def colour_stats(images: np.ndarray, bins: int = 4) -> np.ndarray:
    """uint8 (n, h, w, 3) -> per-channel mean and std (scaled to 0..1) and a joint histogram."""
    x = images.reshape(len(images), -1, 3)
    mean = x.mean(1) / 255.0
    std = x.std(1) / 255.0
    q = (x // (256 // bins)).astype(np.int64)
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = np.stack([np.bincount(c, minlength=bins ** 3) for c in code]).astype(np.float32)
    hist /= hist.sum(1, keepdims=True)
    return np.concatenate([mean, std, hist], axis=1).astype(np.float32)


def rgb_features(paths: list[str], folder: Path, name: str, size: int = 224,
                 batch: int = 32) -> tuple[dict[str, np.ndarray], dict]:
    """Plain and mirrored pooled Lite0 features of the RGB images, from ``folder`` if there."""
    from fashionnet.data.images import decode_image
    from fashionnet.model.efficientnet_lite import pretrained_lite0

    files = {v: folder / f"{name}_{size}px_rgb_{v}.npy" for v in ("plain", "mirror")}
    index = folder / f"{name}_{size}px_rgb_paths.npy"
    if index.exists() and all(f.exists() for f in files.values()):
        stored = np.load(index, allow_pickle=False)
        if stored.tolist() == list(paths):
            views = {v: np.load(f, allow_pickle=False) for v, f in files.items()}
            return views, {"from_cache": True}
    model = pretrained_lite0(size)
    out = {v: np.zeros((len(paths), 1280), np.float32) for v in files}
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            pixels = np.stack(list(pool.map(lambda p: decode_image(p, size), chunk)))
            pixels = pixels.astype(np.float32)
            out["plain"][start:start + len(chunk)] = model.predict(pixels, verbose=0)
            out["mirror"][start:start + len(chunk)] = model.predict(
                np.ascontiguousarray(pixels[:, :, ::-1]), verbose=0)
            if start // batch % 20 == 0:
                done = start + len(chunk)
                print(f"  rgb features {done}/{len(paths)} "
                      f"({done / (time.perf_counter() - began):.1f} img/s)", flush=True)
    seconds = time.perf_counter() - began
    folder.mkdir(parents=True, exist_ok=True)
    for v, f in files.items():
        np.save(f, out[v], allow_pickle=False)
    np.save(index, np.array(paths), allow_pickle=False)
    return out, {"from_cache": False, "seconds": round(seconds, 1),
                 "images_per_second_two_views": round(len(paths) / seconds, 1),
                 "load_average": round(os.getloadavg()[0], 1)}


def recolour_features(paths: list[str], classes: list[str], y: np.ndarray, folder: Path,
                      name: str, size: int = 224, batch: int = 32) -> tuple[np.ndarray,
                                                                            np.ndarray, dict]:
    """Features of one recoloured copy per image and its colour index (-1: no copy)."""
    from fashionnet.data.images import decode_image
    from fashionnet.data.recolor import RecolorPlan
    from fashionnet.model.efficientnet_lite import pretrained_lite0

    file = folder / f"{name}_{size}px_rgb_recolour.npy"
    target_file = folder / f"{name}_{size}px_rgb_recolour_target.npy"
    index = folder / f"{name}_{size}px_rgb_paths.npy"
    if (file.exists() and target_file.exists() and index.exists()
            and np.load(index, allow_pickle=False).tolist() == list(paths)):
        return (np.load(file, allow_pickle=False),
                    np.load(target_file, allow_pickle=False), {"from_cache": True})
    plan = RecolorPlan.for_classes(classes)
    model = pretrained_lite0(size)
    out = np.zeros((len(paths), 1280), np.float32)
    targets = np.full(len(paths), -1, np.int64)

    def one(i: int) -> np.ndarray:
        image = decode_image(paths[i], size)
        done = plan.recolor(image, int(y[i]), np.random.default_rng([42, i]))
        if done is None:
            return image
        targets[i] = done[1]
        return done[0]

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch):
            idx = range(start, min(start + batch, len(paths)))
            pixels = np.stack(list(pool.map(one, idx))).astype(np.float32)
            out[start:start + len(idx)] = model.predict(pixels, verbose=0)
    seconds = time.perf_counter() - began
    np.save(file, out, allow_pickle=False)
    np.save(target_file, targets, allow_pickle=False)
    return out, targets, {"from_cache": False, "seconds": round(seconds, 1),
                          "images_per_second": round(len(paths) / seconds, 1),
                          "recoloured": int((targets >= 0).sum())}


def fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)


def run_fold(plain: np.ndarray, mirror: np.ndarray | None, y: np.ndarray, split,
             unseen: np.ndarray, classes: list[str],
             extra: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    train = split.train
    if extra is not None:  # recoloured copies of the training images
        copies = train[extra[1][train] >= 0]
        train_x = np.concatenate([plain[train], extra[0][copies]])
        train_y = np.concatenate([y[train], extra[1][copies]])
    elif mirror is None:
        train_x, train_y = plain[train], y[train]
    else:
        train_x = np.concatenate([plain[train], mirror[train]])
        train_y = np.concatenate([y[train], y[train]])

    def predict(model, idx):
        p = model.predict_proba(plain[idx])
        if mirror is not None:
            p = (p + model.predict_proba(mirror[idx])) / 2
        return model.classes_[p.argmax(1)]

    began = time.perf_counter()
    best = None
    for c in C_GRID:
        model = fit(train_x, train_y, c)
        val = float((predict(model, split.val) == y[split.val]).mean())
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best
    seen_test = np.setdiff1d(split.test, unseen)
    called = predict(model, unseen)
    wrong = Counter(classes[k] for k, t in zip(called, y[unseen]) if k != t)
    return {"C": c, "unseen_count": int(len(unseen)),
            "unseen_color": float((called == y[unseen]).mean()),
            "seen_val_color": val,
            "seen_test_color": float((predict(model, seen_test) == y[seen_test]).mean()),
            "unseen_wrong_called": dict(wrong.most_common()),
            "fit_seconds": round(time.perf_counter() - began, 1)}


def reference(name: str) -> dict[str, float]:
    if name not in REFERENCE:
        return {}
    path, keys = REFERENCE[name]
    data = json.loads((ROOT / path).read_text())
    for k in keys:
        data = data[k]
    return {combo: fold["unseen_head_accuracy"]["color"] for combo, fold in data.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--features", type=Path, default=Path("/tmp/rgb_features"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--combinations", help="only these folds, comma-separated")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: some of {VARIANTS}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fashionnet.data.splits import split_records
    from fashionnet.heads import combination
    from fashionnet.model.feature_cache import extract_features, lite0_backbone
    from fashionnet.study import feasible_holdouts

    began = time.perf_counter()
    name = args.dataset.resolve().name
    records, heads, groups, small = load(args.dataset)
    paths = [str(r.path) for r in records]
    feasible, infeasible = feasible_holdouts(records, heads)
    folds = args.combinations.split(",") if args.combinations else feasible
    colour = heads[0]
    y = np.array([colour.index(r.labels["color"]) for r in records])
    combos = np.array([combination(r.labels, heads) for r in records])
    inputs: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    extraction: dict = {}
    if {"rgb", "rgb_mirror", "rgb_recolour"} & set(variants):
        views, extraction["rgb"] = rgb_features(paths, args.features, name)
        inputs["rgb"] = (views["plain"], None)
        inputs["rgb_mirror"] = (views["plain"], views["mirror"])
    extras = {}
    if "rgb_recolour" in variants:
        rec, rec_y, extraction["rgb_recolour"] = recolour_features(
            paths, colour.classes, y, args.features, name)
        inputs["rgb_recolour"] = (views["plain"], None)
        extras["rgb_recolour"] = (rec, rec_y)
    stats = colour_stats(small)
    if "gray_stats" in variants:
        t = time.perf_counter()
        gray = extract_features(paths, lite0_backbone(224), ("plain",))
        if len(gray.kept) != len(records):
            raise SystemExit("unreadable images in the grayscale feature cache")
        extraction["gray3"] = {"computed_images": gray.computed,
                               "seconds": round(time.perf_counter() - t, 1)}
        inputs["gray_stats"] = (np.concatenate([gray.views["plain"], stats], 1), None)
    inputs["stats"] = (stats, None)
    ref = reference(name)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if previous.get("images") != len(records):
        previous = {}
    extraction = {**previous.get("extraction", {}), **{  # keep a cold run's timing
        k: v for k, v in extraction.items() if not v.get("from_cache")
        or k not in previous.get("extraction", {})}}
    report = {"dataset": str(args.dataset), "images": len(records), "colours": colour.classes,
              "c_grid": list(C_GRID), "infeasible": infeasible, "extraction": extraction,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "current_colour_head_unseen": ref,
              "variants": previous.get("variants", {})}
    for variant in variants:
        plain, mirror = inputs[variant]
        rows = {}
        for combo in folds:
            split = split_records(records, heads, holdout=[combo], groups=groups)
            unseen = split.test[combos[split.test] == combo]
            r = rows[combo] = run_fold(plain, mirror, y, split, unseen, colour.classes,
                                       extras.get(variant))
            cur = f"{100 * ref[combo]:5.1f} %" if combo in ref else "  –"
            print(f"  {variant:10} {combo:14} unseen colour {100 * r['unseen_color']:5.1f} % "
                  f"(head {cur}, n={r['unseen_count']}) seen test "
                  f"{100 * r['seen_test_color']:5.1f} % C={r['C']} wrong {r['unseen_wrong_called']}"
                  f" [{r['fit_seconds']} s]", flush=True)
        summary = {k: float(np.mean([r[k] for r in rows.values()]))
                   for k in ("unseen_color", "seen_val_color", "seen_test_color")}
        summary["min_unseen_color"] = float(min(r["unseen_color"] for r in rows.values()))
        print(f"  {variant:10} MEAN unseen {100 * summary['unseen_color']:.1f} % seen test "
              f"{100 * summary['seen_test_color']:.1f} %", flush=True)
        report["variants"][variant] = {"folds": rows, "summary": summary}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if ref:
        report["current_colour_head_mean_unseen"] = float(np.mean([ref[c] for c in folds]))
    report.setdefault("wall_seconds", {})[",".join(variants)] = round(
        time.perf_counter() - began, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

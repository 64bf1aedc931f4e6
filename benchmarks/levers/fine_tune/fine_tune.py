"""Fine-tuning the top of EfficientNet-Lite0 for the category head (issue 33, item 3, stage 2):
does unfreezing the last block(s) at a low learning rate beat the frozen backbone on held-out
combinations and on seen images?

    python benchmarks/levers/fine_tune/fine_tune.py --dataset ../shared/datasets/fashion
    python benchmarks/levers/fine_tune/fine_tune.py --dataset ../shared/datasets/apparel \
        --no-balance-classes --combinations white_pants,blue_shorts,white_shoes
    python benchmarks/levers/fine_tune/fine_tune.py --dataset ../shared/datasets/fashion \
        --top stage6

Folds and splits are benchmarks/backbone_study.py's (the compositional study's): one fold per
feasible combination, `split_records` with the default fractions (20 % seen test, 10 % seen
validation, stratified by combination, seed 42) and the near-duplicate groups of the 64 px
decode, so the frozen ``lr`` column reproduces results/backbone/<dataset>.md's 224 px plain one.

Affordable on two CPU cores by caching activations: every image is decoded at 224 px
(`decode_image`), made grayscale x3 (`feature_cache.gray3`), plain and mirrored, and run once
through the frozen lower part of the ImageNet Lite0; the inputs of block 15 (the last stage's
single 192 -> 320 block, 7x7x192) and of stage 6 (block 11, 14x14x112) are kept as float16
``.npy`` files under ``--cache`` (no pickle). The trainable top is [blocks from there on + the
1x1 head conv to 1280 + BN/ReLU6 + global pool + dropout 0.2 + softmax category head], its
Lite0 layers copied by name from the pretrained model. The only augmentation the cache allows:
a random view (plain or mirror) per image and epoch.

Per fold, on the same split:

* ``lr``: frozen pooled features (the frozen top run on the cached maps), standardised, and a
  logistic regression, C from (0.01, 0.1, 1.0) on the seen validation split (backbone_study).
* ``frozen``: the softmax head alone (dropout 0.2 + dense, as `backbone_net.feature_head`) on
  the frozen pooled features, Adam 1e-3 with cosine decay, batch 32, ``--head-epochs`` epochs,
  the epoch with the lowest seen-validation loss kept (fastai's first ``fine_tune`` phase).
* ``fine_tuned``: that head, then the whole top unfrozen (BatchNorm layers frozen: inference
  mode, fixed statistics and affine weights), Adam ``--ft-lr`` (1e-4), batch 32, early
  stopping on the seen-validation loss (patience ``--patience``), best epoch restored (epoch 0
  is the frozen head itself). All ``--ft-epochs`` epochs are trained and scored anyway, so the
  trajectory is on record (``history``; ``fine_tuned_last``: the last epoch); the stopping
  rule reads the validation loss only, and ``seconds`` is the time up to where it stopped.

Class weights ``balanced`` unless ``--no-balance-classes`` (as backbone_study: fashion balanced,
apparel plain). Scores are on the plain view. Writes results/levers/fine_tune/<name>.json after
each fold (folds already there with the same settings are kept, not rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[3]
C_GRID = (0.01, 0.1, 1.0)
VIEWS = ("plain", "mirror")
#: Trainable top -> (layer whose output is its input, first block index, input shape).
TOPS = {"block15": ("lite0_block14_add", 15, (7, 7, 192)),
        "stage6": ("lite0_block10_add", 11, (14, 14, 112))}
SIZE = 224


def load(dataset: Path, limit: int | None = None):
    """Records, heads and near-duplicate groups, as `benchmarks/backbone_study.py` finds them;
    ``limit``: only the first ``limit`` images of each folder (smoke tests)."""
    import sys

    from fashionnet.data.sources import read_folders

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from backbone_study import study_inputs

    records = read_folders(dataset)
    if limit:
        seen: Counter = Counter()
        kept = []
        for r in records:
            key = (r.labels["color"], r.labels["category"])
            if seen[key] < limit:
                kept.append(r)
                seen[key] += 1
        records = kept
    return study_inputs(records)[:3]


def blocks():
    """(index, kernel, stride, expand, filters in, filters out) of each Lite0 block."""
    from fashionnet.model.efficientnet_lite import STAGES

    out, index = [], 0
    for repeats, kernel, stride, expand, filters_in, filters_out in STAGES:
        for repeat in range(repeats):
            out.append((index, kernel, stride if repeat == 0 else 1, expand,
                        filters_in if repeat == 0 else filters_out, filters_out))
            index += 1
    return out


def activations(paths: list[Path], cache: Path, progress: bool = True) -> tuple[dict, dict]:
    """{top: {view: (n, h, w, c) float16}} for every file, from ``cache`` when complete there."""
    import keras

    from fashionnet.data.images import decode_image
    from fashionnet.model.feature_cache import gray3, view_of

    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    key = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]
    folder = cache / f"lite0_{SIZE}px_gray3_{key}"
    meta_path = folder / "meta.json"
    files = {(t, v): folder / f"{t}_{v}.npy" for t in TOPS for v in VIEWS}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        maps = {t: {v: np.load(files[t, v], mmap_mode="r", allow_pickle=False) for v in VIEWS}
                for t in TOPS}
        return maps, meta
    from fashionnet.model.efficientnet_lite import pretrained_lite0

    folder.mkdir(parents=True, exist_ok=True)
    lite0 = pretrained_lite0(SIZE)
    lower = keras.Model(lite0.input, [lite0.get_layer(TOPS[t][0]).output for t in TOPS])
    out = {(t, v): np.lib.format.open_memmap(files[t, v].with_suffix(".tmp.npy"), "w+",
                                             np.float16, (len(paths), *TOPS[t][2]))
           for t in TOPS for v in VIEWS}
    began = time.perf_counter()
    chunk = 128
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            decoded = np.stack(list(pool.map(
                lambda p: decode_image(Path(p).read_bytes(), SIZE), part)))
            pixels = gray3(decoded)
            for v in VIEWS:
                maps = lower.predict(np.ascontiguousarray(view_of(pixels, v)), batch_size=32,
                                     verbose=0)
                for t, m in zip(TOPS, maps):
                    out[t, v][start:start + len(part)] = m.astype(np.float16)
            if progress:
                done = start + len(part)
                print(f"  activations {done}/{len(paths)} "
                      f"({done / (time.perf_counter() - began):.1f} img/s)", flush=True)
    seconds = time.perf_counter() - began
    for k, array in out.items():
        array.flush()
        del array
        os.replace(files[k].with_suffix(".tmp.npy"), files[k])
    meta = {"images": len(paths), "views": list(VIEWS), "seconds": round(seconds, 1),
            "images_per_second": round(len(paths) / seconds, 2),
            "note": "decoding included; one image = both views",
            "load_average": round(os.getloadavg()[0], 1),
            "shapes": {t: list(TOPS[t][2]) for t in TOPS}, "dtype": "float16"}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return activations(paths, cache, progress=False)


def build_top(top: str, classes: int, dropout: float = 0.2):
    """(training model: maps -> category probabilities, frozen feature model: maps -> pooled),
    sharing layers; Lite0 layers named as in `efficientnet_lite`."""
    import keras
    from keras import layers

    from fashionnet.model.efficientnet_lite import FEATURES, _block, _conv_bn

    inputs = keras.Input(TOPS[top][2], name="maps")
    x = inputs
    for index, *params in blocks()[TOPS[top][1]:]:
        x = _block(x, index, *params)
    x = _conv_bn(x, FEATURES, 1, 1, "lite0_head")
    pooled = layers.GlobalAveragePooling2D(name="lite0_pool")(x)
    x = layers.Dropout(dropout, name="category_feature_drop")(pooled)
    outputs = layers.Dense(classes, activation="softmax", name="category_logits")(x)
    return keras.Model(inputs, outputs), keras.Model(inputs, pooled)


def copy_lite0(model, lite0) -> int:
    names = {layer.name for layer in lite0.layers}
    copied = 0
    for layer in model.layers:
        if layer.weights and layer.name in names:
            layer.set_weights(lite0.get_layer(layer.name).get_weights())
            copied += 1
    return copied


def head_model(classes: int, dropout: float = 0.2):
    import keras
    from keras import layers

    inputs = keras.Input((1280,), name="features")
    x = layers.Dropout(dropout, name="category_feature_drop")(inputs)
    return keras.Model(inputs, layers.Dense(classes, activation="softmax",
                                            name="category_logits")(x))


def class_weights(y: np.ndarray, classes: int, balance: bool) -> dict | None:
    if not balance:
        return None
    counts = np.bincount(y, minlength=classes)
    return {k: (len(y) / (np.count_nonzero(counts) * c) if c else 0.0)
            for k, c in enumerate(counts)}


def call(model, x, chunk: int = 128) -> np.ndarray:
    """The model in inference mode on ``x`` (any float array, memory-mapped too), by chunks."""
    return np.concatenate([np.asarray(model(np.asarray(x[s:s + chunk], np.float32),
                                            training=False)) for s in range(0, len(x), chunk)])


def cross_entropy(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)).mean())


def random_views(rng, arrays: dict, idx: np.ndarray) -> np.ndarray:
    """One random view per image (the cache's only augmentation), as float32."""
    pick = rng.integers(0, 2, len(idx))
    out = np.empty((len(idx), *arrays["plain"].shape[1:]), np.float32)
    for k, v in enumerate(VIEWS):
        rows = np.flatnonzero(pick == k)
        out[rows] = arrays[v][np.sort(idx[rows])][np.argsort(np.argsort(idx[rows]))]
    return out


def fit_lr(pooled: dict, y: np.ndarray, split, balance: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best = None
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=c, max_iter=2000, class_weight="balanced" if balance else None))
        model.fit(pooled["plain"][split.train], y[split.train])
        val = float((model.predict(pooled["plain"][split.val]) == y[split.val]).mean())
        if best is None or val > best[0]:
            best = (val, c, model)
    return best[1], lambda idx: best[2].predict_proba(pooled["plain"][idx])


def run_fold(top: str, maps: dict, pooled: dict, y: np.ndarray, classes: list[str], split,
             unseen: np.ndarray, lite0, args) -> dict:
    import keras

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    k = len(classes)
    train, val = split.train, split.val
    seen_test = np.setdiff1d(split.test, unseen)
    weights = class_weights(y[train], k, args.balance)

    def scores(predict) -> dict:
        out = {}
        for name, idx in (("unseen", unseen), ("seen_val", val), ("seen_test", seen_test)):
            out[name] = float((predict(idx).argmax(1) == y[idx]).mean())
        wrong = predict(unseen).argmax(1)
        out["unseen_called"] = dict(Counter(classes[p] for p, t in zip(wrong, y[unseen])
                                            if p != t).most_common())
        return out

    result: dict = {"train": int(len(train)), "val": int(len(val)),
                    "seen_test_count": int(len(seen_test)), "unseen_count": int(len(unseen))}
    began = time.perf_counter()
    c, predict = fit_lr(pooled, y, split, args.balance)
    result["lr"] = {"C": c, **scores(predict), "seconds": round(time.perf_counter() - began, 1)}

    # Phase 1: the softmax head alone on the frozen pooled features.
    began = time.perf_counter()
    head = head_model(k)
    steps = -(-len(train) // args.batch)
    head.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        args.head_lr, args.head_epochs * steps)), "sparse_categorical_crossentropy")
    best = (np.inf, 0, head.get_weights())
    for epoch in range(1, args.head_epochs + 1):
        head.fit(random_views(rng, pooled, train), y[train], batch_size=args.batch, epochs=1,
                 shuffle=True, class_weight=weights, verbose=0)
        loss = cross_entropy(call(head, pooled["plain"][val]), y[val])
        if loss < best[0]:
            best = (loss, epoch, head.get_weights())
    head.set_weights(best[2])
    result["frozen"] = {**scores(lambda idx: call(head, pooled["plain"][idx])),
                        "best_epoch": best[1], "epochs": args.head_epochs,
                        "val_loss": round(best[0], 4),
                        "seconds": round(time.perf_counter() - began, 1)}

    # Phase 2: the top unfrozen, batch norm in inference mode, low learning rate.
    model, _ = build_top(top, k)
    copy_lite0(model, lite0)
    model.get_layer("category_logits").set_weights(
        head.get_layer("category_logits").get_weights())
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(args.ft_lr), "sparse_categorical_crossentropy")
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))

    def predict(idx: np.ndarray) -> np.ndarray:
        return call(model, maps["plain"][np.sort(idx)])[np.argsort(np.argsort(idx))]

    def accuracy(p: np.ndarray, idx: np.ndarray) -> float:
        return round(float((p.argmax(1) == y[idx]).mean()), 4)

    # Every epoch is trained and scored (the trajectory); the early-stopping rule is applied
    # to the seen-validation loss alone, as it would have stopped the run.
    began = time.perf_counter()
    p = predict(val)
    loss0 = cross_entropy(p, y[val])
    history = [{"epoch": 0, "val_loss": round(loss0, 4), "val_acc": accuracy(p, val),
                "unseen": accuracy(predict(unseen), unseen),
                "seen_test": accuracy(predict(seen_test), seen_test)}]
    best = (loss0, 0, model.get_weights())
    stopped, stop_seconds = None, None
    train_seconds = []
    for epoch in range(1, args.ft_epochs + 1):
        x = random_views(rng, maps, train)
        t0 = time.perf_counter()
        model.fit(x, y[train], batch_size=args.batch, epochs=1, shuffle=True,
                  class_weight=weights, verbose=0)
        train_seconds.append(time.perf_counter() - t0)
        p = predict(val)
        loss = cross_entropy(p, y[val])
        history.append({"epoch": epoch, "val_loss": round(loss, 4), "val_acc": accuracy(p, val),
                        "unseen": accuracy(predict(unseen), unseen),
                        "seen_test": accuracy(predict(seen_test), seen_test),
                        "train_seconds": round(train_seconds[-1], 1)})
        h = history[-1]
        print(f"    {top} epoch {epoch}: val loss {loss:.4f} (epoch 0 {loss0:.4f}) acc "
              f"{h['val_acc']:.3f} | unseen {h['unseen']:.3f} seen test {h['seen_test']:.3f} "
              f"| {train_seconds[-1]:.1f} s", flush=True)
        if stopped is None:
            if loss < best[0]:
                best = (loss, epoch, model.get_weights())
            elif epoch - best[1] >= args.patience:
                stopped, stop_seconds = epoch, time.perf_counter() - began
    total = time.perf_counter() - began
    result["fine_tuned_last"] = {**scores(predict), "epoch": args.ft_epochs}
    model.set_weights(best[2])
    result["fine_tuned"] = {**scores(predict), "best_epoch": best[1],
                            "epochs_run": stopped or args.ft_epochs,
                            "val_loss": round(best[0], 4), "trainable_parameters": trainable,
                            "seconds_per_epoch": round(float(np.median(train_seconds)), 1),
                            "seconds": round(stop_seconds or total, 1),
                            "seconds_all_epochs": round(total, 1), "history": history}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path,
                        default=ROOT.parent / "shared" / "datasets" / "fashion")
    parser.add_argument("--combinations", help="only these folds, comma-separated")
    parser.add_argument("--top", default="block15", help="block15 and/or stage6, comma-separated")
    parser.add_argument("--no-balance-classes", dest="balance", action="store_false")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ft_cache"))
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--ft-epochs", type=int, default=12)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, help="smoke test: first N images per folder")
    parser.add_argument("--name")
    parser.add_argument("--table", type=Path, help="only print a results JSON as Markdown")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0

    from fashionnet.data.splits import split_records
    from fashionnet.heads import combination
    from fashionnet.model.efficientnet_lite import pretrained_lite0
    from fashionnet.model.feature_cache import extract_features, lite0_backbone
    from fashionnet.study import feasible_holdouts

    name = args.name or args.dataset.resolve().name + (f"_limit{args.limit}" if args.limit else "")
    out_dir = ROOT / "results" / "levers" / "fine_tune"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}.json"
    records, heads, groups = load(args.dataset, args.limit)
    feasible, infeasible = feasible_holdouts(records, heads)
    folds = args.combinations.split(",") if args.combinations else feasible
    category = heads[1]
    y = np.array([category.index(r.labels["category"]) for r in records])
    combos = np.array([combination(r.labels, heads) for r in records])
    settings = {k: getattr(args, k) for k in ("balance", "head_epochs", "head_lr", "ft_epochs",
                                              "ft_lr", "patience", "batch", "seed")}
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    if report.get("settings") != settings or report.get("images") != len(records):
        report = {}
    report.update({"dataset": str(args.dataset), "images": len(records), "settings": settings,
                   "c_grid": list(C_GRID), "infeasible": infeasible,
                   "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()})
    report.setdefault("tops", {})

    began = time.perf_counter()
    maps, meta = activations([r.path for r in records], args.cache)
    report["activations"] = {**meta, "wall_seconds_this_run": round(time.perf_counter() - began,
                                                                    1)}
    print(f"activations of {len(records)} images: {meta}", flush=True)
    lite0 = pretrained_lite0(SIZE)
    reference = extract_features([r.path for r in records], lite0_backbone(SIZE), ("plain",),
                                 progress=False)  # the feature cache, for a check
    for top in args.top.split(","):
        began = time.perf_counter()
        _, frozen = build_top(top, len(category.classes))
        copy_lite0(frozen, lite0)
        pooled = {v: call(frozen, maps[top][v]) for v in VIEWS}
        ref = reference.views["plain"]
        check = {"pooled_seconds": round(time.perf_counter() - began, 1),
                 "max_abs_difference_vs_feature_cache": float(np.abs(
                     pooled["plain"][reference.kept] - ref).max()),
                 "mean_abs_feature": float(np.abs(ref).mean())}
        print(f"{top}: pooled features from the cached maps vs the feature cache: {check}")
        block = report["tops"].setdefault(top, {"folds": {}})
        block["check"] = check
        for combo in folds:
            if combo in block["folds"]:
                print(f"  {combo}: kept from {out_path.name}")
                continue
            split = split_records(records, heads, holdout=[combo], groups=groups)
            unseen = split.test[combos[split.test] == combo]
            r = run_fold(top, maps[top], pooled, y, category.classes, split, unseen, lite0,
                         args)
            block["folds"][combo] = r
            print(f"  {top} {combo:14} unseen lr {100 * r['lr']['unseen']:5.1f} frozen "
                  f"{100 * r['frozen']['unseen']:5.1f} fine-tuned "
                  f"{100 * r['fine_tuned']['unseen']:5.1f} | seen test lr "
                  f"{100 * r['lr']['seen_test']:5.1f} frozen "
                  f"{100 * r['frozen']['seen_test']:5.1f} fine-tuned "
                  f"{100 * r['fine_tuned']['seen_test']:5.1f} | best epoch "
                  f"{r['fine_tuned']['best_epoch']}, {r['fine_tuned']['seconds_per_epoch']} s/"
                  f"epoch", flush=True)
            block["summary"] = summary(block["folds"])
            out_path.write_text(json.dumps(report, indent=2) + "\n")
        block["summary"] = summary(block["folds"])
        out_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{top}: {json.dumps(block['summary'])}")
    print(f"wrote {out_path}")
    return 0


def summary(folds: dict) -> dict:
    out: dict = {"folds": len(folds)}
    for method in ("lr", "frozen", "fine_tuned", "fine_tuned_last"):
        unseen = [f[method]["unseen"] for f in folds.values()]
        out[method] = {"mean_unseen": float(np.mean(unseen)), "min_unseen": float(np.min(unseen)),
                       "mean_seen_test": float(np.mean([f[method]["seen_test"]
                                                        for f in folds.values()])),
                       "mean_seen_val": float(np.mean([f[method]["seen_val"]
                                                       for f in folds.values()]))}
    ft = [f["fine_tuned"] for f in folds.values()]
    out["fine_tune_seconds"] = round(sum(f["seconds"] for f in ft), 1)
    out["median_seconds_per_epoch"] = float(np.median([f["seconds_per_epoch"] for f in ft]))
    return out


def table(report: dict) -> str:
    """Markdown: per fold and top, category accuracy unseen / seen test for the three heads."""
    pct = "{:.1f}".format
    lines = []
    for top, block in report["tops"].items():
        lines += [f"### {top} ({TOPS[top][2][0]}x{TOPS[top][2][1]}x{TOPS[top][2][2]} maps)", "",
                  "| held-out | images | unseen: lr | frozen | fine-tuned | seen test: lr | "
                  "frozen | fine-tuned | best epoch / run | s/epoch | fine-tune s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for combo, r in block["folds"].items():
            ft = r["fine_tuned"]
            lines.append(
                f"| {combo} | {r['unseen_count']} | "
                + " | ".join(pct(100 * r[m]["unseen"]) for m in ("lr", "frozen", "fine_tuned"))
                + " | " + " | ".join(pct(100 * r[m]["seen_test"])
                                     for m in ("lr", "frozen", "fine_tuned"))
                + f" | {ft['best_epoch']} / {ft['epochs_run']} | {ft['seconds_per_epoch']} | "
                f"{ft['seconds']} |")
        s = summary(block["folds"])
        lines.append(
            "| **mean** (worst unseen) | | "
            + " | ".join(f"**{pct(100 * s[m]['mean_unseen'])}** ({pct(100 * s[m]['min_unseen'])})"
                         for m in ("lr", "frozen", "fine_tuned"))
            + " | " + " | ".join(pct(100 * s[m]["mean_seen_test"])
                                 for m in ("lr", "frozen", "fine_tuned"))
            + f" | | {s['median_seconds_per_epoch']} | {s['fine_tune_seconds']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

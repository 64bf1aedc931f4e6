"""Speed benchmarks: ours against a faithful re-implementation of the recipe's way.

    python benchmarks/bench.py --model runs/default [--repeats 3]

Rows (median of --repeats runs, side by side in one run): first load of the full-size sample,
cached reload of the 2,518-image dataset, training images/s and peak memory, cold start of a
one-photo classify in a new process, warm latency, and classify-a-folder throughput. The
training rows run each side in a fresh process, alternating recipe / ours --repeats times, and
report min / median / max: the recipe network at 96 px fed float64 arrays, against the default
configuration (architecture, input size, augmentation, recolouring) through our pipeline.
The recipe column of the latency rows uses an (untrained) recipe network: speed does not depend
on the weights. Writes results/current/benchmarks.{md,json}. Needs ../shared/datasets and a bundle
exported to ONNX (`fashionnet export MODEL`).

    python benchmarks/bench.py --only serving [--model BUNDLE --label NAME] [--repeats 5]
                               [--server-args "--model-batch 4" ...]

Serving and labelling rows only (issue 36), for the shipped model unless --model is given:
folder labelling over the 2,518-image fashion folder (decode only on every core, model only on
batches of 32 of already-decoded images, end to end with decoding overlapped with inference, and
end to end the old way: decode a batch, then run it), float32 and int8 (when model.int8.onnx
is there or can be made), the four taking turns for --repeats rounds; then the HTTP server via
benchmarks/load_test.py (its own interleaved rounds: in-process baselines, then 1 / 8 / 16 / 32
clients, then SIGTERM under load). Writes results/current/benchmarks_serving.{md,json} (and
load_test.{md,json}); with --label NAME, benchmarks_serving.NAME.{md,json} and
load_test.NAME.{md,json}. Model only also runs in batches of 4: a large network at 224 px can
run more img/s in small batches than in batches of 32 (its activations stay in the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
FASHION = SHARED / "fashion"
FULLSIZE = SHARED / "fashion-fullsize-sample"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def files(root: Path) -> list[Path]:
    return sorted(p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recipe_load(paths: list[Path], size: int = 96) -> np.ndarray:
    """The recipe's loop: full decode, resize, float64 list, one file at a time."""
    from PIL import Image

    data = []
    for p in paths:
        with Image.open(p) as im:
            data.append(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float64))
    return np.array(data, dtype="float") / 255.0


def ours_load(paths: list[Path], cache: bool, size: int = 96) -> np.ndarray:
    from fashionnet.data.images import decode_many

    return decode_many(paths, size, progress=False, cache=cache).images


def child_train(kind: str, n: int) -> dict:
    """Train ``n`` timed batches with the whole dataset in memory, the recipe's way or ours."""
    import keras

    from fashionnet.config import TrainConfig
    from fashionnet.data.pipeline import batches
    from fashionnet.data.sources import read_folders
    from fashionnet.heads import HeadSpec, encode_targets
    from fashionnet.model.fashionnet import build_model
    from fashionnet.training import compile_model, model_for, recoloring

    records = read_folders(FASHION)  # the whole dataset in memory, as the recipe holds it
    heads = [HeadSpec("color", ["black", "blue", "red"], branch="color"),
             HeadSpec("category", ["dress", "jeans", "shirt", "shoes"])]
    targets = encode_targets(records, heads)
    if kind == "recipe":
        model = build_model(heads, 96, "recipe")
        x = recipe_load([r.path for r in records])  # float64, as the recipe holds it
        model.compile(optimizer="adam", loss="categorical_crossentropy",
                      metrics={h.output_name: ["accuracy"] for h in heads})
        fit = lambda steps: model.fit(x, targets, batch_size=32, epochs=1,  # noqa: E731
                                      steps_per_epoch=steps, verbose=0)
    else:
        config = TrainConfig(dataset=str(FASHION))  # the defaults `fashionnet train` uses
        model = model_for(config, heads)
        images = ours_load([r.path for r in records], cache=True, size=config.input_size)
        compile_model(model, heads, config, targets, steps_per_epoch=len(images) // 32)
        data = batches(images, targets, 32, shuffle=True, augment=config.augment,
                       recolor=recoloring(heads, config))
        fit = lambda steps: model.fit(data, epochs=1, steps_per_epoch=steps,  # noqa: E731
                                      verbose=0)
    fit(5)  # warm-up: graph tracing
    seconds = timed(lambda: fit(n), 2)
    return {"images_per_second": n * 32 / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "keras_backend": keras.backend.backend()}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "runs": len(values)}


def recipe_model():
    """The recipe network at 96 px, untrained: latency does not depend on the weights."""
    from fashionnet.heads import HeadSpec
    from fashionnet.model.fashionnet import build_model

    return build_model([HeadSpec("color", ["black", "blue", "red"], branch="color"),
                        HeadSpec("category", ["dress", "jeans", "shirt", "shoes"])],
                       96, "recipe")


def recipe_bundle_model(folder: Path) -> Path:
    """An untrained recipe network saved as model.keras, for the recipe's latency rows."""
    recipe_model().save(folder / "model.keras")
    return folder


def in_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_start_recipe(model: Path, photo: Path) -> float:
    """TensorFlow import, model load, full decode + resize, model.predict: the recipe's classify."""
    code = f"""
import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
import numpy as np, tensorflow as tf, keras
from PIL import Image
import fashionnet.model.layers
model = keras.saving.load_model({str(model / 'model.keras')!r}, compile=False)
x = np.asarray(Image.open({str(photo)!r}).convert('RGB').resize((96, 96)), dtype='float') / 255.0
p = model.predict(x[None], verbose=0)
print('category', int(np.argmax(p[1])), 'color', int(np.argmax(p[0])))
"""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def cold_start_ours(model: Path, photo: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fashionnet.cli", "classify", "--model", str(model),
                    str(photo)], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def warm(model: Path, recipe_model: Path, photo: Path, repeats: int) -> dict:
    import keras

    from fashionnet.inference import load

    onnx = load(model, backend="onnx")
    recipe = keras.saving.load_model(recipe_model / "model.keras", compile=False)
    recipe_image = recipe_load([photo]).astype(np.float32)
    data = photo.read_bytes()
    out = {}
    for _ in range(20):
        onnx.predict_probabilities(onnx.decode(photo)[None])
        recipe(recipe_image, training=False)
    timings: dict[str, list[float]] = {k: [] for k in ("onnx", "onnx_decode", "recipe",
                                                       "recipe_decode")}
    image = onnx.decode(photo)[None]
    for _ in range(200):  # interleaved, so both sides see the same machine state
        t = time.perf_counter()
        onnx.predict_probabilities(image)
        timings["onnx"].append(time.perf_counter() - t)
        t = time.perf_counter()
        onnx.predict_arrays(onnx.decode(data)[None])
        timings["onnx_decode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        recipe(recipe_image, training=False)
        timings["recipe"].append(time.perf_counter() - t)
        t = time.perf_counter()
        recipe(recipe_load([photo]).astype(np.float32), training=False)
        timings["recipe_decode"].append(time.perf_counter() - t)
    out["onnx"] = {"model_ms": 1000 * statistics.median(timings["onnx"]),
                   "decode_and_model_ms": 1000 * statistics.median(timings["onnx_decode"])}
    out["keras"] = {"model_ms": 1000 * statistics.median(timings["recipe"]),
                    "decode_and_model_ms": 1000 * statistics.median(timings["recipe_decode"])}
    paths = files(FASHION)
    out["folder_images_per_second"] = len(paths) / timed(
        lambda: onnx.predict_files(paths), max(1, repeats - 1))
    out["recipe_folder_images_per_second"] = 200 / timed(
        lambda: [recipe.predict(recipe_load([p]).astype(np.float32), verbose=0)
                 for p in paths[:200]], 1)
    return out


def labelling_rounds(model: Path, repeats: int, precision: str) -> dict[str, list[float]]:
    """img/s over the whole fashion folder: decode only, model only, end to end (overlapped),
    end to end (decode a batch, then run it), taking turns ``repeats`` times."""
    from concurrent.futures import ThreadPoolExecutor

    from fashionnet.inference import load
    from fashionnet.runtime.runners import cores

    predictor = load(model, precision=precision)
    predictor.batch_size = 64  # `fashionnet classify`'s default
    paths = files(FASHION)
    images = np.stack([predictor.decode(p) for p in paths])  # also warms the file cache

    def decode_only():
        with ThreadPoolExecutor(cores()) as pool:
            list(pool.map(predictor.decode, paths))

    def model_only(size: int = 32):
        for start in range(0, len(images), size):
            predictor.predict_probabilities(images[start:start + size])

    def sequential():  # the old predict_files: a batch decoded, then run, then the next
        with ThreadPoolExecutor(cores()) as pool:
            for start in range(0, len(paths), predictor.batch_size):
                chunk = list(pool.map(predictor.decode, paths[start:start + predictor.batch_size]))
                predictor.predict_arrays(np.stack(chunk))

    runs = {"decode_only": decode_only, "model_only_batch32": model_only,
            "model_only_batch4": lambda: model_only(4),
            "end_to_end": lambda: predictor.predict_files(paths),
            "end_to_end_sequential": sequential}
    out: dict[str, list[float]] = {k: [] for k in runs}
    model_only()
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            out[name].append(len(paths) / (time.perf_counter() - start))
    return out


def serving(args) -> int:
    from fashionnet.default_model import default_model_path
    from fashionnet.runtime.export import export_int8

    model = args.model or default_model_path()
    work = Path(tempfile.mkdtemp(prefix="fashionnet-bench-"))
    bundle = work / "bundle"
    shutil.copytree(model, bundle, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    precisions = ["fp32"]
    if not (bundle / "model.int8.onnx").is_file():
        try:
            export_int8(bundle, FASHION)
        except Exception as exc:  # noqa: BLE001 - reported, the float32 rows still run
            print(f"no int8 rows: {exc}", file=sys.stderr)
    if (bundle / "model.int8.onnx").is_file():
        precisions.append("int8")
    labelling = {}
    load_before = os.getloadavg()[0]
    for precision in precisions:
        runs = labelling_rounds(bundle, args.repeats, precision)
        ratios = [e / min(m, d) for e, m, d in zip(runs["end_to_end"],
                                                    runs["model_only_batch32"],
                                                    runs["decode_only"])]
        best = [e / min(max(m, m4), d) for e, m, m4, d in zip(
            runs["end_to_end"], runs["model_only_batch32"], runs["model_only_batch4"],
            runs["decode_only"])]
        labelling[precision] = {**{k: spread(v) for k, v in runs.items()},
                                "end_to_end_vs_min_model_decode": spread(ratios),
                                "end_to_end_vs_min_best_model_decode": spread(best),
                                "runs": runs}
        print(precision, json.dumps({k: round(v["median"], 2) for k, v in
                                     labelling[precision].items() if "median" in v}),
              flush=True)
    shutil.rmtree(work, ignore_errors=True)
    suffix = f".{args.label}" if args.label else ""
    load_out = ROOT / "results" / "current" / f"load_test{suffix}"
    command = [sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--rounds",
               str(args.repeats), "--seconds", "6", "--shutdown", "--out", str(load_out)]
    for config in args.server_args or ["", "--model-workers 1"]:
        command += ["--server-args", config]
    if args.model:
        command += ["--model", str(args.model)]
    subprocess.run(command, cwd=ROOT, check=False)
    load = json.loads(Path(f"{load_out}.json").read_text())
    info = {"command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                       f"{platform.python_version()}, load average before {load_before:.1f}",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "model": str(args.model or "shipped default"), "folder": str(FASHION),
            "images": len(files(FASHION)), "labelling": labelling,
            "load_test": load["summary"], "shutdown_under_load": load["shutdown_under_load"]}
    out = ROOT / "results" / "current" / f"benchmarks_serving{suffix}"
    Path(f"{out}.json").write_text(json.dumps(info, indent=2) + "\n")

    def mmm(d, fmt="{:.0f}"):
        return " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))

    lines = ["# Serving and labelling benchmarks", "",
             f"`{info['command']}` on {info['machine']}, {info['date']}; model "
             f"{info['model']}; min / median / max over {args.repeats} interleaved rounds.", "",
             f"## Labelling a folder ({info['images']} images of {FASHION.name}), img/s", "",
             "| model | decode only (all cores) | model only (batches of 32) | model only "
             "(batches of 4) | end to end, overlapped | end to end, old way (decode a batch, "
             "then run it) | end to end / min(model batch 32, decode) | end to end / min(model "
             "at its best batch, decode) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for precision, row in labelling.items():
        lines.append(f"| {precision} | {mmm(row['decode_only'])} | "
                     f"{mmm(row['model_only_batch32'])} | {mmm(row['model_only_batch4'])} | "
                     f"{mmm(row['end_to_end'])} | "
                     f"{mmm(row['end_to_end_sequential'])} | "
                     f"{mmm(row['end_to_end_vs_min_model_decode'], '{:.2f}')} | "
                     f"{mmm(row['end_to_end_vs_min_best_model_decode'], '{:.2f}')} |")
    lines += ["", f"## HTTP server (results/current/{load_out.name}.md has the full table)", ""]
    lines += [line for line in Path(f"{load_out}.md").read_text().splitlines()
              if line.startswith("|") or line.startswith("SIGTERM")]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=30, help="timed batches of 32")
    parser.add_argument("--child", nargs="*")
    parser.add_argument("--only", choices=["all", "serving"], default="all",
                        help="serving: only the labelling and HTTP server rows (issue 36)")
    parser.add_argument("--label", help="with --only serving: results/current/"
                                        "benchmarks_serving.LABEL.* (say which --model)")
    parser.add_argument("--server-args", action="append",
                        help="with --only serving: `fashionnet serve` options of one server "
                             "configuration (repeat it; default: the defaults, and "
                             "'--model-workers 1', the defaults until 2026-12-05)")
    args = parser.parse_args()
    if args.only == "serving":
        return serving(args)
    if args.child:
        print(json.dumps(child_train(args.child[0], int(args.child[1]))))
        return 0
    if not (FASHION.is_dir() and FULLSIZE.is_dir()):
        raise SystemExit("needs ../shared/datasets/fashion and fashion-fullsize-sample")
    if not (args.model / "model.onnx").is_file():
        raise SystemExit(f"{args.model}: export it first: fashionnet export {args.model}")
    rows = []

    def row(name, recipe, ours, unit, better="higher", spread=None):
        ratio = ours / recipe if better == "higher" else recipe / ours
        rows.append({"row": name, "recipe": recipe, "ours": ours, "unit": unit,
                     "speedup": ratio, "spread": spread})
        print(f"{name:45} recipe {recipe:10.3f}  ours {ours:10.3f} {unit:8} x{ratio:.2f}",
              flush=True)

    full = files(FULLSIZE)
    row(f"first load, full-size sample ({len(full)} photos)",
        timed(lambda: recipe_load(full), args.repeats),
        timed(lambda: ours_load(full, cache=False), args.repeats), "s", "lower")
    everything = files(FASHION)
    cache = Path(tempfile.mkdtemp())
    os.environ["FASHIONNET_CACHE_DIR"] = str(cache)
    ours_load(everything, cache=True)
    row(f"second load, fashion dataset ({len(everything)} images, cached)",
        timed(lambda: recipe_load(everything), 1),
        timed(lambda: ours_load(everything, cache=True), args.repeats), "s", "lower")
    runs: dict[str, list[dict]] = {"recipe": [], "ours": []}
    for _ in range(args.repeats):  # interleaved: recipe, ours, recipe, ours, ...
        for kind in ("recipe", "ours"):
            runs[kind].append(in_child(kind, str(args.train_steps)))
    shutil.rmtree(cache, ignore_errors=True)
    speed = {k: spread([r["images_per_second"] for r in v]) for k, v in runs.items()}
    memory = {k: spread([r["peak_rss_mb"] for r in v]) for k, v in runs.items()}
    row("training images/s (recipe 96 px vs default config)", speed["recipe"]["median"],
        speed["ours"]["median"], "img/s", spread=speed)
    row(f"training peak memory ({len(everything)} images in memory)",
        memory["recipe"]["median"], memory["ours"]["median"], "MB", "lower", spread=memory)
    photo = sorted((FULLSIZE / "red_dress").iterdir())[0]
    recipe_model = recipe_bundle_model(Path(tempfile.mkdtemp()))
    row("cold start: new process -> printed answer",
        statistics.median(cold_start_recipe(recipe_model, photo) for _ in range(args.repeats)),
        statistics.median(cold_start_ours(args.model, photo) for _ in range(args.repeats)),
        "s", "lower")
    small = sorted((FASHION / "red_dress").iterdir())[0]
    w = warm(args.model, recipe_model, small, args.repeats)
    row("warm latency, model only (batch 1)", w["keras"]["model_ms"], w["onnx"]["model_ms"],
        "ms", "lower")
    row("warm latency, decode 256px JPEG + model", w["keras"]["decode_and_model_ms"],
        w["onnx"]["decode_and_model_ms"], "ms", "lower")
    row("classify a folder (downscaled dataset)", w["recipe_folder_images_per_second"],
        w["folder_images_per_second"], "img/s")
    import onnxruntime
    import tensorflow as tf

    info = {"command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                       f"{platform.python_version()}",
            "versions": {"tensorflow": tf.__version__, "onnxruntime": onnxruntime.__version__},
            "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = ROOT / "results" / "current" / "benchmarks"
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    lines = ["# Benchmarks", "", f"`{info['command']}` on {info['machine']}, {info['date']}; "
             "medians. Recipe: full decode + resize per file, float64 arrays, Keras "
             "`model.fit` on in-memory arrays, TensorFlow import + `model.predict` per image "
             "(cold start and folder rows); in the warm-latency rows the recipe column is the "
             "recipe network called in-process (Keras), ours is ONNX Runtime on the bundle.",
             "", "| measure | recipe | ours | unit | ours vs recipe |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['recipe']:.3f} | {r['ours']:.3f} | {r['unit']} | "
                     f"{r['speedup']:.2f}x |")
    lines += ["", "Training rows, each side in a fresh process, alternated "
              f"{args.repeats} times (min / median / max):", "",
              "| measure | side | min | median | max |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        for side, s in (r["spread"] or {}).items():
            lines.append(f"| {r['row']} | {side} | {s['min']:.1f} | {s['median']:.1f} | "
                         f"{s['max']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

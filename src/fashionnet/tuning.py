"""`fashionnet tune`: a hyper-parameter search on Ray Tune, for seen or unseen combinations.

The search space is what `fashionnet.config.SETTINGS` declares tunable (`search_space`), not
a second list. Trials run in parallel on this machine (or a Ray cluster, ``address``), each
reporting once per epoch; ASHA stops the weak ones early. Two objectives:

- ``val``: validation exact match (what every tool tunes for);
- ``heldout``: exact match on combinations kept out of the trial's training (``holdout``,
  default: one feasible combination per head pair, chosen by the study's rule) — a score of
  how well the heads generalise to pairs they never saw together. The chosen combinations'
  images are then used for selection: measure the winner again on other folds
  (`fashionnet study`) before you quote it.

Writes ``best.toml`` (`train --config` reads it), ``trials.csv``, ``trials.md`` and
``tune.json`` into the output folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from fashionnet.config import TrainConfig, search_space
from fashionnet.errors import FashionNetError
from fashionnet.extras import require_cluster, require_training

log = logging.getLogger("fashionnet")

OBJECTIVES = ("val", "heldout")


def _ray_space(space: dict[str, tuple]) -> dict:
    from ray import tune

    out = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            out[name] = tune.loguniform(*args)
        elif kind == "uniform":
            out[name] = tune.uniform(*args)
        elif kind == "int":
            out[name] = tune.randint(args[0], args[1] + 1)
        elif kind == "choice":
            out[name] = tune.choice(list(args))
        else:
            raise FashionNetError(f"setting {name}: unknown search kind {kind!r}")
    return out


def tune(config: TrainConfig, output: str | Path, *, trials: int = 8,
         objective: str = "heldout", holdout: list[str] | None = None,
         settings: list[str] | None = None, epochs: int | None = None,
         max_concurrent: int | None = None, cpus_per_trial: float = 1.0,
         address: str | None = None, seed: int = 0, overwrite: bool = False,
         time_budget: float | None = None) -> dict:
    """Search ``trials`` configurations around ``config``; returns the summary (tune.json).

    ``time_budget``: seconds after which no new trial starts and running ones are stopped
    (Ray Tune's ``time_budget_s``); the trials finished by then are the result."""
    require_cluster("fashionnet tune")
    require_training("fashionnet tune")
    from fashionnet.outputs import check_destination, dataset_inputs

    if objective not in OBJECTIVES:
        raise FashionNetError(f"--objective must be one of {', '.join(OBJECTIVES)}")
    if trials < 1:
        raise FashionNetError("--trials must be at least 1")
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise FashionNetError(f"--minutes must be a finite positive number, not "
                              f"{time_budget / 60:g}")
    if not config.dataset or not Path(config.dataset).exists():
        raise FashionNetError(f"{config.dataset}: dataset not found")
    output = Path(output).resolve()
    check_destination(output, dataset_inputs(config.dataset, config.path_column),
                      overwrite=overwrite)
    space = search_space(settings, config.backbone)
    epochs = epochs or config.epochs
    if objective == "heldout":
        holdout = holdout or _default_holdout(config)
        base = config.with_overrides(holdout=sorted(set(config.holdout) | set(holdout)),
                                     epochs=epochs)
    else:
        if config.val_fraction <= 0:
            raise FashionNetError("--objective val needs a validation split (val_fraction > 0)")
        base = config.with_overrides(epochs=epochs)

    import ray
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from fashionnet.cluster import connect

    connect(address, num_cpus=None if address else max(1, os.cpu_count() or 1))
    work = output.with_name(f".{output.name}.tune")
    shutil.rmtree(work, ignore_errors=True)
    metric = "heldout_exact_match" if objective == "heldout" else "val_exact_match"
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                              grace_period=max(1, epochs // 4), reduction_factor=3)
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(_trial, base=base.to_dict(), objective=objective,
                                 holdout=list(holdout or []), cwd=os.getcwd(),
                                 threads=max(1, int(cpus_per_trial))),
        {"cpu": cpus_per_trial})
    started = time.perf_counter()
    tuner = ray_tune.Tuner(
        trainable, param_space=_ray_space(space),
        tune_config=ray_tune.TuneConfig(
            metric=metric, mode="max", scheduler=scheduler, num_samples=trials,
            max_concurrent_trials=max_concurrent, time_budget_s=time_budget,
            search_alg=_seeded_search(seed)),
        run_config=ray_tune.RunConfig(storage_path=str(work), name="fashionnet-tune",
                                      verbose=0))
    results = tuner.fit()
    seconds = time.perf_counter() - started
    rows = []
    for result in results:
        if result.error is not None:
            rows.append({"trial": result.path and Path(result.path).name, "status": "error",
                         "error": " ".join(str(result.error).split())[:200],
                         **result.config})
            continue
        history = result.metrics_dataframe
        best_epoch_score = float(history[metric].max()) if history is not None and \
            metric in history else math.nan
        rows.append({"trial": Path(result.path).name, "status": "ok",
                     "epochs": int(result.metrics.get("training_iteration", 0)),
                     metric: best_epoch_score, "last": float(result.metrics.get(metric, math.nan)),
                     **{k: result.config[k] for k in space}})
    ok = [r for r in rows if r["status"] == "ok" and not math.isnan(r[metric])]
    if not ok:
        raise FashionNetError("every trial failed: " + "; ".join(
            str(r.get("error")) for r in rows)[:400])
    best = max(ok, key=lambda r: r[metric])
    best_config = base.with_overrides(**{k: _plain(best[k]) for k in space},
                                      holdout=list(config.holdout))
    output.mkdir(parents=True, exist_ok=True)
    from fashionnet.config_template import config_to_toml
    from fashionnet.outputs import claim_output

    claim_output(output, "tune")
    header = (f"The best of {len(rows)} trials of `fashionnet tune` ({objective} objective"
              + (f", held out: {', '.join(holdout or [])}" if objective == "heldout" else "")
              + f"): {metric} {100 * best[metric]:.2f} %.\n"
              "Train it: fashionnet train --config THIS_FILE --output runs/tuned")
    (output / "best.toml").write_text(config_to_toml(best_config, relative_to=output,
                                                      header=header))
    TrainConfig.from_toml(output / "best.toml")  # what we wrote must load back
    columns = ["trial", "status", "epochs", metric, "last", *space, "error"]
    rows.sort(key=lambda r: -(r.get(metric) if isinstance(r.get(metric), float)
                              and not math.isnan(r.get(metric)) else -1))
    with (output / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    summary = {"objective": objective, "metric": metric, "holdout": holdout or [],
               "trials": len(rows), "epochs": epochs, "seconds": round(seconds, 1),
               "search_space": {k: list(v) for k, v in space.items()},
               "best": best, "rows": rows}
    (output / "tune.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    (output / "trials.md").write_text(_markdown(summary, columns))
    shutil.rmtree(work, ignore_errors=True)
    if not address:
        ray.shutdown()
    return summary


def _seeded_search(seed: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _markdown(summary: dict, columns: list[str]) -> str:
    metric = summary["metric"]
    lines = [f"# fashionnet tune: {summary['trials']} trials, {summary['objective']} objective",
             "", f"{summary['epochs']} epochs at most per trial, ASHA early stopping; "
             f"{summary['seconds']:.0f} s in all."
             + (f" Held out of every trial: {', '.join(summary['holdout'])}."
                if summary["holdout"] else ""), "",
             "| " + " | ".join(c for c in columns if c != "error") + " |",
             "|" + " --- |" * (len(columns) - 1)]
    for row in summary["rows"]:
        cells = []
        for c in columns:
            if c == "error":
                continue
            v = row.get(c, "")
            if c in (metric, "last") and isinstance(v, float):
                cells.append("" if math.isnan(v) else f"{100 * v:.2f} %")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _default_holdout(config: TrainConfig) -> list[str]:
    """One combination to hold out, by the study's feasibility rule (every label of every head
    still seen in training): the feasible one with the most images."""
    from collections import Counter

    from fashionnet.data.sources import read_dataset
    from fashionnet.heads import combination
    from fashionnet.study import feasible_holdouts

    records, names = read_dataset(config.dataset, [h.name for h in config.heads] or None,
                                  config.multi, config.separator, config.multi_separator,
                                  config.path_column, allow_outside=config.allow_outside)
    heads = config.head_specs(names)
    feasible, _ = feasible_holdouts(records, heads)
    if not feasible:
        raise FashionNetError(f"{config.dataset}: no combination can be held out (each label "
                              f"must stay in training); use --objective val")
    counts = Counter(combination(r.labels, heads) for r in records)
    return [max(feasible, key=lambda c: (counts[c], c))]


def _trial(params: dict, base: dict, objective: str, holdout: list[str], cwd: str,
           threads: int) -> None:
    """One Ray Tune trial: train with ``params``, report the objective after every epoch."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tempfile

    import keras
    from ray import tune as ray_tune

    from fashionnet.training import evaluate_split, load_dataset, train

    if os.path.isdir(cwd):  # relative dataset paths mean what they meant to the driver
        os.chdir(cwd)
    config = TrainConfig.from_dict(base, "tune").with_overrides(
        **{k: _plain(v) for k, v in params.items()})
    data = load_dataset(config, progress=False)
    from fashionnet.heads import combination

    held = np.array([i for i, r in enumerate(data.records)
                     if combination(r.labels, data.heads) in set(holdout)], dtype=np.int64)

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            metrics = {"epoch": epoch + 1}
            if "val_exact_match" in logs:
                metrics["val_exact_match"] = float(logs["val_exact_match"])
            if objective == "heldout" and len(held):
                probs = None
                if data.backbone is not None:  # the two-input training model of a frozen backbone
                    from fashionnet.backbone_training import predict_inputs

                    names = data.backbone.input_names(data.heads)
                    probs = predict_inputs(self.model, data.backbone.inputs(names), held)
                scored = evaluate_split(self.model, data.heads, data.images[held],
                                        data.targets(held), probs=probs)
                metrics["heldout_exact_match"] = float(scored["exact_match"])
            ray_tune.report(metrics)

    def hook(model, best):
        return 0, [Report()]

    with tempfile.TemporaryDirectory(prefix="fashionnet-trial-") as scratch:
        train(config, Path(scratch) / "run", verbose=0, data=data, fit_hook=hook,
              checkpoints=False)

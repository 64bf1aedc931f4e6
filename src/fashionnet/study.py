"""Leave-one-combination-out: how well does the model name combinations it never saw?

For every feasible combination (each of its labels keeps another training partner), train a
model without it and measure exact match on its images. Results go to ``study.json`` after
each fold, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fashionnet.bundle import write_json
from fashionnet.config import TrainConfig
from fashionnet.data.splits import check_holdout
from fashionnet.errors import FashionNetError
from fashionnet.evaluation import percent, report_from_probabilities
from fashionnet.heads import combination
from fashionnet.metrics import bootstrap_ci
from fashionnet.outputs import check_output, dataset_inputs

log = logging.getLogger("fashionnet")


def feasible_holdouts(records, heads) -> tuple[list[str], list[str]]:
    """(feasible, infeasible) single-combination hold-outs."""
    combos = sorted({combination(r.labels, heads) for r in records})
    feasible, infeasible = [], []
    for combo in combos:
        try:
            check_holdout(records, heads, [combo])
            feasible.append(combo)
        except FashionNetError:
            infeasible.append(combo)
    return feasible, infeasible


def compositional_study(config: TrainConfig, output: str | Path, *,
                        combinations: list[str] | None = None, verbose: int | str = 2) -> dict:
    """Train one model per held-out combination; write ``study.json`` and ``study.md``."""
    from fashionnet.inference import Predictor
    from fashionnet.training import load_dataset, train

    output = Path(output)
    check_output(output, dataset_inputs(config.dataset, config.path_column)
                 if config.dataset else [])
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "study.json"
    study = {"config": config.to_dict(), "folds": {}}
    if results_path.exists():
        previous = json.loads(results_path.read_text())
        if previous.get("config") == study["config"]:
            study["folds"] = previous.get("folds", {})
        else:
            log.warning("%s: made with another configuration; starting over", results_path)
    data = load_dataset(config, progress=verbose != 0)
    feasible, infeasible = feasible_holdouts(data.records, data.heads)
    study["infeasible"] = infeasible
    todo = combinations or feasible
    bad = [c for c in todo if c not in feasible]
    if bad:
        raise FashionNetError(f"cannot hold out {bad}: infeasible or not in the dataset "
                              f"(feasible: {', '.join(feasible)})")
    for combo in todo:
        if combo in study["folds"]:
            log.info("fold %s: already done, skipped", combo)
            continue
        log.info("fold %s: training without it", combo)
        fold_config = config.with_overrides(holdout=[combo])
        result = train(fold_config, output / "folds" / combo, overwrite=True, verbose=verbose,
                       data=data)
        split = result.split
        test_records = [data.records[i] for i in split.test]
        predictor = Predictor(result.bundle, backend="keras")
        probs = predictor.predict_probabilities(data.images[split.test])
        report = report_from_probabilities(data.heads, test_records, probs,
                                           result.bundle.trained_combinations)
        unseen = report["combinations"][combo]
        study["folds"][combo] = {
            "unseen_count": unseen["count"],
            "unseen_exact_match": unseen["exact_match"],
            "unseen_exact_match_ci95": report["unseen_exact_match_ci95"],
            "unseen_head_accuracy": unseen["heads"],
            "seen_exact_match": report["seen_exact_match"],
            "harmonic_mean": report["harmonic_mean"],
            "partner_swaps": report["partner_swaps"]["total"],
            "epochs_run": result.metrics["epochs_run"],
        }
        write_json(results_path, study)
    study["summary"] = summarise(study["folds"])
    write_json(results_path, study)
    (output / "study.md").write_text(render_study(study))
    return study


def summarise(folds: dict) -> dict:
    if not folds:
        return {}
    unseen = np.array([f["unseen_exact_match"] for f in folds.values()])
    seen = np.array([f["seen_exact_match"] for f in folds.values()])
    return {"folds": len(folds), "mean_unseen_exact_match": float(unseen.mean()),
            "min_unseen_exact_match": float(unseen.min()),
            "mean_unseen_ci95": list(bootstrap_ci(unseen)),
            "mean_seen_exact_match": float(seen.mean())}


def render_study(study: dict) -> str:
    folds = study["folds"]
    heads = [h["name"] for h in study["config"]["heads"]] or (
        list(next(iter(folds.values()))["unseen_head_accuracy"]) if folds else [])
    lines = ["# Leave-one-combination-out study", "",
             "| held-out combination | images | unseen exact match (95% CI) | "
             + " | ".join(f"{h} acc." for h in heads) + " | seen exact match | partner swaps |",
             "| --- | --- | --- | " + " | ".join("---" for _ in heads) + " | --- | --- |"]
    for combo, f in folds.items():
        lo, hi = f["unseen_exact_match_ci95"]
        lines.append(f"| {combo} | {f['unseen_count']} | {percent(f['unseen_exact_match'], 1)} "
                     f"({percent(lo, 1)} to {percent(hi, 1)}) | "
                     + " | ".join(percent(f["unseen_head_accuracy"].get(h), 1) for h in heads)
                     + f" | {percent(f['seen_exact_match'], 1)} | {f['partner_swaps']} |")
    s = study.get("summary") or {}
    if s:
        lo, hi = s["mean_unseen_ci95"]
        lines += ["", f"Mean unseen exact match: **{percent(s['mean_unseen_exact_match'], 1)}** "
                  f"(bootstrap 95% CI over folds {percent(lo, 1)} to {percent(hi, 1)}); worst fold "
                  f"{percent(s['min_unseen_exact_match'], 1)}; mean seen exact match "
                  f"{percent(s['mean_seen_exact_match'], 1)}."]
    if study.get("infeasible"):
        lines += ["", "Not held out (a label would lose its only training partner): "
                  + ", ".join(study["infeasible"]) + "."]
    return "\n".join(lines) + "\n"

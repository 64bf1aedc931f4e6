"""Honest evaluation: per-head metrics, exact match, seen vs unseen combinations.

`report_from_probabilities` is the core (pure NumPy, testable on hand-made predictions);
`evaluate` loads a bundle, decodes a dataset, and writes ``report.json``, ``report.md`` and a
confusion-matrix PNG per head.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionnet.bundle import SPLIT_FILE, Bundle, load_bundle, read_split, write_json
from fashionnet.data.images import decode_many
from fashionnet.data.sources import Record, dataset_root, read_dataset, relative_key
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec, attribute_combination, encode_targets, fully_labelled
from fashionnet.metrics import (
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    exact_match_rows,
    expected_calibration_error,
    harmonic_mean,
    known,
    multilabel_report,
    per_class_report,
)
from fashionnet.open_set import risk_coverage


def report_from_probabilities(heads: Sequence[HeadSpec], records: Sequence[Record],
                              probs: Sequence[np.ndarray],
                              trained_combinations: Sequence[str] = (),
                              uncalibrated: Sequence[np.ndarray] | None = None) -> dict:
    """Every figure of the evaluation report, from probabilities and the true labels.

    With ``uncalibrated`` (the probabilities before temperature scaling), single-label heads
    also get ``ece_uncalibrated``.
    """
    targets = encode_targets(records, heads)
    t_list = [targets[h.output_name] for h in heads]
    multi = [h.multi for h in heads]
    thresholds = [h.threshold for h in heads]
    rows_right = exact_match_rows(t_list, probs, multi, thresholds)
    combos = [attribute_combination(r.labels, heads) for r in records]
    trained = set(trained_combinations)
    report: dict = {"count": len(records), "heads": {}, "combinations": {}}

    for k, (head, t, p) in enumerate(zip(heads, t_list, probs)):
        entry: dict = {"accuracy": accuracy(t, p, head.multi, head.threshold),
                       "labelled": int(known(t).sum())}
        mask = known(t)
        if head.multi:
            entry.update(multilabel_report(t, p, head.classes, head.threshold))
            entry["threshold"] = head.threshold
        else:
            matrix = confusion_matrix(t[mask].argmax(1), p[mask].argmax(1), len(head.classes))
            entry.update(per_class_report(matrix, head.classes))
            entry["confusion_matrix"] = matrix.tolist()
            entry["ece"] = expected_calibration_error(t, p)
            if uncalibrated is not None:
                entry["ece_uncalibrated"] = expected_calibration_error(t, uncalibrated[k])
        report["heads"][head.name] = entry
    report["exact_match"] = float(rows_right.mean()) if len(records) else math.nan

    by_combo: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(combos):
        by_combo[c].append(i)
    for combo in sorted(by_combo):
        idx = np.array(by_combo[combo])
        report["combinations"][combo] = {
            "count": len(idx),
            "seen": (combo in trained) if trained and fully_labelled(combo) else None,
            "exact_match": float(rows_right[idx].mean()),
            "heads": {h.name: accuracy(t[idx], p[idx], h.multi, h.threshold)
                      for h, t, p in zip(heads, t_list, probs)},
        }
    if trained:
        seen = np.array([c in trained for c in combos])
        # a row missing a single-label head's label is neither seen nor unseen
        unseen = ~seen & np.array([fully_labelled(c) for c in combos])
        unseen_rows = rows_right[unseen]
        report["seen_exact_match"] = float(rows_right[seen].mean()) if seen.any() else math.nan
        report["unseen_exact_match"] = (float(unseen_rows.mean()) if unseen.any()
                                        else math.nan)
        report["unseen_exact_match_ci95"] = list(bootstrap_ci(unseen_rows))
        report["harmonic_mean"] = harmonic_mean(report["seen_exact_match"],
                                                report["unseen_exact_match"])
        report["partner_swaps"] = partner_swaps(heads, records, probs, trained, unseen)
    return report


def partner_swaps(heads: Sequence[HeadSpec], records: Sequence[Record],
                  probs: Sequence[np.ndarray], trained: set[str], unseen: np.ndarray) -> dict:
    """Errors on unseen combinations that fall back to a combination seen in training.

    E.g. red shoes called red *dress* (the colour's training partner) or *black* shoes: the
    heads were not independent enough. Counted per head that was wrong.
    """
    predicted = [h.decode(p) for h, p in zip(heads, probs)]
    swaps: dict = {"total": 0, "unseen_rows": int(unseen.sum()), "by_head": {}, "examples": []}
    for i in np.nonzero(unseen)[0]:
        guess = {h.name: predicted[k][i] for k, h in enumerate(heads)}
        guess_combo = attribute_combination(guess, heads)
        true_combo = attribute_combination(records[i].labels, heads)
        if guess_combo == true_combo or guess_combo not in trained:
            continue
        swaps["total"] += 1
        for h in heads:
            if records[i].labels.get(h.name) is not None and guess[h.name] != records[i].labels[h.name]:
                swaps["by_head"][h.name] = swaps["by_head"].get(h.name, 0) + 1
        if len(swaps["examples"]) < 10:
            swaps["examples"].append({"path": str(records[i].path), "true": true_combo,
                                      "predicted": guess_combo})
    return swaps


def evaluate(model: str | Path | Bundle, dataset: str | Path, *, output: str | Path | None = None,
             subset: str | None = None, calibrated: bool = True, progress: bool = True,
             backend: str = "auto", allow_outside: bool = False, abstain: bool = True) -> dict:
    """Evaluate a bundle on a dataset (folder or manifest); write reports if ``output``.

    ``subset`` = ``test`` (or ``val``, ``train``) keeps only the records the bundle's training
    run put in that split: honest figures on the dataset it was trained from. Accuracy counts
    every image, answered or not; with ``abstain`` each head with an out-of-set rule also gets
    ``open_set``: the share answered, the accuracy on those, and the risk-coverage curve.
    """
    from fashionnet.inference import Predictor

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    heads = bundle.heads
    records, _ = read_dataset(dataset, [h.name for h in heads], [h.name for h in heads if h.multi],
                              allow_outside=allow_outside)
    if subset:
        records = split_subset(bundle, records, subset, dataset)
    for record in records:
        for head in heads:
            label = record.labels.get(head.name)
            items = label if isinstance(label, frozenset) else [label] if label else []
            unknown = [x for x in items if x not in head.classes]
            if unknown:
                raise FashionNetError(f"{record.path}: {head.name} {unknown[0]!r} is not a class "
                                      f"the model knows ({', '.join(head.classes)})")
    decoded = decode_many([r.path for r in records], bundle.preprocessing.size,
                          progress=progress)
    records = [records[i] for i in decoded.kept]
    if not records:
        raise FashionNetError(f"{dataset}: no readable images to evaluate")
    predictor = Predictor(bundle, backend=backend, calibrated=calibrated, abstain=abstain)
    raw, embeddings = predictor.predict_outputs(decoded.images, calibrated=False)
    probs = predictor.calibrate(raw)
    report = report_from_probabilities(heads, records, probs, bundle.trained_combinations,
                                       uncalibrated=raw)
    for head in heads:
        report["heads"][head.name]["temperature"] = predictor.temperatures.get(head.name, 1.0)
    verdicts = predictor.out_of_set(probs, embeddings)
    targets = encode_targets(records, heads)
    for head, p in zip(heads, probs):
        if head.name in verdicts:
            rule, verdict = predictor.rules[head.name], verdicts[head.name]
            report["heads"][head.name]["open_set"] = selective_report(
                targets[head.output_name], p, verdict.scores, verdict.unknown, rule.score,
                rule.threshold)
    report["model"] = str(bundle.path)
    report["dataset"] = str(dataset)
    report["subset"] = subset or "all"
    report["skipped_files"] = len(decoded.failures)
    if output is not None:
        write_report(report, heads, Path(output))
    return report


def selective_report(targets: np.ndarray, probs: np.ndarray, scores: np.ndarray,
                     unknown: np.ndarray, score: str, threshold: float) -> dict:
    """What abstaining does to one single-label head on labelled images: the share answered,
    the accuracy on those and on all, and the risk-coverage curve."""
    rows = known(targets)
    correct = targets[rows].argmax(axis=1) == probs[rows].argmax(axis=1)
    answered = ~np.asarray(unknown)[rows]
    return {"score": score, "threshold": threshold,
            "answered": float(answered.mean()) if len(answered) else math.nan,
            "accuracy_answered": float(correct[answered].mean()) if answered.any() else math.nan,
            "accuracy_all": float(correct.mean()) if len(correct) else math.nan,
            "risk_coverage": risk_coverage(np.asarray(scores)[rows], correct)}


def split_subset(bundle: Bundle, records: list[Record], subset: str,
                 dataset: str | Path) -> list[Record]:
    """The records in the bundle's ``subset`` split, matched by their path relative to the
    dataset root (older bundles: by the path as written at training, or its absolute form)."""
    split_file = bundle.path / SPLIT_FILE
    document = read_split(bundle.path)
    try:
        wanted = set(document[subset])
    except (KeyError, TypeError):
        raise FashionNetError(f"{split_file}: has no {subset!r} split to evaluate on") from None
    if "paths" in document:
        root = dataset_root(dataset)
        chosen = [r for r in records if relative_key(r.path, root) in wanted]
    else:
        absolute = {os.path.abspath(w) for w in wanted}
        chosen = [r for r in records
                  if str(r.path) in wanted or os.path.abspath(r.path) in absolute]
    if not chosen:
        raise FashionNetError(f"none of the images of {dataset} are in the bundle's {subset} "
                              f"split ({split_file}): is it the dataset the model was trained on?")
    return chosen


def write_report(report: dict, heads: Sequence[HeadSpec], folder: Path) -> None:
    from fashionnet.plots import plot_confusion, plot_risk_coverage

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "report.json", report)
    (folder / "report.md").write_text(render_markdown(report))
    for head in heads:
        matrix = report["heads"][head.name].get("confusion_matrix")
        if matrix is not None:
            plot_confusion(np.array(matrix), head.classes, f"{head.name} (rows: true)",
                           folder / f"confusion_{head.name}.png")
    curves = {name: h["open_set"] for name, h in report["heads"].items() if "open_set" in h}
    if curves:
        plot_risk_coverage(curves, folder / "risk_coverage.png")


def percent(value, digits: int = 2) -> str:
    """0.9465 -> '94.65%'; None or NaN -> 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


#: report.md lists at most this many combinations (the most frequent); report.json has all.
MAX_COMBINATION_ROWS = 40


def render_markdown(report: dict) -> str:
    head_names = list(report["heads"])
    lines = [f"# Evaluation: {report.get('model', '')}", "",
             f"Dataset: `{report.get('dataset', '')}` ({report.get('subset', 'all')}), "
             f"{report['count']} images.", "",
             "| head | accuracy | macro-F1 | ECE before calibration | ECE after |",
             "| --- | --- | --- | --- | --- |"]
    multi = {name for name, h in report["heads"].items() if "mean_average_precision" in h}
    for name, h in report["heads"].items():
        if name in multi:
            continue
        lines.append(f"| {name} | {percent(h['accuracy'])} | {percent(h.get('macro_f1'))} | "
                     f"{percent(h.get('ece_uncalibrated'))} | {percent(h.get('ece'))} |")
    if multi:
        lines += ["", "Multi-label heads (each label a yes/no at the head's threshold):", "",
                  "| head | mAP | macro-F1 | subset accuracy | threshold |",
                  "| --- | --- | --- | --- | --- |"]
        for name in sorted(multi):
            h = report["heads"][name]
            lines.append(f"| {name} | {percent(h.get('mean_average_precision'))} | "
                         f"{percent(h.get('macro_f1'))} | {percent(h['accuracy'])} | "
                         f"{h.get('threshold', '')} |")
        lines += ["", "mAP: mean over labels of the average precision (area under the "
                  "precision-recall curve, threshold-free); subset accuracy: the share of "
                  "images whose whole set of labels is exactly right."]
    fitted = any(h.get("temperature", 1.0) != 1.0 for h in report["heads"].values())
    lines += ["", "ECE (expected calibration error): how far the confidence the model states is "
              "from how often it is right, averaged over confidence bins (0% = a prediction "
              "made with 80% confidence is right 80% of the time). \"Before calibration\" is "
              "the raw softmax, \"after\" " + (
                  "with the temperature fitted on the validation split." if fitted else
                  "the same: this model has no fitted temperature (its run had no validation "
                  "split, or calibration was off).")]
    selective = {n: h["open_set"] for n, h in report["heads"].items() if "open_set" in h}
    if selective:
        lines += ["", "Out-of-set answers (a head answers unknown over its threshold; accuracy "
                  "above counts every image, its best guess taken):", "",
                  "| head | score | answered | accuracy on answered | accuracy on all |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {n} | {o['score']} | {percent(o['answered'], 1)} | "
                  f"{percent(o['accuracy_answered'])} | {percent(o['accuracy_all'])} |"
                  for n, o in selective.items()]
        lines += ["", "![risk-coverage](risk_coverage.png)"]
    lines += ["", f"**Exact match** (all heads right): {percent(report['exact_match'])}"]
    if report.get("partner_swaps", {}).get("unseen_rows"):
        lo, hi = report["unseen_exact_match_ci95"]
        swaps = report["partner_swaps"]
        lines += ["", f"- seen combinations exact match: {percent(report['seen_exact_match'])}",
                  f"- unseen combinations exact match: {percent(report['unseen_exact_match'])} "
                  f"(95% CI {percent(lo)} to {percent(hi)})",
                  f"- harmonic mean: {percent(report['harmonic_mean'])}",
                  f"- partner swaps: {swaps_sentence(swaps)}"]
    combos = list(report["combinations"].items())
    shown = sorted(combos, key=lambda item: -item[1]["count"])[:MAX_COMBINATION_ROWS]
    shown_names = {name for name, _ in shown}
    lines += ["", "| combination | seen | count | exact match | "
              + " | ".join(head_names) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in head_names) + " |"]
    if len(combos) > len(shown):
        lines.insert(len(lines) - 2, f"The {len(shown)} most frequent of {len(combos)} "
                     f"combinations (all of them in report.json):\n")
    for combo, c in combos:
        if combo not in shown_names:
            continue
        seen = {True: "seen", False: "**unseen**", None: "?"}[c["seen"]]
        lines.append(f"| {combo} | {seen} | {c['count']} | {percent(c['exact_match'])} | "
                     + " | ".join(percent(c["heads"][n]) for n in head_names) + " |")
    for name, h in report["heads"].items():
        lines += ["", f"## {name}", ""]
        if h.get("confusion_matrix") is not None:
            lines += [f"![{name} confusion matrix](confusion_{name}.png) (rows: true class, "
                      f"columns: predicted)", ""]
        ap = name in multi
        lines += ["| class | precision | recall | F1 |" + (" AP |" if ap else "") + " support |",
                  "| --- | --- | --- | --- |" + (" --- |" if ap else "") + " --- |"]
        for cls, m in h["classes"].items():
            lines.append(f"| {cls} | {percent(m['precision'])} | {percent(m['recall'])} | "
                         f"{percent(m['f1'])} |"
                         + (f" {percent(m.get('average_precision'))} |" if ap else "")
                         + f" {m['support']} |")
    return "\n".join(lines) + "\n"


def swaps_sentence(swaps: dict) -> str:
    """``12 of 40 unseen images were called a combination seen in training (colour wrong in 10,
    category wrong in 2)``."""
    text = (f"{swaps['total']} of {swaps['unseen_rows']} images of unseen combinations were "
            f"called a combination seen in training")
    if swaps.get("by_head"):
        text += " (" + ", ".join(f"{head} wrong in {n}" for head, n in swaps["by_head"].items()) + ")"
    return text + "."


def summary_table(report: dict) -> str:
    """A few lines for the terminal."""
    out = [f"{name:>12}: subset accuracy {percent(h['accuracy'])}  mAP "
           f"{percent(h['mean_average_precision'])}  macro-F1 {percent(h.get('macro_f1'))}"
           if "mean_average_precision" in h else
           f"{name:>12}: accuracy {percent(h['accuracy'])}  macro-F1 {percent(h.get('macro_f1'))}"
           for name, h in report["heads"].items()]
    for name, h in report["heads"].items():
        if "open_set" in h:
            o = h["open_set"]
            out.append(f"{name:>12}: answers {percent(o['answered'], 1)} (unknown for the rest), "
                       f"accuracy on those {percent(o['accuracy_answered'])}")
    out.append(f"{'exact match':>12}: {percent(report['exact_match'])}  ({report['count']} images)")
    if not math.isnan(report.get("unseen_exact_match", math.nan)):
        out.append(f"{'seen':>12}: {percent(report['seen_exact_match'])}  unseen: "
                   f"{percent(report['unseen_exact_match'])}  harmonic mean: "
                   f"{percent(report['harmonic_mean'])}")
    return "\n".join(out)

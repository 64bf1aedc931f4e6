"""Pure-NumPy metrics on predictions: no framework, easy to test on hand-made arrays.

Targets follow `fashionnet.heads`: one-hot / multi-hot rows, a row of -1 for unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-7


def known(targets: np.ndarray) -> np.ndarray:
    """Rows whose label is known."""
    return targets[:, 0] >= 0


def correct(targets: np.ndarray, probs: np.ndarray, multi: bool = False,
            threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """Per row: predicted label (or whole label set) equals the target. Unknown rows: False."""
    if multi:
        right = ((probs >= threshold) == (targets > 0.5)).all(axis=1)
    else:
        right = probs.argmax(axis=1) == targets.argmax(axis=1)
    return right & known(targets)


def accuracy(targets: np.ndarray, probs: np.ndarray, multi: bool = False,
             threshold: float | np.ndarray = 0.5) -> float:
    mask = known(targets)
    if not mask.any():
        return math.nan
    return float(correct(targets, probs, multi, threshold)[mask].mean())


def exact_match_rows(targets: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                     multi: Sequence[bool], thresholds: Sequence[float] | None = None
                     ) -> np.ndarray:
    """Per row: every head with a known label is right (unknown heads are not held against it).

    Rows where no head is known are False; use `exact_match` for the rate over usable rows.
    """
    thresholds = thresholds or [0.5] * len(targets)
    n = len(targets[0])
    ok = np.ones(n, dtype=bool)
    any_known = np.zeros(n, dtype=bool)
    for t, p, m, th in zip(targets, probs, multi, thresholds):
        mask = known(t)
        ok &= correct(t, p, m, th) | ~mask
        any_known |= mask
    return ok & any_known


def exact_match(targets, probs, multi, thresholds=None) -> float:
    any_known = np.zeros(len(targets[0]), dtype=bool)
    for t in targets:
        any_known |= known(t)
    if not any_known.any():
        return math.nan
    return float(exact_match_rows(targets, probs, multi, thresholds)[any_known].mean())


def cross_entropy(targets: np.ndarray, probs: np.ndarray, multi: bool = False) -> float:
    mask = known(targets)
    if not mask.any():
        return math.nan
    t, p = targets[mask], np.clip(probs[mask], EPSILON, 1 - EPSILON)
    if multi:
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1).mean())
    return float(-(t * np.log(p)).sum(axis=1).mean())


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of seen and unseen scores: high only when both are."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def confusion_matrix(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true_idx, pred_idx), 1)
    return matrix


def per_class_report(matrix: np.ndarray, classes: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class, plus macro-F1, from a confusion matrix."""
    tp = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "classes": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(support[i])}
                    for i, c in enumerate(classes)},
        "macro_f1": float(f1[present].mean()) if present.any() else math.nan,
    }


def multilabel_report(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      threshold: float = 0.5) -> dict:
    """Per label precision, recall, F1, average precision; macro-F1 and mean AP."""
    mask = known(targets)
    t, p = targets[mask] > 0.5, probs[mask]
    pred = p >= threshold
    out: dict = {"classes": {}}
    f1s, aps = [], []
    for j, name in enumerate(classes):
        tp = float((pred[:, j] & t[:, j]).sum())
        fp = float((pred[:, j] & ~t[:, j]).sum())
        fn = float((~pred[:, j] & t[:, j]).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ap = average_precision(t[:, j], p[:, j])
        out["classes"][name] = {"precision": precision, "recall": recall, "f1": f1,
                                "average_precision": ap, "support": int(t[:, j].sum())}
        if t[:, j].any():
            f1s.append(f1)
            aps.append(ap)
    out["macro_f1"] = float(np.mean(f1s)) if f1s else math.nan
    out["mean_average_precision"] = float(np.mean(aps)) if aps else math.nan
    return out


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn computes it)."""
    positives = int(truth.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    hits = truth[order].astype(float)
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / positives)


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence of a single-label head, over known rows."""
    mask = known(targets)
    if not mask.any():
        return math.nan
    p = probs[mask]
    confidence = p.max(axis=1)
    right = p.argmax(axis=1) == targets[mask].argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(confidence[in_bin].mean() - right[in_bin].mean())
    return float(ece)


def to_logits(probs: np.ndarray, multi: bool = False) -> np.ndarray:
    p = np.clip(probs, EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p)) if multi else np.log(p)


def apply_temperature(probs: np.ndarray, temperature: float, multi: bool = False) -> np.ndarray:
    """Rescale probabilities as if the logits were divided by ``temperature``."""
    if temperature == 1.0:
        return probs
    z = to_logits(probs, multi) / temperature
    if multi:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(targets: np.ndarray, probs: np.ndarray, multi: bool = False) -> float:
    """The temperature minimising cross-entropy on (validation) rows: a 1-D golden search."""
    if not known(targets).any():
        return 1.0

    def nll(log_t: float) -> float:
        return cross_entropy(targets, apply_temperature(probs, math.exp(log_t), multi), multi)

    lo, hi = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def bootstrap_ci(values: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-row 0/1 (or real) values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return (float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))

"""Saying "not one of these": an out-of-set score and a threshold per single-label head.

A multi-output model is asked about combinations it never saw, and sooner or later about a
colour or a garment it has no name for; a confident wrong name is the worst answer. Each
single-label head gets a score that grows the further an image is from what the head was
trained on, and a threshold fitted on the validation split so that a set share (95 %) of the
images it answered correctly stay answered. Above the threshold the head answers ``unknown``
(its best guess kept beside it).

Scores, chosen by measurement (`benchmarks/open_set.py`):

- ``colour``: for colour heads, the distance of the garment's colour (its pixels, told apart
  from the backdrop as recolouring does, averaged in CIELAB) to the colours seen for each class
  in training (a Gaussian per class, Mahalanobis distance to the nearest). A softmax over
  black/blue/red has to call white one of them; the pixels know it is white.
- ``msp``: one minus the maximum softmax probability, for every other head.

A multi-label head already says "none of these" when no label is over its threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fashionnet.data.recolor import garment_mask
from fashionnet.errors import FashionNetError

SCORES = ("msp", "colour")
#: Share of the correctly answered validation images a fitted threshold keeps answered.
KEEP = 0.95
#: Images whose garment mask covers less than this share of the frame: the whole image is
#: taken as the garment (a close-up, or white on white).
MIN_GARMENT = 0.03


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in [0, 1] to CIELAB (D65)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def garment_colours(images: np.ndarray) -> np.ndarray:
    """(n, 3) CIELAB colour of each image's garment: the mask-weighted mean of its pixels."""
    out = np.empty((len(images), 3))
    for i, image in enumerate(images):
        mask = garment_mask(image)
        if mask.mean() < MIN_GARMENT:
            mask = np.ones_like(mask)
        lab = rgb_to_lab(image.astype(np.float64) / 255.0)
        out[i] = (lab * mask[..., None]).sum(axis=(0, 1)) / mask.sum()
    return out


@dataclasses.dataclass
class OpenSetSpec:
    """One head's out-of-set rule, as labels.json stores it."""

    score: str
    threshold: float
    #: for ``colour``: per class, the mean (3) and inverse covariance (3x3) of garment colours
    means: list[list[float]] | None = None
    inverse_covariances: list[list[list[float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> OpenSetSpec:
        if not isinstance(data, dict):
            raise FashionNetError(f"{where} must be an object")
        score, threshold = data.get("score"), data.get("threshold")
        if score not in SCORES:
            raise FashionNetError(f"{where}.score must be one of {', '.join(SCORES)}")
        if (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                or not math.isfinite(threshold)):
            raise FashionNetError(f"{where}.threshold must be a finite number")
        spec = cls(score, float(threshold), data.get("means"), data.get("inverse_covariances"))
        if score == "colour":
            try:
                means = np.asarray(spec.means, dtype=np.float64)
                inverses = np.asarray(spec.inverse_covariances, dtype=np.float64)
            except (TypeError, ValueError):
                raise FashionNetError(f"{where}: means and inverse_covariances must be "
                                      f"numbers") from None
            if means.ndim != 2 or means.shape[1] != 3 or inverses.shape != (len(means), 3, 3) \
                    or not np.isfinite(means).all() or not np.isfinite(inverses).all():
                raise FashionNetError(f"{where}: means must be (classes, 3) and "
                                      f"inverse_covariances (classes, 3, 3), finite")
        return spec

    def scores(self, probs: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
        """Out-of-set score per image (higher: further from the training data)."""
        if self.score == "msp":
            return 1.0 - probs.max(axis=1)
        if images is None:
            raise FashionNetError("the colour out-of-set score needs the images")
        return colour_distance(garment_colours(images), np.asarray(self.means),
                               np.asarray(self.inverse_covariances))


def colour_distance(colours: np.ndarray, means: np.ndarray, inverses: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each colour to the nearest class Gaussian."""
    diff = colours[:, None, :] - means[None, :, :]
    squared = np.einsum("ncd,cde,nce->nc", diff, inverses, diff)
    return np.sqrt(np.maximum(squared, 0.0)).min(axis=1)


def fit_colour_model(colours: np.ndarray, labels: np.ndarray, n_classes: int,
                     shrink: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the mean and the inverse of a shrunk covariance of its garment colours."""
    means, inverses = [], []
    overall = np.cov(colours.T) if len(colours) > 3 else np.eye(3) * 100.0
    for c in range(n_classes):
        own = colours[labels == c]
        mean = own.mean(axis=0) if len(own) else colours.mean(axis=0)
        cov = np.cov(own.T) if len(own) > 3 else overall
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(overall)) + np.eye(3)
        means.append(mean)
        inverses.append(np.linalg.inv(cov))
    return np.array(means), np.array(inverses)


def fit_threshold(scores: np.ndarray, correct: np.ndarray, keep: float = KEEP) -> float:
    """The score under which ``keep`` of the correctly answered images fall."""
    right = scores[correct] if correct.any() else scores
    if not len(right):
        return math.inf
    return float(np.quantile(right, keep))


def fit_open_set(score: str, probs: np.ndarray, labels: np.ndarray,
                 images: np.ndarray | None = None, train_images: np.ndarray | None = None,
                 train_labels: np.ndarray | None = None, keep: float = KEEP) -> OpenSetSpec:
    """Fit one head's rule: the colour model on the training images (if ``colour``), the
    threshold on the validation images (``probs``, ``labels``, ``images``)."""
    if score == "colour":
        if train_images is None or images is None:
            raise FashionNetError("the colour score is fitted on images")
        means, inverses = fit_colour_model(garment_colours(train_images), train_labels,
                                           probs.shape[1])
        spec = OpenSetSpec("colour", math.inf, means.tolist(), inverses.tolist())
    else:
        spec = OpenSetSpec("msp", math.inf)
    values = spec.scores(probs, images)
    correct = probs.argmax(axis=1) == labels
    spec.threshold = fit_threshold(values, correct, keep)
    return spec


def auroc(in_scores: Sequence[float], out_scores: Sequence[float]) -> float:
    """Area under the ROC curve of telling out-of-set (positive) from in-set by the score:
    the probability that an out-of-set image scores higher than an in-set one."""
    a, b = np.asarray(in_scores, float), np.asarray(out_scores, float)
    if not len(a) or not len(b):
        return math.nan
    values = np.concatenate([a, b])  # Mann-Whitney U with tied values at their mean rank
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[len(a):].sum()
    return float((rank_sum - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))

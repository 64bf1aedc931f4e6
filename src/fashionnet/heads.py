"""What the network predicts: one `HeadSpec` per attribute, each with its own label set.

A head is *single* (exactly one class: softmax + categorical cross-entropy) or *multi* (a set
of classes: sigmoid + binary cross-entropy with a threshold). Each head says which branch of
the network feeds it: ``gray`` (deep, sees no colour), ``color`` (shallow, RGB) or ``shared``
(deep, RGB). Targets for a missing label are a row of -1, which losses and metrics mask out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fashionnet.errors import FashionNetError

KINDS = ("single", "multi")
BRANCHES = ("gray", "color", "shared")
MISSING = -1.0

Label = str | frozenset[str] | None


@dataclasses.dataclass
class HeadSpec:
    """One output of the model: its name, label set and how it is trained."""

    name: str
    classes: list[str] = dataclasses.field(default_factory=list)
    kind: str = "single"
    branch: str = "gray"
    loss_weight: float = 1.0
    class_weights: str | dict[str, float] | None = None
    focal_gamma: float = 0.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise FashionNetError(f"head name {self.name!r} must be a Python identifier")
        if self.kind not in KINDS:
            raise FashionNetError(f"head {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.branch not in BRANCHES:
            raise FashionNetError(
                f"head {self.name!r}: branch must be one of {BRANCHES}, not {self.branch!r}"
            )
        for field, low, high in (("loss_weight", 0.0, None), ("focal_gamma", 0.0, None),
                                 ("threshold", 0.0, 1.0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FashionNetError(f"head {self.name!r}: {field} must be a number, "
                                      f"not {value!r}")
            if not math.isfinite(value):
                raise FashionNetError(f"head {self.name!r}: {field} must be a finite number, "
                                      f"not {value!r}")
            if value < low or (high is not None and value > high):
                allowed = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
                raise FashionNetError(f"head {self.name!r}: {field} must be {allowed}, "
                                      f"not {value!r}")
        if len(set(self.classes)) != len(self.classes):
            raise FashionNetError(f"head {self.name!r}: duplicate classes in {self.classes}")

    @property
    def output_name(self) -> str:
        return f"{self.name}_output"

    @property
    def multi(self) -> bool:
        return self.kind == "multi"

    def index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise FashionNetError(
                f"head {self.name!r}: unknown label {label!r} (known: {', '.join(self.classes)})"
            ) from None

    def encode(self, labels: Sequence[Label]) -> np.ndarray:
        """Labels -> float32 targets (one-hot or multi-hot); a missing label -> a row of -1."""
        out = np.zeros((len(labels), len(self.classes)), dtype=np.float32)
        for i, label in enumerate(labels):
            if label is None:
                out[i] = MISSING
            elif self.multi:
                for item in _as_set(label):
                    out[i, self.index(item)] = 1.0
            else:
                out[i, self.index(_as_single(label, self.name))] = 1.0
        return out

    def decode(self, probabilities: np.ndarray) -> list[Label]:
        """Probabilities -> labels: the argmax class, or the set of classes over threshold."""
        probabilities = np.asarray(probabilities)
        if self.multi:
            return [
                frozenset(c for c, p in zip(self.classes, row) if p >= self.threshold)
                for row in probabilities
            ]
        return [self.classes[int(i)] for i in probabilities.argmax(axis=-1)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> HeadSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FashionNetError(
                f"{where}: head {data.get('name')!r} has unknown keys {sorted(unknown)}"
            )
        if "name" not in data:
            raise FashionNetError(f"{where}: a head has no 'name'")
        return cls(**{k: (list(v) if k == "classes" else v) for k, v in data.items()})


def _as_set(label: Label) -> frozenset[str]:
    return label if isinstance(label, frozenset) else frozenset([label])


def _as_single(label: Label, head: str) -> str:
    if isinstance(label, frozenset):
        if len(label) != 1:
            raise FashionNetError(f"head {head!r} is single-label but got the set {sorted(label)}")
        return next(iter(label))
    return label


def fit_classes(heads: Iterable[HeadSpec], records: Sequence[Any]) -> list[HeadSpec]:
    """Fill each head's class list from the records (sorted), keeping classes already given.

    Refuses a head with no labelled record or fewer than two classes: it cannot be learned.
    """
    fitted = []
    for head in heads:
        seen: set[str] = set()
        labelled = 0
        for record in records:
            label = record.labels.get(head.name)
            if label is None:
                continue
            labelled += 1
            seen.update(_as_set(label))
        if labelled == 0:
            raise FashionNetError(f"head {head.name!r} has no labelled examples")
        classes = list(head.classes) or sorted(seen)
        extra = seen - set(classes)
        if extra:
            raise FashionNetError(
                f"head {head.name!r}: labels {sorted(extra)} are not among its configured classes"
            )
        if len(classes) < 2 and not head.multi:
            raise FashionNetError(
                f"head {head.name!r} has only one class ({classes[0]!r}): it needs at least two"
            )
        fitted.append(dataclasses.replace(head, classes=classes))
    return fitted


def combination(labels: dict[str, Label], heads: Sequence[HeadSpec]) -> str:
    """A record's label combination as one string, e.g. ``red_shoes`` (``?`` for missing)."""
    parts = []
    for head in heads:
        label = labels.get(head.name)
        if label is None:
            parts.append("?")
        elif isinstance(label, frozenset):
            parts.append("+".join(sorted(label)) or "-")
        else:
            parts.append(label)
    return "_".join(parts)


def attribute_combination(labels: dict[str, Label], heads: Sequence[HeadSpec]) -> str:
    """The combination that "seen" and "unseen" are about: the single-label heads' labels
    (``red_dress``). A multi-label head's set of tags is an attribute of its own, not part of
    a combination; a missing label shows as ``?`` (such a row is neither seen nor unseen)."""
    return combination(labels, [h for h in heads if not h.multi])


def fully_labelled(combo: str) -> bool:
    """Whether an `attribute_combination` names every label (no ``?``): only such a
    combination can be seen or unseen in training."""
    return "?" not in combo.split("_")


def encode_targets(records: Sequence[Any], heads: Sequence[HeadSpec]) -> dict[str, np.ndarray]:
    """``{<head>_output: float32 targets}`` for records; unknown labels become rows of -1."""
    return {h.output_name: h.encode([r.labels.get(h.name) for r in records]) for h in heads}

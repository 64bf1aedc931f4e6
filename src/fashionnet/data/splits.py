"""Train / validation / test splits: stratified by combination, seeded, near-duplicate safe.

Near-duplicates (the same photo re-encoded or resized) are grouped with a perceptual hash and
a group never straddles two splits, so test accuracy is not inflated by memorised copies.
Held-out combinations go to the test split only: the model never sees them together.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec, combination

log = logging.getLogger("fashionnet")

SPLIT_MODES = ("standard", "recipe")


@dataclasses.dataclass
class Split:
    """Indices into the record list. In ``recipe`` mode ``val`` is the test set, as the recipe did."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mode: str = "standard"
    duplicate_groups: int = 0

    def summary(self) -> dict:
        return {"mode": self.mode, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "duplicate_groups": self.duplicate_groups}


def perceptual_hash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hash per uint8 RGB image: robust to re-encoding and resizing."""
    gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    n, h, w = gray.shape
    rows = np.linspace(0, h, 9, dtype=int)
    cols = np.linspace(0, w, 10, dtype=int)
    # Box-average into an 8x9 grid, then compare horizontal neighbours.
    grid = np.add.reduceat(np.add.reduceat(gray, rows[:-1], axis=1), cols[:-1], axis=2)
    bits = (grid[:, :, 1:] > grid[:, :, :-1]).reshape(n, 64)
    return np.packbits(bits, axis=1).view(">u8").ravel()


def _thumbnails(images: np.ndarray, side: int = 16) -> np.ndarray:
    n, h, w, c = images.shape
    rows = np.linspace(0, h, side + 1, dtype=int)
    cols = np.linspace(0, w, side + 1, dtype=int)
    sums = np.add.reduceat(np.add.reduceat(images.astype(np.float32), rows[:-1], axis=1),
                           cols[:-1], axis=2)
    area = np.outer(np.diff(rows), np.diff(cols))[None, :, :, None]
    return sums / area


def duplicate_groups(images: np.ndarray, max_hash_distance: int = 8,
                     max_pixel_difference: float = 4.0) -> np.ndarray:
    """Group id per image; near-duplicates (re-encoded, resized copies) share a group.

    The hash only proposes candidates (photos of similar garments on white backgrounds hash
    alike); a pair is a duplicate when their 16x16 colour thumbnails also differ by at most
    ``max_pixel_difference`` (of 255) on average. On the fashion dataset true copies differ
    by < 1 and distinct photos by > 8.
    """
    hashes = perceptual_hash(images)
    thumbs = _thumbnails(images)
    n = len(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    as_bytes = hashes.astype(">u8").view(np.uint8).reshape(n, 8)
    for i in range(n - 1):
        xor = np.bitwise_xor(as_bytes[i + 1:], as_bytes[i])
        candidates = np.nonzero(np.unpackbits(xor, axis=1).sum(axis=1) <= max_hash_distance)[0]
        for j in candidates + i + 1:
            if np.abs(thumbs[i] - thumbs[j]).mean() <= max_pixel_difference:
                parent[find(int(j))] = find(i)
    roots = np.array([find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group


def check_holdout(records: Sequence, heads: Sequence[HeadSpec],
                  holdout: Sequence[str]) -> None:
    """Refuse a hold-out that leaves some label of some head with no training example."""
    combos = [combination(r.labels, heads) for r in records]
    unknown = set(holdout) - set(combos)
    if unknown:
        raise FashionNetError(f"hold-out combination(s) {sorted(unknown)} not in the dataset "
                              f"(have: {', '.join(sorted(set(combos)))})")
    remaining = [r for r, c in zip(records, combos) if c not in holdout]
    for head in heads:
        left: set[str] = set()
        for record in remaining:
            label = record.labels.get(head.name)
            if label is not None:
                left.update(label if isinstance(label, frozenset) else [label])
        missing = set(head.classes) - left
        if missing:
            raise FashionNetError(
                f"holding out {', '.join(holdout)} leaves {head.name} {sorted(missing)} with no "
                f"training example; the model could never learn it")


def _warn_if_too_small(n: int, mode: str, n_val: int, n_test: int, val_fraction: float,
                       test_fraction: float) -> None:
    """One warning when a split that should hold images came out empty (a tiny dataset)."""
    empty = []
    if n_test == 0 and test_fraction > 0:
        empty.append("test")
    if mode == "standard" and n_val == 0 and val_fraction > 0:
        empty.append("validation")
    if empty:
        log.warning(
            "only %d image(s): the %s split is empty, so %s; add images (a few per "
            "combination) for honest figures", n, " and ".join(empty),
            "no accuracy is measured on unseen images and no best epoch or calibration is "
            "chosen" if len(empty) == 2 else
            "no accuracy is measured on unseen images" if empty == ["test"] else
            "no best epoch or calibration is chosen")


def _allocate(sizes: Sequence[int], test_fraction: float, val_fraction: float
              ) -> list[tuple[int, int]]:
    """(test, validation) image counts per stratum: each stratum's share rounded, as always
    (the splits of earlier runs stay the same); when that leaves a split empty that the whole
    dataset can fill (many strata of one or two images), the rounding is carried from one
    stratum to the next instead, so the totals come out right. Every stratum of two or more
    images keeps one to train on."""
    counts = [(round(n * test_fraction), round(n * val_fraction)) for n in sizes]
    total = sum(sizes)
    short = [(sum(c[k] for c in counts) == 0 and round(total * f) > 0)
             for k, f in enumerate((test_fraction, val_fraction))]
    if not any(short):
        return counts
    counts, carry_test, carry_val = [], 0.0, 0.0
    for n in sizes:
        want_test, want_val = n * test_fraction + carry_test, n * val_fraction + carry_val
        n_test, n_val = int(want_test + 0.5), int(want_val + 0.5)
        while n_test + n_val >= n and n_test + n_val > 0 and n > 1:
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        carry_test, carry_val = want_test - n_test, want_val - n_val
        counts.append((n_test, n_val))
    return counts


def split_records(records: Sequence, heads: Sequence[HeadSpec], *, mode: str = "standard",
                  val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 42,
                  groups: np.ndarray | None = None, holdout: Sequence[str] = ()) -> Split:
    """Stratify by combination; keep each near-duplicate group in one split."""
    if mode not in SPLIT_MODES:
        raise FashionNetError(f"split must be one of {SPLIT_MODES}, not {mode!r}")
    if mode == "recipe":
        val_fraction = 0.0
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 - test_fraction:
        raise FashionNetError("split fractions must satisfy 0 < test, 0 <= val, val + test < 1")
    if holdout:
        check_holdout(records, heads, holdout)
    groups = np.arange(len(records)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    # Strata: the single-label heads' combination. A multi-label cell (party+work) or a blank
    # one would split a small manifest into dozens of strata of one or two rows, each rounded
    # to no validation image at all.
    single = [h for h in heads if not h.multi]
    by_combo: dict[str, list[int]] = defaultdict(list)
    held: list[int] = []
    for i, record in enumerate(records):
        if holdout and combination(record.labels, heads) in holdout:
            held.append(i)
        else:
            by_combo[combination(record.labels, single)].append(i)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    test.extend(held)
    strata = sorted(by_combo)
    counts = _allocate([len(by_combo[c]) for c in strata], test_fraction, val_fraction)
    for combo, (n_test, n_val) in zip(strata, counts):
        indices = by_combo[combo]
        members: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            members[int(groups[i])].append(i)
        order = list(members)
        rng.shuffle(order)
        taken = 0
        for g in order:
            target = test if taken < n_test else val if taken < n_test + n_val else train
            target.extend(members[g])
            taken += len(members[g])
    train_a, val_a, test_a = (np.array(sorted(x), dtype=np.int64) for x in (train, val, test))
    if mode == "recipe":
        val_a = test_a
    if len(train_a) == 0:
        n_sets = len(np.unique(groups))
        if n_sets < len(records):
            raise FashionNetError(
                f"the training split is empty: {len(records)} images form only {n_sets} "
                "set(s) once near-duplicates are grouped, and each set stays in one split; add "
                "distinct images, or turn dedupe off (--no-dedupe, dedupe = false) if they are "
                "different photos")
        raise FashionNetError("the training split is empty: the dataset is too small")
    _warn_if_too_small(len(records), mode, len(val_a), len(test_a), val_fraction, test_fraction)
    n_groups = int((np.bincount(np.unique(groups, return_inverse=True)[1]) > 1).sum())
    return Split(train_a, val_a, test_a, mode, n_groups)

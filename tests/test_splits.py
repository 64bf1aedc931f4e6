import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionnet.data.sources import Record
from fashionnet.data.splits import check_holdout, duplicate_groups, split_records
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec

HEADS = [HeadSpec("color", ["black", "blue", "red"]),
         HeadSpec("category", ["dress", "jeans", "shoes"])]


def _records(combos, n=20):
    return [Record(f"{c}/{i}", dict(zip(["color", "category"], c.split("_"))))
            for c in combos for i in range(n)]


def test_stratified_seeded_and_disjoint():
    records = _records(["black_jeans", "blue_dress", "red_dress", "blue_jeans"])
    a = split_records(records, HEADS, seed=1)
    b = split_records(records, HEADS, seed=1)
    assert a.test.tolist() == b.test.tolist()
    assert len(a.test) == 16 and len(a.val) == 8 and len(a.train) == 56
    assert not set(a.train) & set(a.test) and not set(a.val) & set(a.test)
    for combo in range(4):  # every combination is in the test split at its share
        assert sum(combo * 20 <= i < combo * 20 + 20 for i in a.test) == 4


def test_groups_never_straddle_splits():
    records = _records(["black_jeans", "blue_dress"], n=30)
    groups = np.arange(60) // 3
    split = split_records(records, HEADS, groups=groups, seed=3)
    where = {}
    for name in ("train", "val", "test"):
        for i in getattr(split, name):
            where.setdefault(groups[i], set()).add(name)
    assert all(len(s) == 1 for s in where.values())


def test_holdout_goes_to_test_only_and_infeasible_is_refused():
    records = _records(["black_jeans", "black_shoes", "blue_dress", "blue_jeans", "red_dress"])
    split = split_records(records, HEADS, holdout=["blue_jeans"])
    held = set(range(60, 80))
    assert held <= set(split.test) and not held & (set(split.train) | set(split.val))
    with pytest.raises(FashionNetError, match=r"leaves category \['shoes'\]"):
        check_holdout(records, HEADS, ["black_shoes"])
    with pytest.raises(FashionNetError, match="not in the dataset"):
        check_holdout(records, HEADS, ["red_shoes"])


def test_empty_training_split_says_whether_dedupe_caused_it():
    """Near-duplicates stay together, so a set of copies can empty the training split."""
    records = _records(["black_jeans", "blue_dress"], n=24)
    copies = np.repeat([0, 1], 24)  # each combination is one set of near-duplicates
    with pytest.raises(FashionNetError, match=r"48 images form only 2 set\(s\) once near-dup.*--no-dedupe"):
        split_records(records, HEADS, groups=copies)
    split = split_records(records, HEADS)  # the same images as distinct photos split fine
    assert len(split.train) == 34
    with pytest.raises(FashionNetError, match="the dataset is too small$"):
        split_records(_records(["black_jeans"], n=2), HEADS, val_fraction=0.4,
                      test_fraction=0.5)


def test_a_small_multi_label_manifest_still_gets_a_validation_split():
    """84 rows whose multi-label cells and blanks made 53 "combinations" of one or two rows
    each, every one rounded to no validation image: stratify on the single-label heads, and
    carry the rounding from one stratum to the next."""
    rng = np.random.default_rng(0)
    tags = ["party", "work", "beach", "winter", "sport"]
    heads = [HeadSpec("color", ["black", "blue", "red"]),
             HeadSpec("category", ["dress", "jeans"]),
             HeadSpec("tags", tags, kind="multi")]
    records = []
    for i in range(84):
        picked = frozenset(rng.choice(tags, size=int(rng.integers(1, 3)), replace=False))
        color = None if i % 9 == 0 else ["black", "blue", "red"][i % 3]
        records.append(Record(Path(f"{i}.jpg"), {"color": color,
                                                 "category": ["dress", "jeans"][i % 2],
                                                 "tags": picked}))
    split = split_records(records, heads)
    assert len(split.val) >= 6 and len(split.test) >= 12  # about 8 and 17
    assert len(split.train) + len(split.val) + len(split.test) == 84


def test_strata_of_one_image_still_fill_the_splits():
    """When every stratum is too small to round to an image, the rounding is carried."""
    from fashionnet.data.splits import _allocate

    counts = _allocate([1] * 84, 0.2, 0.1)
    assert sum(t for t, _ in counts) == 17 and sum(v for _, v in counts) == 8
    assert _allocate([350, 340], 0.2, 0.1) == [(70, 35), (68, 34)]  # big strata: as before


def test_recipe_mode_uses_test_as_validation():
    split = split_records(_records(["black_jeans", "blue_dress"]), HEADS, mode="recipe")
    assert split.val.tolist() == split.test.tolist() and len(split.train) == 32


def test_reencoded_and_resized_copy_is_grouped():
    from fashionnet.data.synthetic import render

    rng = np.random.default_rng(0)
    photos = [np.asarray(render("blue", "jeans", rng)) for _ in range(3)]
    buf = io.BytesIO()
    Image.fromarray(photos[0]).resize((61, 61)).save(buf, "JPEG", quality=70)
    copy = np.asarray(Image.open(buf).convert("RGB").resize((96, 96)))
    groups = duplicate_groups(np.stack([*photos, copy]))
    assert groups[3] == groups[0]
    assert len({groups[0], groups[1], groups[2]}) == 3

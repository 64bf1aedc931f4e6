"""Label statistics: counts per head, the combination matrix of each pair of heads, and the
duplicate sets whose labels disagree (across heads, and across a run's splits).

Pure Python over records and index sets: no image, no model.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

from fashionnet.data.sources import Record
from fashionnet.doctor.issues import Issue

UNKNOWN = "(unknown)"


def _labels(value) -> list[str]:
    """A record's label for one head as a list: one label, several (multi-label), or none."""
    if value is None:
        return []
    if isinstance(value, (set, frozenset, list, tuple)):
        return sorted(value)
    return [str(value)]


def _text(value) -> str:
    items = _labels(value)
    return "|".join(items) if items else UNKNOWN


def label_counts(records: Sequence[Record], heads: Sequence[str]) -> dict[str, dict[str, int]]:
    """{head: {label: images}}, most frequent first; unknown labels counted as ``(unknown)``."""
    out = {}
    for head in heads:
        counts: Counter = Counter()
        for record in records:
            counts.update(_labels(record.labels.get(head)) or [UNKNOWN])
        out[head] = dict(counts.most_common())
    return out


def combination_matrices(records: Sequence[Record], heads: Sequence[str],
                         separator: str = "_") -> list[dict]:
    """For each pair of heads: classes, counts, and the empty cells named as combinations
    (``black_dress``): the ones a model will have to generalise to, never having seen them."""
    counts = label_counts(records, heads)
    matrices = []
    for a, b in itertools.combinations(heads, 2):
        rows = sorted(c for c in counts[a] if c != UNKNOWN)
        columns = sorted(c for c in counts[b] if c != UNKNOWN)
        cells: Counter = Counter()
        for record in records:
            for x in _labels(record.labels.get(a)):
                for y in _labels(record.labels.get(b)):
                    cells[x, y] += 1
        table = [[cells[x, y] for y in columns] for x in rows]
        empty = [f"{x}{separator}{y}" for x in rows for y in columns if not cells[x, y]]
        matrices.append({"heads": [a, b], "rows": rows, "columns": columns, "counts": table,
                         "empty": empty})
    return matrices


def duplicate_issues(sets: Sequence[Sequence[int]], records: Sequence[Record],
                     keys: Sequence[str], heads: Sequence[str], *, kind: str, source: str,
                     scores: dict[int, float] | None = None,
                     split_of: dict[str, str] | None = None, first_group: int = 1
                     ) -> list[Issue]:
    """Rows for duplicate sets: one per member as ``kind``, one per member and head whose labels
    disagree inside the set, one per member when the set straddles the run's splits.

    ``scores``: severity per index (default 1.0, an exact copy).
    """
    issues: list[Issue] = []
    for number, members in enumerate(sets, start=first_group):
        group = f"{kind.split('_')[0]}-{number}"
        names = ", ".join(keys[i] for i in members)
        for i in members:
            issues.append(Issue(keys[i], kind, _score(scores, i), group=group, source=source,
                                detail=f"{len(members)} copies: {names}"))
        for head in heads:
            seen = {_text(records[i].labels.get(head)) for i in members}
            if len(seen) < 2:
                continue
            detail = "; ".join(f"{keys[i]}: {_text(records[i].labels.get(head))}"
                               for i in members)
            issues.extend(Issue(keys[i], "duplicate_label_conflict", _score(scores, i),
                                head=head, given=_text(records[i].labels.get(head)),
                                group=group, source=source, detail=detail) for i in members)
        if split_of:
            where = {i: split_of.get(keys[i], "not in the run") for i in members}
            if "train" in where.values() and {"val", "test"} & set(where.values()):
                detail = "; ".join(f"{keys[i]}: {where[i]}" for i in members)
                issues.extend(Issue(keys[i], "duplicate_across_splits", _score(scores, i),
                                    given=where[i], group=group, source=source, detail=detail)
                              for i in members)
    return issues


def _score(scores: dict[int, float] | None, index: int) -> float:
    return 1.0 if scores is None else float(scores.get(index, 1.0))


def label_text(value) -> str:
    """A label as one cell of a CSV: ``red``, ``party|work``, or empty when unknown."""
    items = _labels(value)
    return "|".join(items)

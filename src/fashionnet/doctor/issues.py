"""What the doctor reports: one `Issue` per image and problem, and the order of the sections.

Every finding, whoever made it (the decoder, cleanvision, cleanlab), becomes the same row so
that the CSV, the JSON and both reports are written by one piece of code, and so that a user
can feed the rows back as a manifest column ``exclude``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: Issue types, worst first: the order of the report's sections. The text says what the type
#: means and where it comes from.
ISSUE_TYPES: dict[str, str] = {
    "unreadable": "the file cannot be decoded (it is skipped by training and classify)",
    "label_issue": "likely wrong label (cleanlab, from out-of-sample predicted probabilities)",
    "duplicate_label_conflict": "duplicates whose labels disagree: at least one of them is wrong "
                                "(for near duplicates, look first: a perceptual hash ignores "
                                "colour, so one product photographed in two colours matches)",
    "duplicate_across_splits": "duplicates in different splits of the run (train and "
                               "validation/test): the held-out figures flatter the model",
    "exact_duplicate": "the same pixels more than once (cleanvision, or a path listed twice)",
    "near_duplicate": "the same photo re-encoded, resized or retouched (cleanvision perceptual "
                      "hash; with a model, also cleanlab on the model's embeddings)",
    "outlier": "unlike the rest of the dataset in the model's embeddings (cleanlab)",
    "ambiguous": "the model cannot decide between classes (highest normalised entropy of the "
                 "out-of-sample probabilities)",
    "odd_size": "much smaller or larger than most images (cleanvision)",
    "odd_aspect_ratio": "unusually wide or tall (cleanvision)",
    "dark": "too dark (cleanvision)",
    "light": "too bright, washed out (cleanvision)",
    "blurry": "blurry (cleanvision)",
    "low_information": "little content, e.g. a blank or single-colour image (cleanvision)",
    "grayscale": "no colour at all: a colour label cannot be read from it (cleanvision)",
}

#: Issues that pre-fill the ``exclude`` column of the doctor's ``manifest.csv``: rows that are
#: wrong or redundant, not merely unusual. Exact duplicates: every copy but the first; label
#: conflicts: only between exact copies.
EXCLUDED_BY_DEFAULT = ("unreadable", "label_issue", "duplicate_label_conflict")


@dataclasses.dataclass
class Issue:
    """One image and one problem.

    ``path`` is relative to the dataset root (the key `split.json` uses); ``score`` is from 0 to
    1, higher is worse (one minus the library's quality score); ``group`` ties the members of a
    duplicate set together; ``source`` names who found it (decoder, cleanvision, manifest,
    held-out, cross-validated, embeddings).
    """

    path: str
    issue: str
    score: float
    head: str = ""
    given: str = ""
    suggested: str = ""
    group: str = ""
    source: str = ""
    detail: str = ""

    def to_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row["score"] = round(float(self.score), 4)
        return row


FIELDS = [f.name for f in dataclasses.fields(Issue)]


def sort_issues(issues: list[Issue]) -> list[Issue]:
    """Sections in `ISSUE_TYPES` order; inside one, worst first (then by group and path)."""
    order = {name: i for i, name in enumerate(ISSUE_TYPES)}
    return sorted(issues, key=lambda x: (order.get(x.issue, len(order)), -x.score, x.group,
                                         x.head, x.path))


@dataclasses.dataclass
class DoctorResult:
    """Everything a report is written from (`run_doctor` returns it)."""

    dataset: str
    root: Path
    heads: list[str]
    paths: list[Path]
    keys: list[str]
    labels: list[dict]
    issues: list[Issue]
    label_counts: dict[str, dict[str, int]]
    combinations: list[dict]
    model: str | None = None
    sources: dict[str, dict] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Images flagged per issue type (an image flagged for two heads counts once)."""
        seen: dict[str, set[str]] = {}
        for issue in self.issues:
            seen.setdefault(issue.issue, set()).add(issue.path)
        return {name: len(seen[name]) for name in ISSUE_TYPES if name in seen}

    def summary(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "images": len(self.paths),
                "heads": self.heads, "issue_counts": self.counts(),
                "out_of_sample_sources": self.sources, "notes": self.notes,
                "label_counts": self.label_counts, "combinations": self.combinations,
                "seconds": round(self.seconds, 1)}

"""`fashionnet runs DIR`: every bundle under a folder, its key figures side by side.

Read from each bundle's own JSON (never its model), so a folder of a hundred runs lists in a
moment; a folder that is not a readable bundle is skipped with its reason.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from fashionnet.bundle import LABELS_FILE, load_bundle
from fashionnet.errors import FashionNetError
from fashionnet.files import read_json_file

#: How deep below DIR bundles are looked for (runs/NAME, runs/study/folds/COMBO, ...).
MAX_DEPTH = 4


def find_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Folders under ``root`` (itself included) holding a labels.json; links not followed."""
    root = Path(root)
    if not root.is_dir():
        raise FashionNetError(f"{root}: no such folder")
    found = []
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).parts) - base
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) \
            if depth < max_depth else []
        if LABELS_FILE in filenames:
            found.append(Path(dirpath))
            dirnames[:] = [d for d in dirnames if d == "folds"]  # a study's fold bundles
    return found


def run_row(path: Path, root: Path) -> dict:
    """One run's key figures (missing ones are empty)."""
    bundle = load_bundle(path)
    metrics = bundle.metrics or {}
    test = metrics.get("test") or {}
    try:
        config = read_json_file(path / "config.json", "configuration")
    except FashionNetError:
        config = {}
    evaluation = None
    if (path / "evaluation" / "report.json").is_file():
        try:
            evaluation = read_json_file(path / "evaluation" / "report.json", "evaluation")
        except FashionNetError:
            evaluation = None
    row = {"run": path.relative_to(root).as_posix() if path != root else path.name,
           "version": bundle.version,
           "architecture": config.get("architecture", ""),
           "input": bundle.preprocessing.size,
           "epochs": metrics.get("epochs_run", ""),
           "test_images": test.get("count", "")}
    for name, h in (test.get("heads") or {}).items():
        row[f"{name}"] = h.get("accuracy")
    row["exact"] = test.get("exact_match")
    row["unseen"] = (evaluation or {}).get("unseen_exact_match")
    row["train_s"] = metrics.get("train_seconds", "")
    row["size_mb"] = round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                           / 1e6, 1)
    return row


def runs_table(root: str | Path) -> tuple[list[dict], list[str]]:
    """Rows for every readable run under ``root``, and one note per unreadable one."""
    root = Path(root)
    rows, notes = [], []
    for path in find_runs(root):
        try:
            rows.append(run_row(path, root))
        except FashionNetError as exc:
            notes.append(f"skipped {path}: {exc}")
    return rows, notes


#: Columns that are not shares (every other column is a test accuracy, shown in %).
PLAIN_COLUMNS = frozenset({"run", "version", "architecture", "input", "epochs", "test_images",
                           "train_s", "size_mb"})


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column not in PLAIN_COLUMNS and isinstance(value, (int, float)):
        return f"{100 * value:.2f}%"
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_runs(rows: list[dict], fmt: str = "table") -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        return out.getvalue()
    cells = [[_cell(k, row.get(k)) for k in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines) + "\n"

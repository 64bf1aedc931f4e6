"""Where labelled images come from: a folder per combination, or a CSV/JSON/JSONL manifest.

Every source yields `Record`s: an image path plus ``{head: label}``, where a label is a string
(single-label head), a frozenset of strings (multi-label head) or None (unknown: masked).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from fashionnet.errors import FashionNetError
from fashionnet.heads import Label

DEFAULT_HEADS = ("color", "category")
MANIFEST_SUFFIXES = (".csv", ".json", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Record:
    path: Path
    labels: dict[str, Label]


def read_folders(root: str | Path, heads: Sequence[str] = DEFAULT_HEADS,
                 separator: str = "_") -> list[Record]:
    """One sub-folder per combination: ``black_jeans/`` -> {color: black, category: jeans}."""
    root = Path(root)
    if not root.is_dir():
        raise FashionNetError(f"{root}: dataset folder not found")
    records = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FashionNetError(f"{root}: no sub-folders; expect one folder per combination "
                              f"named like {separator.join(heads)}")
    for folder in folders:
        parts = folder.name.split(separator)
        if len(parts) != len(heads) or not all(parts):
            raise FashionNetError(
                f"{folder}: folder name has {len(parts)} part(s) split on {separator!r}, "
                f"expected {len(heads)} ({separator.join(heads)})"
            )
        labels = dict(zip(heads, parts))
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                records.append(Record(path, dict(labels)))
    if not records:
        raise FashionNetError(f"{root}: no image files in its sub-folders")
    return records


def read_manifest(path: str | Path, heads: Sequence[str] | None = None,
                  multi_heads: Sequence[str] = (), path_column: str = "path",
                  multi_separator: str = "|") -> tuple[list[Record], list[str]]:
    """Rows of (image path relative to the manifest, one column per head).

    An empty cell or JSON null is an unknown label. Cells of multi-label heads are split on
    ``multi_separator`` (or given as JSON lists). Returns the records and the head names.
    """
    path = Path(path)
    if not path.is_file():
        raise FashionNetError(f"{path}: manifest not found")
    rows = _read_rows(path)
    if not rows:
        raise FashionNetError(f"{path}: manifest has no rows")
    columns = list(rows[0].keys())
    if path_column not in columns:
        raise FashionNetError(f"{path}: no {path_column!r} column (columns: {', '.join(columns)})")
    names = list(heads) if heads else [c for c in columns if c != path_column]
    if not names:
        raise FashionNetError(f"{path}: no label columns besides {path_column!r}")
    records = []
    for line, row in enumerate(rows, start=2 if path.suffix == ".csv" else 1):
        image = row.get(path_column)
        if not image:
            raise FashionNetError(f"{path}: row {line} has an empty {path_column!r}")
        labels: dict[str, Label] = {}
        for name in names:
            if name not in row:
                raise FashionNetError(f"{path}: row {line} has no column {name!r}")
            labels[name] = _parse_label(row[name], name in multi_heads, multi_separator)
        records.append(Record((path.parent / str(image)).resolve(), labels))
    return records, names


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FashionNetError(f"{path}: cannot read manifest ({exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return list(csv.DictReader(text.splitlines()))
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(text)
        else:
            raise FashionNetError(f"{path}: manifest must end in {', '.join(MANIFEST_SUFFIXES)}")
    except json.JSONDecodeError as exc:
        raise FashionNetError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FashionNetError(f"{path}: expected a list of objects, one per image")
    return rows


def _parse_label(value, multi: bool, separator: str) -> Label:
    if value is None:
        return None
    if isinstance(value, list):
        items = [str(v).strip() for v in value if str(v).strip()]
        return frozenset(items) if multi else (items[0] if len(items) == 1 else frozenset(items))
    text = str(value).strip()
    if not text:
        return None
    if multi:
        return frozenset(p.strip() for p in text.split(separator) if p.strip())
    return text


def read_dataset(source: str | Path, heads: Sequence[str] | None = None,
                 multi_heads: Sequence[str] = (), separator: str = "_",
                 multi_separator: str = "|", path_column: str = "path"
                 ) -> tuple[list[Record], list[str]]:
    """A folder or a manifest file, whichever ``source`` is. Returns records and head names."""
    source = Path(source)
    if source.is_dir():
        names = list(heads) if heads else list(DEFAULT_HEADS)
        return read_folders(source, names, separator), names
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(source, heads, multi_heads, path_column, multi_separator)
    if not source.exists():
        raise FashionNetError(f"{source}: dataset not found (expected a folder or a manifest)")
    raise FashionNetError(f"{source}: not a folder nor a {'/'.join(MANIFEST_SUFFIXES)} manifest")

"""Where labelled images come from: a folder per combination, or a CSV/JSON/JSONL manifest.

Every source yields `Record`s: an image path plus ``{head: label}``, where a label is a string
(single-label head), a frozenset of strings (multi-label head) or None (unknown: masked).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fashionnet.errors import FashionNetError
from fashionnet.heads import Label

log = logging.getLogger("fashionnet")

DEFAULT_HEADS = ("color", "category")
MANIFEST_SUFFIXES = (".csv", ".json", ".jsonl")
#: A manifest column that is never a head: a non-empty cell (other than 0/false/no) leaves the
#: row out, so a `fashionnet doctor` report can be fed back without deleting any image.
EXCLUDE_COLUMN = "exclude"
#: What counts as an image file inside a folder, for training and classify alike (the decoder
#: still sniffs the content: a .jpg that is really a PNG is read). Other files (README.txt,
#: .DS_Store, notes) are not images and are left out with a count, never an error.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                            ".jfif", ".avif"})
#: The key under which `image_files` counts the linked sub-folders it did not follow.
LINKED_FOLDER = "(linked folder)"


def image_files(folder: Path) -> tuple[list[Path], Counter]:
    """The image files anywhere under ``folder`` (sub-folders included, hidden ones not), sorted,
    and a count of the other files left out, by suffix.

    Symbolically linked sub-folders are not followed (counted): a link to
    ``..`` would relabel every other class's images, and two links to ``.`` make the walk
    exponential. Linked files are read; ``folder`` itself may be a link.
    """
    found: list[Path] = []
    others: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        if linked:
            others[LINKED_FOLDER] += len(linked)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in linked)
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                others[path.suffix.lower() or "(no suffix)"] += 1
    return sorted(found), others


def describe_skipped(others: Counter) -> str:
    """``3 not images (2 .txt, 1 .md)``, ``1 linked folder(s) not followed``, or ``""``."""
    others = Counter(others)
    links = others.pop(LINKED_FOLDER, 0)
    total = sum(others.values())
    parts = []
    if total:
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in others.most_common())
        parts.append(f"{total} not image file(s): {kinds}")
    if links:
        parts.append(f"{links} linked folder(s) not followed")
    return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Record:
    path: Path
    labels: dict[str, Label]


def read_folders(root: str | Path, heads: Sequence[str] = DEFAULT_HEADS,
                 separator: str = "_") -> list[Record]:
    """One sub-folder per combination: ``black_jeans/`` -> {color: black, category: jeans}.

    Every image file under a combination folder counts, in nested sub-folders too (as
    ``classify`` reads a folder); files that are not images by their suffix are left out and
    counted. Logs one line: what was found and what was left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise FashionNetError(f"{root}: dataset folder not found")
    records = []
    skipped: Counter = Counter()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FashionNetError(f"{root}: no sub-folders; expect one folder per combination "
                              f"named like {separator.join(heads)}")
    real_root = Path(os.path.realpath(root))
    for folder in folders:
        if folder.is_symlink():
            target = Path(os.path.realpath(folder))
            if (target == real_root or real_root.is_relative_to(target)
                    or target.is_relative_to(real_root)):
                raise FashionNetError(f"{folder}: a symbolic link to {target}, inside or above "
                                      f"the dataset folder: its images would be counted under "
                                      f"two labels")
        parts = folder.name.split(separator)
        if len(parts) != len(heads) or not all(parts):
            raise FashionNetError(
                f"{folder}: folder name has {len(parts)} part(s) split on {separator!r}, "
                f"expected {len(heads)} ({separator.join(heads)})"
            )
        labels = dict(zip(heads, parts))
        files, others = image_files(folder)
        skipped.update(others)
        records.extend(Record(path, dict(labels)) for path in files)
    if not records:
        extra = f" ({describe_skipped(skipped)})" if skipped else ""
        raise FashionNetError(f"{root}: no image files in its sub-folders{extra}")
    left_out = describe_skipped(skipped)
    log.info("found %d images in %d folders%s", len(records), len(folders),
             f" ({left_out}, left out)" if left_out else "")
    return records


def read_manifest(path: str | Path, heads: Sequence[str] | None = None,
                  multi_heads: Sequence[str] = (), path_column: str = "path",
                  multi_separator: str = "|", *, allow_outside: bool = False
                  ) -> tuple[list[Record], list[str]]:
    """Rows of (image path relative to the manifest, one column per head).

    An empty cell or JSON null is an unknown label. Cells of multi-label heads are split on
    ``multi_separator`` (or given as JSON lists). Returns the records and the head names.
    Image paths must stay inside the manifest's folder (no ``..``, no absolute path) unless
    ``allow_outside``. Errors name the manifest and the line the row starts on.
    """
    path = Path(path)
    if not path.is_file():
        raise FashionNetError(f"{path}: manifest not found")
    rows = _read_rows(path)
    if not rows:
        raise FashionNetError(f"{path}: manifest has no rows")
    columns = list(rows[0][1].keys())
    if path_column not in columns:
        raise FashionNetError(f"{path}: no {path_column!r} column (columns: {', '.join(map(str, columns))})")
    names = list(heads) if heads else [c for c in columns if c not in (path_column, EXCLUDE_COLUMN)]
    excludes = EXCLUDE_COLUMN not in names  # a head may be called "exclude"; then it is a head
    if not names:
        raise FashionNetError(f"{path}: no label columns besides {path_column!r}")
    absent = [n for n in names if not any(n in row for _, row in rows)]
    if absent:
        raise FashionNetError(f"{path}: no column {absent[0]!r} for head {absent[0]!r} "
                              f"(columns: {', '.join(map(str, columns))})")
    folder = path.parent
    records = []
    excluded = 0
    for line, row in rows:
        where = f"{path}: line {line}"
        if excludes and _excluded(row.get(EXCLUDE_COLUMN)):
            excluded += 1
            continue
        image = _manifest_image(where, row, path_column, folder, allow_outside)
        labels: dict[str, Label] = {}
        for name in names:
            if name not in row:
                raise FashionNetError(f"{where} has no column {name!r} (columns: "
                                      f"{', '.join(map(str, row))})")
            value = row[name]
            if value is not None and not isinstance(value, (str, int, float, list)):
                raise FashionNetError(f"{where}: {name!r} must be a label or a list, not "
                                      f"{type(value).__name__}")
            labels[name] = _parse_label(value, name in multi_heads, multi_separator)
        records.append(Record(image, labels))
    if not records:
        raise FashionNetError(f"{path}: every row is excluded (column {EXCLUDE_COLUMN!r})")
    log.info("found %d rows in %s (heads: %s)%s", len(records), path.name, ", ".join(names),
             f"; {excluded} excluded (column {EXCLUDE_COLUMN!r})" if excluded else "")
    return records, names


def _excluded(value) -> bool:
    """An ``exclude`` cell that leaves its row out: anything but empty, 0, false, no, null."""
    if value is None or value is False or value == 0:
        return False
    return str(value).strip().lower() not in ("", "0", "false", "no")


def _manifest_image(where: str, row: dict, path_column: str, folder: Path,
                    allow_outside: bool) -> Path:
    """A manifest row's image path, checked (present, a string, inside ``folder``), resolved."""
    image = row.get(path_column)
    if image is None or (isinstance(image, str) and not image.strip()):
        raise FashionNetError(f"{where} has an empty {path_column!r}")
    if not isinstance(image, str):
        raise FashionNetError(f"{where}: {path_column!r} must be a string, not "
                              f"{type(image).__name__}")
    if not allow_outside and _leaves(image):
        raise FashionNetError(f"{where}: path {image!r} leaves the manifest's folder; pass "
                              f"--allow-outside to read images outside {folder}")
    full = (folder / image).resolve()
    if not allow_outside and not full.is_relative_to(folder.resolve()):
        # Checked on the resolved path too: images/etc_link -> /etc is lexically inside.
        raise FashionNetError(f"{where}: path {image!r} leads outside the manifest's folder "
                              f"(through a symbolic link, to {full}); pass --allow-outside to "
                              f"read images outside {folder}")
    return full


def image_list(source: str | Path, path_column: str = "path", *,
               allow_outside: bool = False) -> list[str]:
    """The images to label, unlabelled: every image file under a folder, the ``path`` column of
    a manifest (other columns ignored, may be absent), or a text file of paths or URIs.

    A text file (any other suffix) has one path or URI per line; blank lines and lines starting
    with ``#`` are skipped; relative paths are read from the file's folder; a URI
    (``s3://bucket/a.jpg``) is kept as it is, for readers that open object storage.
    """
    source = Path(source)
    if source.is_dir():
        found, _ = image_files(source)
        if not found:
            raise FashionNetError(f"{source}: no image files in this folder")
        return [str(p) for p in found]
    if not source.is_file():
        raise FashionNetError(f"{source}: no such folder, manifest or list of paths")
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        rows = _read_rows(source)
        if rows and path_column not in rows[0][1]:
            raise FashionNetError(f"{source}: no {path_column!r} column")
        paths = [str(_manifest_image(f"{source}: line {line}", row, path_column,
                                     source.parent, allow_outside)) for line, row in rows]
    else:
        try:
            lines = source.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise FashionNetError(f"{source}: cannot read the list of paths ({exc})") from None
        paths = [line.strip() if "://" in line else str((source.parent / line.strip()).resolve())
                 for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise FashionNetError(f"{source}: lists no images")
    return paths


def _leaves(image: str) -> bool:
    """Whether a manifest path points outside the manifest's folder (lexically)."""
    if os.path.isabs(image) or Path(image).drive or image.startswith(("/", "\\")):
        return True
    normal = os.path.normpath(image.replace("\\", "/"))
    return normal == ".." or normal.startswith("../") or normal.startswith("..\\")


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line the row starts on, row) for each row of a CSV, JSON or JSONL manifest.

    CSV goes through the csv module on the file itself (``newline=""``): a quoted cell may
    hold a newline, and a form feed or U+2028 inside a cell is only a character, as in any
    spreadsheet; ``str.splitlines`` would have split the row there.
    """
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise FashionNetError(f"{path}: manifest must end in {', '.join(MANIFEST_SUFFIXES)}")
    try:
        if suffix == ".csv":
            return _read_csv(path)
        with path.open(encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise FashionNetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FashionNetError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise FashionNetError(f"{path}: line {number}: invalid JSON ({exc.msg}, column "
                                      f"{exc.colno})") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FashionNetError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno} column "
                                  f"{exc.colno})") from None
        if not isinstance(doc, list):
            raise FashionNetError(f"{path}: expected a list of objects, one per image")
        rows = list(zip(_json_lines(text, len(doc)), doc))
    for number, row in rows:
        if not isinstance(row, dict):
            raise FashionNetError(f"{path}: line {number}: expected an object, not "
                                  f"{type(row).__name__}")
    return rows


def _json_lines(text: str, count: int) -> list[int]:
    """The line each element of a top-level JSON list starts on (for messages), in one pass."""
    decoder = json.JSONDecoder()
    position, newlines, lines = text.index("[") + 1, 0, []
    counted = 0
    for _ in range(count):
        while text[position] in " \t\r\n,":
            position += 1
        newlines += text.count("\n", counted, position)
        counted = position
        lines.append(newlines + 1)
        _, position = decoder.raw_decode(text, position)
    return lines


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    """Rows as dicts; a row with more or fewer cells than the header is an error."""
    rows: list[tuple[int, dict]] = []
    header: list[str] | None = None
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue  # blank line, or a row of empty cells
                if header is None:
                    header = [c.strip() for c in cells]
                    repeated = sorted({c for c in header if header.count(c) > 1})
                    if repeated:
                        raise FashionNetError(f"{path}: line {line}: the header repeats "
                                              f"column(s) {repeated}")
                    continue
                if len(cells) != len(header):
                    raise FashionNetError(f"{path}: line {line} has {len(cells)} cells but the "
                                          f"header has {len(header)} columns")
                rows.append((line, dict(zip(header, cells))))
        except csv.Error as exc:
            raise FashionNetError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
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


def dataset_root(source: str | Path) -> Path:
    """The folder a dataset's image paths are relative to: the folder itself, or the
    manifest's folder."""
    source = Path(source)
    return source if source.is_dir() else source.parent


def relative_key(path: str | Path, root: str | Path) -> str:
    """An image's path relative to its dataset root, with ``/``: the same wherever the dataset
    is and however its path is spelled (``photos``, ``./photos/``, ``/home/me/photos``)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def read_dataset(source: str | Path, heads: Sequence[str] | None = None,
                 multi_heads: Sequence[str] = (), separator: str = "_",
                 multi_separator: str = "|", path_column: str = "path", *,
                 allow_outside: bool = False) -> tuple[list[Record], list[str]]:
    """A folder or a manifest file, whichever ``source`` is. Returns records and head names.

    ``allow_outside``: let manifest paths leave the manifest's folder (``--allow-outside``).
    """
    source = Path(source)
    if source.is_dir():
        names = list(heads) if heads else list(DEFAULT_HEADS)
        return read_folders(source, names, separator), names
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(source, heads, multi_heads, path_column, multi_separator,
                             allow_outside=allow_outside)
    if not source.exists():
        raise FashionNetError(f"{source}: dataset not found (expected a folder or a manifest)")
    raise FashionNetError(f"{source}: not a folder nor a {'/'.join(MANIFEST_SUFFIXES)} manifest")

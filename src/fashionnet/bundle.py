"""A trained model on disk: one directory, written atomically, loaded without running code.

    run/
      model.keras      Keras model (config + weights; loads in safe mode)
      model.onnx       optional, from `fashionnet export` (the TensorFlow-free runtime)
      labels.json      heads and classes in output order, preprocessing, trained combinations,
                       calibration temperatures, out-of-set rules (`fashionnet.open_set`)
      config.json      the training configuration
      metrics.json     train / validation / test figures
      history.csv, losses.png, accuracy.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashionnet.data.images import Preprocessing
from fashionnet.errors import FashionNetError
from fashionnet.files import MAX_JSON_BYTES, read_json_file, read_small_bytes
from fashionnet.heads import HeadSpec
from fashionnet.open_set import OpenSetRule
from fashionnet.outputs import check_replaceable, claim_output

FORMAT_VERSION = 1
LABELS_FILE = "labels.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
SPLIT_FILE = "split.json"
#: labels.json lists head and class names: a megabyte is thousands of classes.
MAX_LABELS_BYTES = 4 * 2**20


@dataclasses.dataclass
class Bundle:
    """What a bundle says about its model; the model itself is loaded by whoever runs it."""

    path: Path
    heads: list[HeadSpec]
    preprocessing: Preprocessing
    trained_combinations: list[str] = dataclasses.field(default_factory=list)
    temperatures: dict[str, float] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: str = ""
    #: per single-label head, when it answers "unknown" (absent in bundles made before them)
    open_set: dict[str, OpenSetRule] = dataclasses.field(default_factory=dict)

    @property
    def keras_path(self) -> Path:
        return self.path / KERAS_FILE

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def labels_document(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "heads": [h.to_dict() for h in self.heads],
            "outputs": [h.output_name for h in self.heads],
            "input_size": self.preprocessing.size,
            "preprocessing": self.preprocessing.to_dict(),
            "trained_combinations": self.trained_combinations,
            "temperatures": self.temperatures,
            **({"open_set": {name: rule.to_dict() for name, rule in self.open_set.items()}}
               if self.open_set else {}),
        }


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle's JSON; raise FashionNetError naming the file and field if anything is off.

    Checked here: the document's shape and types, unique head names, at least one class per
    head and no duplicates, the input size, finite positive temperatures for known heads,
    out-of-set rules that fit their heads. The model itself is checked against these by
    whoever loads it (`Predictor`).
    """
    path = Path(path)
    labels_path = path / LABELS_FILE
    if not path.is_dir():
        recover(path)
    if not path.is_dir():
        raise FashionNetError(f"{path}: model bundle folder not found")
    if not labels_path.exists() and not labels_path.is_symlink():
        raise FashionNetError(f"{labels_path}: missing; is {path} a fashionnet model bundle?")
    doc = read_json_file(labels_path, "labels file", limit=MAX_LABELS_BYTES)
    bad = _Invalid(labels_path)
    if not isinstance(doc, dict):
        raise bad("", f"must be a JSON object, not {_kind(doc)}")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("format_version", f"must be an integer, not {_kind(version)}")
    if version > FORMAT_VERSION:
        raise FashionNetError(f"{labels_path}: made by a newer fashionnet "
                              f"(format {version}); upgrade to load it")
    heads = _read_heads(doc, bad)
    preprocessing = _read_preprocessing(doc, bad)
    temperatures = _read_temperatures(doc, heads, bad)
    combos = doc.get("trained_combinations", [])
    if not isinstance(combos, list) or not all(isinstance(c, str) for c in combos):
        raise bad("trained_combinations", "must be a list of strings")
    outputs = doc.get("outputs")
    if outputs is not None and outputs != [h.output_name for h in heads]:
        raise bad("outputs", f"{outputs!r} does not match the heads "
                             f"{[h.output_name for h in heads]!r}")
    metrics = _read_metrics(path / "metrics.json")
    return Bundle(path, heads, preprocessing, list(combos), temperatures, metrics,
                  str(doc.get("version", "")), _read_open_set(doc, heads, bad, labels_path))


def _read_metrics(file: Path) -> dict:
    """metrics.json, or {} when it is absent or not a JSON object (it only informs). A FIFO,
    a device or an oversized file is refused: reading one would hang or exhaust memory."""
    if not file.exists() and not file.is_symlink():
        return {}
    data = read_small_bytes(file, MAX_JSON_BYTES, "metrics file")
    try:
        metrics = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


class _Invalid:
    """Builds the one-line error for a bad field of labels.json."""

    def __init__(self, file: Path):
        self.file = file

    def __call__(self, field: str, problem: str) -> FashionNetError:
        where = f"{self.file}: field {field!r}" if field else f"{self.file}"
        return FashionNetError(f"{where} {problem}" if field else f"{where}: {problem}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_heads(doc: dict, bad: _Invalid) -> list[HeadSpec]:
    raw = doc.get("heads")
    if not isinstance(raw, list) or not raw:
        raise bad("heads", f"must be a non-empty list of head objects, not {_kind(raw)}"
                  + (" (empty)" if raw == [] else ""))
    heads, seen = [], set()
    for i, item in enumerate(raw):
        field = f"heads[{i}]"
        if not isinstance(item, dict):
            raise bad(field, f"must be an object, not {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"{field}.name", f"must be a non-empty string, not {_kind(name)}")
        if name in seen:
            raise bad(f"{field}.name", f"repeats the head {name!r}; head names must be unique")
        seen.add(name)
        classes = item.get("classes")
        if (not isinstance(classes, list) or not classes
                or not all(isinstance(c, str) and c for c in classes)):
            raise bad(f"{field}.classes", f"of head {name!r} must be a non-empty list of "
                                          f"non-empty strings")
        for key, types in (("kind", str), ("branch", str), ("loss_weight", (int, float)),
                           ("focal_gamma", (int, float)), ("threshold", (int, float))):
            value = item.get(key)
            if key in item and (not isinstance(value, types) or isinstance(value, bool)):
                raise bad(f"{field}.{key}", f"of head {name!r} has the wrong type "
                                            f"({_kind(value)})")
        threshold = item.get("threshold", 0.5)
        if not (math.isfinite(threshold) and 0 < threshold < 1):
            raise bad(f"{field}.threshold", f"of head {name!r} must be between 0 and 1")
        try:
            heads.append(HeadSpec.from_dict(item, field))
        except FashionNetError as exc:
            raise bad(field, f"is invalid ({exc})") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise bad(field, f"is invalid ({' '.join(str(exc).split())})") from None
    return heads


def _read_preprocessing(doc: dict, bad: _Invalid) -> Preprocessing:
    raw = doc.get("preprocessing")
    if not isinstance(raw, dict):
        raise bad("preprocessing", f"must be an object, not {_kind(raw)}")
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise bad("preprocessing.size", f"must be an integer from 8 to 4096, not {size!r}")
    if "input_size" in doc and doc["input_size"] != size:
        raise bad("input_size", f"{doc['input_size']!r} differs from preprocessing.size {size}")
    background = raw.get("background", [255, 255, 255])
    if (not isinstance(background, list) or len(background) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                       for v in background)):
        raise bad("preprocessing.background", "must be three integers from 0 to 255")
    scale = raw.get("scale", 1.0 / 255.0)
    if (not isinstance(scale, (int, float)) or isinstance(scale, bool)
            or not math.isfinite(scale) or scale <= 0):
        raise bad("preprocessing.scale", f"must be a finite positive number, not {scale!r}")
    resize = raw.get("resize", "stretch")
    if resize != "stretch":
        raise bad("preprocessing.resize", f"{resize!r} is not supported (only 'stretch')")
    return Preprocessing.from_dict(raw)


def _read_temperatures(doc: dict, heads: list[HeadSpec], bad: _Invalid) -> dict[str, float]:
    raw = doc.get("temperatures", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad("temperatures", f"must be an object {{head: temperature}}, not {_kind(raw)}")
    names = {h.name for h in heads}
    out = {}
    for name, value in raw.items():
        if name not in names:
            raise bad(f"temperatures.{name}", f"names no head (heads: {', '.join(sorted(names))})")
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0):
            raise bad(f"temperatures.{name}", f"must be a finite positive number, not {value!r}")
        out[name] = float(value)
    return out


def _read_open_set(doc: dict, heads: list[HeadSpec], bad: _Invalid,
                   labels_path: Path) -> dict[str, OpenSetRule]:
    raw = doc.get("open_set", {})
    if not isinstance(raw, dict):
        raise bad("open_set", f"must be an object {{head: rule}}, not {_kind(raw)}")
    by_name = {h.name: h for h in heads}
    rules = {}
    for name, data in raw.items():
        if name not in by_name:
            raise bad(f"open_set.{name}", f"names no head (heads: {', '.join(sorted(by_name))})")
        rules[name] = OpenSetRule.from_dict(data, by_name[name],
                                            f"{labels_path}: field open_set.{name}")
    return rules


def read_split(run: str | Path) -> dict | None:
    """A run's ``split.json`` ({"paths": ..., "train": [keys], "val": ..., "test": ...}), or
    None when it is missing, unreadable or not a JSON object: callers decide how bad that is."""
    try:
        document = json.loads(read_small_bytes(Path(run) / SPLIT_FILE, MAX_JSON_BYTES,
                                               "split file").decode("utf-8-sig"))
    except (FashionNetError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False,
                     command: str = "fashionnet") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target``.

    A crash leaves ``target`` as it was, or (killed between the two renames of an overwrite)
    set aside as ``.NAME.old-PID``, which the next run (or `load_bundle`) puts back. An
    existing ``target`` is refused unless ``overwrite``, and even then unless fashionnet wrote
    it (`fashionnet.outputs`): the new folder carries the marker that says so. Leftovers of dead
    runs (temporary folders, aside copies) are cleaned first.
    """
    target = Path(target)
    recover(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FashionNetError(f"{target}: already exists; choose another --output or "
                              f"pass --overwrite")
    check_replaceable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FashionNetError(f"{target}: cannot create its folder "
                              f"({exc.strerror or exc}: {exc.filename or target.parent})") from None
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise FashionNetError(f"{target}: cannot write there ({exc.strerror or exc})") from None
    try:
        yield tmp
        claim_output(tmp, command)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        # Set the old bundle aside, bring the new one in, then delete the old one. Killed in
        # between, `recover` restores the aside copy; failing here, we restore it at once.
        target.rename(old)
        _fsync(target.parent)
        try:
            tmp.rename(target)
        except BaseException:
            if not target.exists():
                old.rename(target)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        tmp.rename(target)
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: str | Path) -> list[Path]:
    """Repair what a killed run left next to ``target``; returns what it removed or restored.

    - ``target`` missing but an aside copy ``.NAME.old-PID`` of a dead process present: the
      crash came between the two renames of an overwrite; the copy is renamed back.
    - aside copies next to an existing ``target`` and temporary ``.NAME.tmp-PID`` folders of
      dead processes: deleted.
    - inside ``target``: temporary files ``.FILE.tmp-PID`` of dead exports, deleted.
    """
    target = Path(target)
    touched: list[Path] = []
    parent = target.parent
    if not parent.is_dir():
        return touched
    asides = sorted((p for p in _leftovers(parent, f".{target.name}.old-")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    if asides and not target.exists():
        with contextlib.suppress(OSError):
            asides[0].rename(target)
            _fsync(parent)
            touched.append(asides.pop(0))
    for leftover in [*asides, *_leftovers(parent, f".{target.name}.tmp-")]:
        shutil.rmtree(leftover, ignore_errors=True)
        touched.append(leftover)
    if target.is_dir():
        for leftover in _leftovers(target, ".", inner=True):
            _remove_path(leftover)
            touched.append(leftover)
    return touched


_PID_SUFFIX = re.compile(r"-(\d+)$")
_INNER_TMP = re.compile(r"^\..*\.tmp-(\d+)(\.[A-Za-z]+)?$")


def _leftovers(folder: Path, prefix: str, inner: bool = False) -> list[Path]:
    """Entries ``<prefix>...-PID`` in ``folder`` whose process is no longer running.

    ``inner``: temporary files inside a bundle, ``.NAME.tmp-PID`` (or ``.NAME.tmp-PID.ext``).
    """
    found = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.startswith(prefix):
                continue
            match = (_INNER_TMP.match(entry.name) if inner
                     else _PID_SUFFIX.search(entry.name))
            if match and not _alive(int(match.group(1))):
                found.append(entry)
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier call that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync(path: Path) -> None:
    """Flush a file or folder entry to disk (best effort: not every file system can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def update_bundle_file(bundle_dir: str | Path, name: str, write) -> Path:
    """Add or replace one file in an existing bundle atomically (write to temp, then rename).

    Temporary files that killed runs left in the bundle are removed first.
    """
    bundle_dir = Path(bundle_dir)
    recover(bundle_dir)
    final = bundle_dir / name
    tmp = bundle_dir / f".{name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(bundle_dir)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final

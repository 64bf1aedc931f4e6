"""A trained model on disk: one directory, written atomically, loaded without running code.

    run/
      model.keras      Keras model (config + weights; loads in safe mode)
      model.onnx       optional, from `fashionnet export` (the TensorFlow-free runtime)
      labels.json      heads and classes in output order, preprocessing, trained combinations,
                       calibration temperatures
      config.json      the training configuration
      metrics.json     train / validation / test figures
      history.csv, losses.png, accuracy.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashionnet.data.images import Preprocessing
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec

FORMAT_VERSION = 1
LABELS_FILE = "labels.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"


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
        }


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle's JSON; raise FashionNetError naming the file if anything is off."""
    path = Path(path)
    labels_path = path / LABELS_FILE
    if not path.is_dir():
        raise FashionNetError(f"{path}: model bundle folder not found")
    if not labels_path.is_file():
        raise FashionNetError(f"{labels_path}: missing; is {path} a fashionnet model bundle?")
    try:
        doc = json.loads(labels_path.read_text())
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise FashionNetError(f"{labels_path}: made by a newer fashionnet "
                                  f"(format {doc['format_version']}); upgrade to load it")
        heads = [HeadSpec.from_dict(h, str(labels_path)) for h in doc["heads"]]
        preprocessing = Preprocessing.from_dict(doc["preprocessing"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise FashionNetError(f"{labels_path}: not a valid labels file ({exc})") from None
    for head in heads:
        if not head.classes:
            raise FashionNetError(f"{labels_path}: head {head.name!r} has 0 classes")
    metrics = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        metrics = json.loads((path / "metrics.json").read_text())
    return Bundle(path, heads, preprocessing, list(doc.get("trained_combinations", [])),
                  {k: float(v) for k, v in doc.get("temperatures", {}).items()}, metrics,
                  str(doc.get("version", "")))


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
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    A crash leaves ``target`` as it was (and at most a hidden temporary folder). An existing
    ``target`` is refused unless ``overwrite``.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FashionNetError(f"{target}: already exists; choose another --output or "
                              f"pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def update_bundle_file(bundle_dir: str | Path, name: str, write) -> Path:
    """Add or replace one file in an existing bundle atomically (write to temp, then rename)."""
    bundle_dir = Path(bundle_dir)
    final = bundle_dir / name
    tmp = bundle_dir / f".{name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final

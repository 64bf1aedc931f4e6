"""Pooled features of a frozen pretrained backbone, computed once per image and kept on disk.

A frozen backbone turns each image into the same 1280 numbers every epoch and every fold, so
they are computed once: the image is decoded at the backbone's input size (the project's
`decode_image`), made grayscale (ITU-R 601, as the category branch sees it) and repeated to
three channels, optionally mirrored, and run through the backbone. Each result is a plain
``.npy`` file named by the SHA-256 of the image file's bytes, in a folder named by everything
else that changes it: backbone, weights checksum, input size, view, decoder version. A file
whose bytes change gets a new name, so stale features are never read; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fashionnet.data.images import (
    DECODER_VERSION,
    ImageDecodeError,
    _open_regular,
    cache_dir,
    decode_image,
)

#: Bumped whenever the way features are computed changes.
FEATURE_VERSION = 1
VIEWS = ("plain", "mirror")
LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)


@dataclasses.dataclass
class Backbone:
    """A frozen feature extractor: ``model`` maps (n, size, size, 3) float pixels in 0..255 to
    (n, dims); ``name`` and ``weights_sha256`` identify it in the cache."""

    name: str
    weights_sha256: str
    input_size: int
    dims: int
    model: Callable[[np.ndarray], np.ndarray]
    dtype: str = "float32"  # what is stored: a feature map's 62,720 values keep float16

    def folder(self, view: str) -> str:
        return (f"{self.name}_{self.weights_sha256[:16]}_{self.input_size}px_gray3_{view}"
                f"_d{DECODER_VERSION}_f{FEATURE_VERSION}")


def lite0_backbone(input_size: int = 224, batch_size: int = 32) -> Backbone:
    """EfficientNet-Lite0 with its ImageNet weights, pooled 1280-d output."""
    from fashionnet.model.efficientnet_lite import (
        FEATURES,
        NAME,
        WEIGHTS_SHA256,
        pretrained_lite0,
    )

    model = pretrained_lite0(input_size)
    return Backbone(NAME, WEIGHTS_SHA256, input_size, FEATURES,
                    lambda x: model.predict(x, batch_size=batch_size, verbose=0))


@dataclasses.dataclass
class Features:
    """One (n, dims) array per view for the readable images, their indices, and the skipped."""

    views: dict[str, np.ndarray]
    kept: np.ndarray
    failures: list[str]
    computed: int = 0  # images run through the backbone (the others came from the cache)
    seconds: float = 0.0  # wall time spent decoding and running them


def gray3(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (n, h, w, 3) -> float32 luminance repeated to three channels."""
    gray = images.astype(np.float32) @ LUMA
    return np.repeat(gray[..., None], 3, axis=-1)


def view_of(images: np.ndarray, view: str) -> np.ndarray:
    if view == "plain":
        return images
    if view == "mirror":
        return images[:, :, ::-1]
    raise ValueError(f"unknown view {view!r}; one of {VIEWS}")


def _read(path: Path) -> bytes | str:
    try:
        with _open_regular(path) as handle:
            return handle.read()
    except ImageDecodeError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: cannot open ({exc.strerror or exc})"


def _decode_bytes(path: Path, data: bytes, size: int) -> np.ndarray | str:
    try:
        return decode_image(data, size)
    except ImageDecodeError as exc:  # name the file, not "upload"
        return f"{path}: {str(exc).split(': ', 1)[-1]}"


def _load(path: Path, dims: int, dtype: str = "float32") -> np.ndarray | None:
    """A cached vector, or None when absent or not a ``dtype`` vector of ``dims`` finite
    values."""
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if (not isinstance(value, np.ndarray) or value.shape != (dims,)
            or value.dtype != np.dtype(dtype) or not np.isfinite(value).all()):
        return None
    return value


def _save(path: Path, value: np.ndarray, dtype: str = "float32") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, value.astype(dtype), allow_pickle=False)
    os.replace(temporary, path)


def extract_features(paths: Sequence[str | Path], backbone: Backbone,
                     views: Sequence[str] = ("plain",), *, chunk: int = 256,
                     cache: bool = True, progress: bool = True,
                     root: Path | None = None) -> Features:
    """Features of every readable file, from the cache where its bytes were seen before."""
    for view in views:
        view_of(np.zeros((0, 1, 1, 3)), view)  # an unknown view fails before any work
    paths = [Path(p) for p in paths]
    root = (root or cache_dir().parent / "features") if cache else None
    results: dict[str, list[np.ndarray | None]] = {v: [None] * len(paths) for v in views}
    failures: dict[int, str] = {}
    computed, seconds = 0, 0.0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=f"features {backbone.input_size}px", unit="img",
                   leave=False, disable=None)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), chunk):
            indices = range(start, min(start + chunk, len(paths)))
            raw = list(pool.map(_read, (paths[i] for i in indices)))
            todo: list[tuple[int, bytes, str]] = []
            first: dict[str, int] = {}  # identical files in a chunk are run once
            copies: dict[int, int] = {}
            for i, data in zip(indices, raw):
                if isinstance(data, str):
                    failures[i] = data
                    continue
                digest = hashlib.sha256(data).hexdigest()
                missing = False
                for view in views:
                    hit = _load(root / backbone.folder(view) / digest[:2] / f"{digest}.npy",
                                backbone.dims, backbone.dtype) if root else None
                    results[view][i] = hit
                    missing = missing or hit is None
                if missing and digest in first:
                    copies[i] = first[digest]
                elif missing:
                    first[digest] = i
                    todo.append((i, data, digest))
            if todo:
                began = time.perf_counter()
                decoded = list(pool.map(lambda t: _decode_bytes(paths[t[0]], t[1],
                                                                backbone.input_size), todo))
                good = [(t, d) for t, d in zip(todo, decoded) if not isinstance(d, str)]
                for (i, _, _), d in zip(todo, decoded):
                    if isinstance(d, str):
                        failures[i] = d
                if good:
                    pixels = gray3(np.stack([d for _, d in good]))
                    for view in views:
                        values = _run(backbone, view_of(pixels, view))
                        for ((i, _, digest), _), value in zip(good, values):
                            results[view][i] = value
                            if root:
                                _save(root / backbone.folder(view) / digest[:2] /
                                      f"{digest}.npy", value, backbone.dtype)
                    computed += len(good)
                seconds += time.perf_counter() - began
            for i, j in copies.items():
                if j in failures:
                    failures[i] = f"{paths[i]}: {failures[j].split(': ', 1)[-1]}"
                for view in views:
                    results[view][i] = results[view][j]
            if bar is not None:
                bar.update(len(indices))
    if bar is not None:
        bar.close()
    kept = np.array([i for i in range(len(paths)) if i not in failures], dtype=np.int64)
    arrays = {v: (np.stack([results[v][i] for i in kept]) if len(kept)
                  else np.zeros((0, backbone.dims), backbone.dtype)) for v in views}
    return Features(arrays, kept, [failures[i] for i in sorted(failures)], computed, seconds)


def _run(backbone: Backbone, pixels: np.ndarray) -> np.ndarray:
    values = np.asarray(backbone.model(np.ascontiguousarray(pixels)), dtype=np.float32)
    values = values.reshape(len(pixels), -1).astype(backbone.dtype)
    if values.shape != (len(pixels), backbone.dims):
        raise ValueError(f"{backbone.name} returned {values.shape}, not "
                         f"({len(pixels)}, {backbone.dims})")
    return values

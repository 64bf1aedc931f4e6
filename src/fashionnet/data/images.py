"""Decode real-world image files into uint8 RGB arrays of the model's input size.

Survives what users really have: JPEG, PNG (RGBA flattened onto white, palette), grayscale,
16-bit, CMYK, EXIF orientation, GIF/BMP/WebP, and extensions that lie (Pillow sniffs the
content). Huge images are refused before decoding (decompression bombs). Training and
inference both go through `decode_image`, so preprocessing cannot drift between them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fashionnet.errors import FashionNetError

log = logging.getLogger("fashionnet")

DEFAULT_MAX_PIXELS = 64_000_000
#: Bumped whenever decoding changes, so that cached arrays from older code are not reused.
DECODER_VERSION = 1
WHITE = (255, 255, 255)


class ImageDecodeError(FashionNetError):
    """A file that is not a readable image."""


class ImageTooLargeError(ImageDecodeError):
    """An image over the pixel limit, or a decompression bomb: refused before decoding."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a file into model input; stored in the bundle and reused as is."""

    size: int = 96
    resize: str = "stretch"
    background: tuple[int, int, int] = WHITE
    scale: float = 1.0 / 255.0

    def to_dict(self) -> dict:
        return {"size": self.size, "resize": self.resize, "background": list(self.background),
                "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(size=int(data["size"]), resize=str(data.get("resize", "stretch")),
                   background=tuple(data.get("background", WHITE)),
                   scale=float(data.get("scale", 1.0 / 255.0)))


def decode_image(source: str | Path | bytes, size: int = 96,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """One file (path or bytes) -> uint8 array (size, size, 3). Raises ImageDecodeError."""
    name = "upload" if isinstance(source, bytes) else str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels}")
                if im.format == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale when the photo is much larger than needed.
                    im.draft(None, (2 * size, 2 * size))
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im, background)
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb ({exc})") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
        reason = "not an image" if "cannot identify" in str(exc) else str(exc)
        raise ImageDecodeError(f"{name}: {reason}") from None


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") else max(float(values.max()), 1.0)
        im = Image.fromarray(np.clip(values / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


@dataclasses.dataclass
class DecodedImages:
    """Decoded images, the indices of the inputs they came from, and what was skipped."""

    images: np.ndarray
    kept: np.ndarray
    failures: list[str]


def decode_many(paths: Sequence[str | Path], size: int = 96, *, strict: bool = False,
                workers: int | None = None, progress: bool = True, cache: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImages:
    """Decode files in parallel, skipping unreadable ones with one warning line each.

    With ``cache``, the result is stored as plain .npy arrays keyed by every file's identity
    (path, size, mtime) and the decoding settings; an unchanged dataset then loads in a blink.
    ``strict`` turns the first unreadable file into an error.
    """
    paths = [Path(p) for p in paths]
    key = _cache_key(paths, size, max_pixels) if cache else None
    if key is not None:
        hit = _cache_read(key)
        if hit is not None:
            _report(hit.failures, strict)
            return hit
    workers = workers or min(8, os.cpu_count() or 1)
    results: list[np.ndarray | str] = []

    def one(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, size, max_pixels)
        except ImageDecodeError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        iterator = pool.map(one, paths)
        if progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, total=len(paths), desc="decoding", unit="img",
                            leave=False, disable=None)
        results = list(iterator)
    kept = np.array([i for i, r in enumerate(results) if not isinstance(r, str)], dtype=np.int64)
    failures = [r for r in results if isinstance(r, str)]
    images = (np.stack([results[i] for i in kept]) if len(kept)
              else np.zeros((0, size, size, 3), np.uint8))
    decoded = DecodedImages(images, kept, failures)
    _report(failures, strict)
    if key is not None:
        _cache_write(key, decoded)
    return decoded


def _report(failures: list[str], strict: bool) -> None:
    if failures and strict:
        raise ImageDecodeError(failures[0])
    for failure in failures:
        log.warning("skipped %s", failure)
    if failures:
        log.warning("skipped %d unreadable file(s)", len(failures))


def cache_dir() -> Path:
    return Path(os.environ.get("FASHIONNET_CACHE_DIR",
                               Path.home() / ".cache" / "fashionnet")) / "images"


def _cache_key(paths: list[Path], size: int, max_pixels: int) -> str | None:
    digest = hashlib.sha256(json.dumps([DECODER_VERSION, size, max_pixels]).encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            return None  # a missing file: decode for real so the user sees the error
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _cache_read(key: str) -> DecodedImages | None:
    folder = cache_dir() / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", allow_pickle=False)
        kept = np.load(folder / "kept.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return DecodedImages(images, kept, list(meta["failures"]))


def _cache_write(key: str, decoded: DecodedImages) -> None:
    folder = cache_dir() / key
    tmp = folder.with_name(f".{key}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "images.npy", decoded.images, allow_pickle=False)
        np.save(tmp / "kept.npy", decoded.kept, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"failures": decoded.failures}))
        tmp.rename(folder)
    except OSError as exc:  # a read-only home or a race with another process: just don't cache
        log.debug("image cache not written: %s", exc)
        shutil.rmtree(tmp, ignore_errors=True)


def to_model_input(images: np.ndarray, scale: float = 1.0 / 255.0) -> np.ndarray:
    """uint8 images -> float32 in [0, 1], the network's input."""
    return images.astype(np.float32) * np.float32(scale)

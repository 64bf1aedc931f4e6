"""Decode real-world image files into uint8 RGB arrays of the model's input size.

Survives what users really have: JPEG, PNG (RGBA flattened onto white, palette), grayscale,
16-bit, CMYK, EXIF orientation, GIF/BMP/WebP/TIFF/AVIF, and extensions that lie (Pillow sniffs
the content). Only those formats are opened (`ALLOWED_FORMATS`: never EPS/PostScript, which
would run Ghostscript, nor ICO and the other exotic plugins). Only regular files are opened
(a FIFO or a device would block). Huge images are refused from their header, before decoding
(decompression bombs). Any failure of the decoder, whatever Python exception the plugin
raises, becomes an `ImageDecodeError` for that one file. Training and inference both go
through `decode_image`, so preprocessing cannot drift between them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fashionnet.errors import FashionNetError
from fashionnet.files import MAX_JSON_BYTES, read_small_bytes

log = logging.getLogger("fashionnet")

DEFAULT_MAX_PIXELS = 64_000_000
#: The tighter cap of the services that read what strangers send (the server, the doctor, whose
#: cleanvision pass decodes every image whole): 16 M pixels covers 12-16 MP phone photos.
SERVICE_MAX_PIXELS = 16_000_000
#: Bumped whenever decoding changes, so that cached arrays from older code are not reused.
DECODER_VERSION = 2
#: The formats Pillow may open: the ones the project documents (MPO is how Pillow names many
#: camera JPEGs). Everything else (EPS/PS via Ghostscript, ICO, PSD, ...) is refused unread.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "AVIF")


def _openable_formats() -> tuple[str, ...]:
    Image.init()  # load every plugin, so that Image.open knows each allowed name
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)
WHITE = (255, 255, 255)


_OPENABLE = _openable_formats()
#: The allowed formats this Pillow can open (MPO, for one, is not registered in every build):
#: pass this, not ALLOWED_FORMATS, to ``Image.open(formats=...)``, which raises KeyError on a
#: name it does not know.
OPENABLE_FORMATS = _OPENABLE


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
    """One file (path or bytes) -> uint8 array (size, size, 3). Raises ImageDecodeError.

    Every failure of the decoder (Pillow's plugins raise OSError, SyntaxError, ValueError,
    RuntimeError, struct.error, ...) is an `ImageDecodeError` naming the file.
    """
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else _open_regular(source)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except OSError as exc:
        raise ImageDecodeError(f"{name}: cannot open ({exc.strerror or exc})") from None
    try:
        with warnings.catch_warnings(), stream:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream, formats=_OPENABLE) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {width}x{height} pixels is over the limit of {max_pixels}")
                if im.format in ("JPEG", "MPO"):
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
    except MemoryError:
        raise ImageDecodeError(f"{name}: too large to decode in memory") from None
    except Exception as exc:  # any decoder failure is this file's failure, never the run's
        raise ImageDecodeError(f"{name}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the plugin said
    if isinstance(exc, Image.UnidentifiedImageError) or "cannot identify" in text:
        return "not an image"  # or a format outside ALLOWED_FORMATS
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


def _open_regular(path: str | Path) -> io.BufferedReader:
    """Open a regular file for reading; refuse FIFOs, devices, sockets and folders.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer (which
    hung training and ignored Ctrl-C); the type is checked on the opened descriptor, so a
    file swapped after a check cannot slip through.
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)
    handle = open(path, "rb", opener=lambda p, flags: os.open(p, flags | nonblock))  # noqa: SIM115
    try:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise ImageDecodeError(f"{path}: {kind}; only regular files are read")
        if nonblock and hasattr(os, "set_blocking"):
            os.set_blocking(handle.fileno(), True)
        return handle
    except BaseException:
        handle.close()
        raise


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode.startswith("I;16"):
        # Integer arithmetic: 2 bytes a pixel, not the 8 of a float64 copy (a 16-bit PNG of
        # a few hundred KB can hold tens of millions of pixels).
        values = np.asarray(im).astype(np.uint16, copy=False)
        if not values.flags.writeable:
            values = values.copy()
        np.floor_divide(values, 257, out=values)
        im = Image.fromarray(values.astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float32)
        peak = max(float(np.nanmax(values)) if values.size else 1.0, 1.0)
        values = np.nan_to_num(values / np.float32(peak) * np.float32(255.0), nan=0.0)
        im = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
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
        hit = _cache_read(key, len(paths), size)
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


def _cache_read(key: str, count: int, size: int) -> DecodedImages | None:
    """The cached decode for ``key``, verified; None (after one warning) when damaged."""
    folder = cache_dir() / key
    if not folder.is_dir():
        return None
    try:
        meta = json.loads(read_small_bytes(folder / "meta.json", MAX_JSON_BYTES, "cache file"))
        images = np.load(folder / "images.npy", allow_pickle=False)
        kept = np.load(folder / "kept.npy", allow_pickle=False)
        problem = _cache_problem(meta, images, kept, count, size)
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError,
            RecursionError, FashionNetError) as exc:
        problem = f"unreadable ({' '.join(str(exc).split())[:120]})"
    if problem is None:
        return DecodedImages(images, kept, list(meta["failures"]))
    log.warning("image cache entry %s is damaged (%s); rebuilding it", folder, problem)
    _remove(folder)
    return None


def _cache_problem(meta, images: np.ndarray, kept: np.ndarray, count: int,
                   size: int) -> str | None:
    if not isinstance(meta, dict) or meta.get("version") != DECODER_VERSION:
        return "meta.json is not this version's"
    failures = meta.get("failures")
    if not isinstance(failures, list) or not all(isinstance(f, str) for f in failures):
        return "meta.json has no list of failures"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        return f"images.npy holds {images.dtype} {images.shape}, expected uint8 (n, {size}, {size}, 3)"
    if kept.dtype != np.int64 or kept.ndim != 1 or len(kept) != len(images):
        return f"kept.npy holds {kept.dtype} {kept.shape}, expected {len(images)} int64"
    if len(kept) + len(failures) != count or (len(kept) and (kept.min() < 0 or kept.max() >= count)):
        return f"{len(kept)} images and {len(failures)} failures for {count} files"
    if meta.get("checksum") != _checksum(images, kept):
        return "checksum mismatch"
    return None


def _checksum(images: np.ndarray, kept: np.ndarray) -> str:
    crc = zlib.crc32(np.ascontiguousarray(images).data)
    crc = zlib.crc32(np.ascontiguousarray(kept).data, crc)
    return f"crc32:{crc:08x}"


def _remove(folder: Path) -> None:
    """Delete a cache entry: renamed aside first, so a concurrent reader never sees half of it."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.bad")
    try:
        folder.rename(aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def _cache_write(key: str, decoded: DecodedImages) -> None:
    folder = cache_dir() / key
    tmp = folder.with_name(f".{key}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        meta = {"version": DECODER_VERSION, "failures": decoded.failures,
                "count": len(decoded.kept) + len(decoded.failures),
                "shape": list(decoded.images.shape),
                "checksum": _checksum(decoded.images, decoded.kept)}
        for name, write in (("images.npy", lambda f: np.save(f, decoded.images, allow_pickle=False)),
                            ("kept.npy", lambda f: np.save(f, decoded.kept, allow_pickle=False)),
                            ("meta.json", lambda f: f.write(json.dumps(meta).encode()))):
            with open(tmp / name, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        _fsync(tmp)
        if folder.exists():  # a damaged entry another process did not remove yet
            _remove(folder)
        tmp.rename(folder)
        _fsync(folder.parent)
    except OSError as exc:  # a read-only home or a race with another process: just don't cache
        log.debug("image cache not written: %s", exc)
        shutil.rmtree(tmp, ignore_errors=True)


def to_model_input(images: np.ndarray, scale: float = 1.0 / 255.0) -> np.ndarray:
    """uint8 images -> float32 in [0, 1], the network's input."""
    return images.astype(np.float32) * np.float32(scale)

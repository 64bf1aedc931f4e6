"""Image-level checks: files that fail to decode, and cleanvision's image-quality issues.

Decoding goes through the project's own decoder (`decode_many`), so "unreadable" means
exactly what training would skip; only the files it reads are handed to cleanvision, which
opens them again with Pillow to measure brightness, blur, entropy, size and hashes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionnet.data.images import SERVICE_MAX_PIXELS, decode_many
from fashionnet.doctor.issues import Issue
from fashionnet.errors import FashionNetError

#: cleanvision's image-property checks the doctor runs (its duplicate checks come on top).
QUALITY_TYPES = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size",
                 "grayscale")


@dataclasses.dataclass
class Decoded:
    """The readable files' images (at ``size``), their indices, and each unreadable file's error."""

    images: np.ndarray
    kept: np.ndarray
    errors: dict[int, str]


def decode_files(paths: Sequence[Path], size: int, *, progress: bool = True,
                 cache: bool = True) -> Decoded:
    """Decode every file once (cached like training); unreadable ones keep their error.

    Capped at `SERVICE_MAX_PIXELS`, as the server is: cleanvision decodes every readable file
    whole, so a 400 KB PNG of 64 M pixels would cost gigabytes there. A file over the cap is
    an "unreadable" issue that says so.
    """
    decoded = decode_many(paths, size, progress=progress, cache=cache,
                          max_pixels=SERVICE_MAX_PIXELS)
    failed = sorted(set(range(len(paths))) - set(decoded.kept.tolist()))
    return Decoded(decoded.images, decoded.kept, dict(zip(failed, decoded.failures)))


def unreadable_issues(keys: Sequence[str], errors: dict[int, str]) -> list[Issue]:
    return [Issue(keys[i], "unreadable", 1.0, source="decoder",
                  detail=message.split(": ", 1)[-1] if ": " in message else message)
            for i, message in sorted(errors.items())]


@dataclasses.dataclass
class QualityFindings:
    """cleanvision's per-image issues and its duplicate sets (indices into the input paths)."""

    issues: list[Issue]
    exact_sets: list[list[int]]
    near_sets: list[list[int]]


def image_quality(paths: Sequence[Path], indices: Sequence[int], keys: Sequence[str], *,
                  workers: int | None = None, progress: bool = True) -> QualityFindings:
    """Run cleanvision on the files at ``indices`` (each distinct file once).

    Returns issues keyed by ``keys`` and duplicate sets as lists of those indices (a file
    listed twice in a manifest is found by `listed_twice`, not here).
    """
    from cleanvision import Imagelab

    by_file: dict[str, int] = {}
    for i in indices:
        by_file.setdefault(str(paths[i]), i)
    files = list(by_file)
    if not files:
        return QualityFindings([], [], [])
    workers = workers or min(4, os.cpu_count() or 1)
    with _quiet(not progress):
        lab = Imagelab(filepaths=files, verbose=False)
        try:
            lab.find_issues({name: {} for name in (*QUALITY_TYPES, "exact_duplicates",
                                                   "near_duplicates")},
                            n_jobs=workers, verbose=False)
        except Exception as exc:  # a file Pillow opens for us but not for cleanvision
            raise FashionNetError(f"cleanvision failed on this dataset ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]})") from None
    table = lab.issues
    issues: list[Issue] = []
    for name in QUALITY_TYPES:
        flag, score = f"is_{name}_issue", f"{name}_score"
        if flag not in table:
            continue
        for file, row in table[table[flag]].iterrows():
            i = by_file[str(file)]
            if name == "dark" and _bright_on_white(Path(str(file))):
                continue  # cleanvision reads transparent pixels as black
            issues.append(Issue(keys[i], name, 1.0 - float(row[score]), source="cleanvision"))
    sets = {kind: [[by_file[str(f)] for f in members]
                   for members in lab.info.get(kind, {}).get("sets", [])]
            for kind in ("exact_duplicates", "near_duplicates")}
    return QualityFindings(issues, sets["exact_duplicates"], sets["near_duplicates"])


def listed_twice(paths: Sequence[Path], indices: Sequence[int]) -> list[list[int]]:
    """Sets of indices naming the same file (a manifest may list one image under two labels)."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(os.path.realpath(paths[i]), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


@contextlib.contextmanager
def _quiet(silent: bool):
    """Hide cleanvision's progress bars when the caller asked for no progress."""
    if not silent:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        yield


def _bright_on_white(path: Path, threshold: float = 0.35) -> bool:
    """Whether an image with transparency is not dark once flattened onto white, as training
    and the model see it (a cut-out product photo on a transparent backdrop)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info:
                return False
            im.thumbnail((256, 256))
            rgba = im.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            return float(np.asarray(flat.convert("L"), dtype=np.float32).mean()) / 255 > threshold
    except Exception:  # noqa: BLE001 - unreadable: keep cleanvision's finding
        return False

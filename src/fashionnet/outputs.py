"""The one rule for every command that writes: never touch what the user gave us to read.

- An output may not be, contain, or lie inside an input (a dataset folder, a manifest and the
  images it lists, photos to classify), however either is spelled: paths are compared after
  ``..`` and symbolic links are resolved. A model bundle may hold an output (``evaluate``
  writes ``RUN/evaluation``), but an output may not be or contain the bundle.
- ``--overwrite`` replaces only a folder that fashionnet wrote: one that carries the marker
  file `OUTPUT_MARKER` (every folder written through `claim_output` does), or an empty one.
  A folder of the user's is never deleted, whatever the flags.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from fashionnet.errors import FashionNetError

#: The file that proves a folder was written by fashionnet (and so may be replaced).
OUTPUT_MARKER = ".fashionnet-output"

#: Roles of inputs: an output may lie inside a "model" (a report beside the bundle's files),
#: never inside any other input.
HOLDS_OUTPUTS = frozenset({"model"})


def resolved(path: str | Path) -> Path:
    """``path`` made absolute, with ``..`` and every symbolic link along it resolved."""
    # realpath alone: it resolves each link before it applies the ".." after it (abspath
    # first would collapse "link/.." lexically, to the wrong folder).
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_output(output: str | Path, inputs: Iterable[tuple[str, str | Path]],
                 flag: str = "--output") -> Path:
    """Refuse ``output`` if it is, contains, or lies inside one of ``inputs``.

    ``inputs``: (role, path) pairs, role being what the path is to the user ("dataset",
    "manifest", "image", "photo", "model"). Returns the resolved output.
    """
    out = resolved(output)
    out_text = str(out)
    for role, raw in inputs:
        if "://" in str(raw):  # object storage: not a local path, cannot be ours to delete
            continue
        source = resolved(raw)
        text = str(source)
        if out == source:
            raise FashionNetError(f"{flag} {output}: is the {role} {raw}; choose another "
                                  f"{flag} (nothing was written)")
        if text.startswith(out_text.rstrip(os.sep) + os.sep):
            raise FashionNetError(f"{flag} {output}: contains the {role} {raw}; choose another "
                                  f"{flag} (nothing was written)")
        if role not in HOLDS_OUTPUTS and out_text.startswith(text.rstrip(os.sep) + os.sep):
            raise FashionNetError(f"{flag} {output}: lies inside the {role} {raw}; choose "
                                  f"another {flag} outside it (nothing was written)")
    return out


def dataset_inputs(source: str | Path, path_column: str = "path") -> list[tuple[str, Path]]:
    """What a dataset is made of, for `check_output`: the folder, or the manifest and every
    image it lists (read from its path column; rows are not validated here)."""
    source = Path(source)
    if source.is_dir():
        return [("dataset", source)]
    found: list[tuple[str, Path]] = [("manifest", source)]
    if source.is_file():
        from fashionnet.data.sources import MANIFEST_SUFFIXES, image_list

        if source.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                images = image_list(source, path_column, allow_outside=True)
            except FashionNetError:
                images = []  # a broken manifest is refused, with its line, when it is read
            found += [("image", Path(p)) for p in images if "://" not in p]
    return found


def claim_output(folder: str | Path, command: str) -> None:
    """Mark ``folder`` as written by fashionnet, so that ``--overwrite`` may replace it."""
    (Path(folder) / OUTPUT_MARKER).write_text(
        json.dumps({"written_by": "fashionnet", "command": command}) + "\n")


def is_claimed(folder: str | Path) -> bool:
    marker = Path(folder) / OUTPUT_MARKER
    return marker.is_file() and not marker.is_symlink()


def check_replaceable(target: str | Path, flag: str = "--output") -> None:
    """Refuse to replace ``target`` unless fashionnet wrote it (marker) or it is empty."""
    target = Path(target)
    if target.is_symlink():
        raise FashionNetError(f"{flag} {target}: is a symbolic link; --overwrite replaces only "
                              f"folders that fashionnet wrote (nothing was deleted)")
    if not target.exists():
        return
    if not target.is_dir():
        raise FashionNetError(f"{flag} {target}: is a file, not a folder fashionnet wrote; "
                              f"choose another {flag} (nothing was deleted)")
    if is_claimed(target):
        return
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise FashionNetError(f"{flag} {target}: cannot be read ({exc.strerror})") from None
    if not empty:
        raise FashionNetError(
            f"{flag} {target}: holds files that fashionnet did not write (no {OUTPUT_MARKER} "
            f"marker), so --overwrite will not delete it; choose another {flag} or remove it "
            f"yourself")



def check_destination(output: str | Path, inputs: Iterable[tuple[str, str | Path]] = (), *,
                      overwrite: bool = False, flag: str = "--output") -> Path:
    """Everything a command checks about its output folder before it starts work: not an
    input (`check_output`), not there already unless ``overwrite``, and then only fashionnet's
    (`check_replaceable`), and creatable (its nearest existing parent a writable folder)."""
    path = Path(output)
    check_output(path, inputs, flag)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FashionNetError(f"{path}: already exists; choose another {flag} or pass "
                                  f"--overwrite")
        check_replaceable(path, flag)
    parent = resolved(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FashionNetError(f"{flag} {output}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FashionNetError(f"{flag} {output}: cannot be created ({parent} is not writable)")
    return path

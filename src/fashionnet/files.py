"""Reading the project's own small files (bundle JSON, configs) as an attacker might hand them.

A file that a user points us at may be a FIFO (opening it blocks for ever), a link to
``/dev/zero`` (reading never ends), a multi-gigabyte file or JSON nested a hundred thousand deep. Each
of these is refused here with one line naming the file, before anything is read past a cap.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from fashionnet.errors import FashionNetError

#: Caps on what a bundle's or a config's side file may weigh: far above any real one.
MAX_JSON_BYTES = 64 * 2**20
MAX_CONFIG_BYTES = 4 * 2**20


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (links followed); else one line saying what it is."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FashionNetError(f"{path}: {what} missing") from None
    except OSError as exc:
        raise FashionNetError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise FashionNetError(f"{path}: the {what} is not a regular file ({_kind(info.st_mode)})")
    return path


def read_small_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Opened non-blocking, so a FIFO can be refused instead of waiting for a writer; the type and
    size are checked on the open descriptor (no swap between check and read), and at most
    ``limit + 1`` bytes are ever read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FashionNetError(f"{path}: {what} missing") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket or a FIFO without a writer on some systems
            raise FashionNetError(f"{path}: the {what} is not a regular file") from None
        raise FashionNetError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FashionNetError(f"{path}: the {what} is not a regular file "
                                  f"({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise FashionNetError(f"{path}: the {what} is {info.st_size:,} bytes, over the "
                                  f"{limit:,}-byte limit")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # grew while we read it
            raise FashionNetError(f"{path}: the {what} is over the {limit:,}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise FashionNetError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_small_text(path: str | Path, limit: int, what: str = "file") -> str:
    """`read_small_bytes` decoded as UTF-8 (a BOM is dropped); UnicodeDecodeError propagates."""
    return read_small_bytes(path, limit, what).decode("utf-8-sig")


def read_json_file(path: str | Path, what: str = "file", limit: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file, parsed; any problem (type, size, encoding, syntax, depth) is one line."""
    path = Path(path)
    data = read_small_bytes(path, limit, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FashionNetError(f"{path}: the {what} is not UTF-8 ({exc.reason} at byte "
                              f"{exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FashionNetError(f"{path}: the {what} is not valid JSON ({exc.msg}, line "
                              f"{exc.lineno} column {exc.colno})") from None
    except RecursionError:  # json's C scanner stops at the interpreter's recursion limit
        raise FashionNetError(f"{path}: the {what} nests too deeply to be ours") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"

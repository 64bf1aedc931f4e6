"""Read PyTorch's legacy (pre-zip) ``.pth`` weight files with NumPy alone, safely.

A ``.pth`` file is a pickle, and unpickling runs whatever globals it names. This reader
allows only the few names a plain state dict needs (``collections.OrderedDict``, torch's
``_rebuild_tensor_v2`` and the ``torch.*Storage`` types, all three replaced by inert
stand-ins: torch is never imported) and refuses any other global before calling it. Sizes
come from the file's own length, never from a header's promise, so a hostile count cannot
make it allocate more than the file holds.

Layout: pickled magic number, protocol version and system info; the pickled state dict whose
tensors point at storages by persistent id ``('storage', type, key, location, size, view)``;
the pickled list of storage keys; then each storage as an int64 little-endian element count
followed by its raw little-endian data.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashionnet.errors import FashionNetError

#: The legacy format's magic number and protocol version (torch/serialization.py).
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: A weight file larger than this is refused unread (EfficientNet-B7 is 267 MB).
MAX_BYTES = 1 << 30

#: torch storage types -> little-endian NumPy dtypes.
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class WeightFileError(FashionNetError):
    """A weight file that is unsafe, damaged or not what was expected."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a ``torch.*Storage`` class: only its dtype is kept."""

    name: str
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str


@dataclass(frozen=True)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: where the tensor's elements lie."""

    storage: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ValueError("a tensor without a storage")
    shape, strides = tuple(size), tuple(stride)
    if (not _ints(shape) or not _ints(strides) or len(shape) != len(strides)
            or not isinstance(storage_offset, int) or storage_offset < 0
            or any(s < 0 for s in (*shape, *strides))):
        raise ValueError(f"a tensor with shape {size!r}, stride {stride!r}, "
                         f"offset {storage_offset!r}")
    return _TensorRef(storage.key, storage_offset, shape, strides)


def _ints(values: tuple) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


class _Refused(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only: every global is refused."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {type(pid).__name__}")


class _StateDictUnpickler(_NoGlobals):
    """The state dict's pickle: the allow-list, and storages recorded instead of read."""

    def __init__(self, stream):
        super().__init__(stream)
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"an unknown persistent id {str(pid)[:80]!r}")
        kind, key, size = pid[1], pid[2], pid[4]
        if (not isinstance(kind, _StorageType) or not isinstance(key, str)
                or not isinstance(size, int) or size < 0):
            raise ValueError(f"a malformed storage id {str(pid)[:80]!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise ValueError("storage views are not supported")
        known = self.storages.setdefault(key, (kind.dtype, size))
        if known != (kind.dtype, size):
            raise ValueError(f"storage {key} declared twice with different types or sizes")
        return _StorageRef(key)


def read_legacy_state_dict(path: str | Path, sha256: str | None = None,
                           max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """A legacy ``.pth`` state dict -> {name: array}; raises `WeightFileError`.

    With ``sha256`` the file's bytes must have that digest (checked before unpickling).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise WeightFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise WeightFileError(f"{path}: larger than {max_bytes} bytes; refused unread")
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise WeightFileError(f"{path}: SHA-256 {digest} is not the expected {sha256}; "
                                  "the file is damaged or not the one expected")
    try:
        return _parse(data)
    except _Refused as exc:
        raise WeightFileError(f"{path}: refused: the pickle names {exc.name}, which a weight "
                              "file has no need for (not run)") from None
    except WeightFileError as exc:
        raise WeightFileError(f"{path}: {exc}") from None
    except Exception as exc:  # any damage is this file's problem, reported on one line
        reason = ("the file ends too early" if isinstance(exc, EOFError)
                  else " ".join(str(exc).split())[:200] or type(exc).__name__)
        raise WeightFileError(f"{path}: not a readable legacy PyTorch weight file ({reason})") \
            from None


def _parse(data: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(data)
    magic = _NoGlobals(stream).load()
    if magic != MAGIC_NUMBER:
        raise WeightFileError("not a legacy PyTorch file (wrong magic number; a zip-format "
                              "file from torch >= 1.6 is not supported)")
    if _NoGlobals(stream).load() != PROTOCOL_VERSION:
        raise WeightFileError("unsupported legacy protocol version")
    _NoGlobals(stream).load()  # system info: endianness and type sizes
    unpickler = _StateDictUnpickler(stream)
    state = unpickler.load()
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()):
        raise WeightFileError("the pickle is not a state dict of tensors")
    keys = _NoGlobals(stream).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise WeightFileError("the storage list does not match the tensors")
    storages = {}
    for key in keys:
        dtype, size = unpickler.storages[key]
        storages[key] = _read_storage(stream, data, key, np.dtype(dtype), size)
    if stream.tell() != len(data):
        raise WeightFileError(f"{len(data) - stream.tell()} unexpected bytes after the storages")
    return {name: _tensor(ref, storages[ref.storage]) for name, ref in state.items()}


def _read_storage(stream: io.BytesIO, data: bytes, key: str, dtype: np.dtype,
                  size: int) -> np.ndarray:
    start = stream.tell()
    if start + 8 > len(data):
        raise WeightFileError(f"truncated before storage {key}")
    count = int.from_bytes(data[start:start + 8], "little", signed=True)
    if count != size:
        raise WeightFileError(f"storage {key} holds {count} elements, its tensors say {size}")
    end = start + 8 + count * dtype.itemsize
    if end > len(data):
        raise WeightFileError(f"truncated in storage {key} ({count} elements of "
                              f"{dtype.itemsize} bytes need {end - len(data)} more bytes)")
    stream.seek(end)
    return np.frombuffer(data, dtype=dtype, count=count, offset=start + 8)


def _tensor(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    count = math.prod(ref.shape)
    if count:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if last >= storage.size:
            raise WeightFileError(f"a tensor of shape {ref.shape} reaches past the end of "
                                  f"storage {ref.storage}")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset:] if count else storage[:0], shape=ref.shape,
        strides=tuple(s * storage.itemsize for s in ref.stride), writeable=False)
    return np.array(view, dtype=storage.dtype.newbyteorder("="))

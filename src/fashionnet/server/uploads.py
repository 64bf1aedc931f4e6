"""Reading uploads with limits enforced while the bytes arrive, never after.

Starlette's form parser spools every file part to a temporary file and only then lets the
application look at its size: a 300 MB part was written to disk and read into memory before
it was refused. Here the multipart body is parsed as it streams in (python-multipart's
push parser) and refused at the first byte over a limit:

- ``max_file_bytes``: one image (a multipart file part, or a raw body);
- ``max_request_bytes``: the whole request body;
- ``budget``: the bytes all requests in flight hold together (answered 503 when full);
- ``read_timeout``: seconds a client may stay silent mid-upload (answered 408);
- ``upload_timeout``: seconds the whole body may take, however it trickles in (408): one
  byte every few seconds never trips ``read_timeout`` but would hold a slot for ever.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError:  # python-multipart < 0.0.13
    from multipart.multipart import MultipartParser, parse_options_header

MAX_TEXT_FIELD = 64 * 1024


class UploadError(Exception):
    """A request the server refuses: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ByteBudget:
    """Bytes held by uploads in flight, across all requests; refuses growth past ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise UploadError(503, "server busy: too many uploads in flight; retry shortly",
                                  retry_after=2)
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Reader:
    """One request's body, read chunk by chunk under the limits; call `release` when done."""

    def __init__(self, stream: AsyncIterator[bytes], *, max_request_bytes: int,
                 budget: ByteBudget, read_timeout: float, upload_timeout: float = 60.0,
                 started: float | None = None):
        self._chunks = stream.__aiter__()
        self.max_request_bytes = max_request_bytes
        self.budget = budget
        self.read_timeout = read_timeout
        self.upload_timeout = upload_timeout
        self.deadline = (time.monotonic() if started is None else started) + upload_timeout
        self.received = 0
        self._held = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            left = self.deadline - time.monotonic()
            wait = min(self.read_timeout, left)
            try:
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(self._chunks.__anext__(), wait)
            except StopAsyncIteration:
                return
            except (asyncio.TimeoutError, TimeoutError):
                if wait < self.read_timeout:
                    raise UploadError(408, f"upload too slow: the body took longer than "
                                           f"{self.upload_timeout:g} s") from None
                raise UploadError(408, f"upload stalled: nothing received for "
                                       f"{self.read_timeout:g} s") from None
            if not chunk:
                continue
            self.received += len(chunk)
            if self.received > self.max_request_bytes:
                raise UploadError(413, f"request body is over the limit of "
                                       f"{self.max_request_bytes} bytes")
            yield chunk

    def hold(self, n: int) -> None:
        """Count ``n`` more bytes as kept in memory for this request."""
        self.budget.take(n)
        self._held += n

    def release(self) -> None:
        self.budget.give(self._held)
        self._held = 0


async def read_raw(reader: Reader, max_file_bytes: int, name: str = "body") -> bytes:
    body = bytearray()
    async for chunk in reader.chunks():
        if len(body) + len(chunk) > max_file_bytes:
            raise UploadError(413, f"{name}: upload is over the limit of {max_file_bytes} bytes")
        reader.hold(len(chunk))
        body.extend(chunk)
    return bytes(body)


class _Part:
    __slots__ = ("field", "filename", "data", "disposition", "header_name", "header_value")

    def __init__(self) -> None:
        self.field: str | None = None
        self.filename: str | None = None
        self.data = bytearray()
        self.disposition = b""
        self.header_name = b""
        self.header_value = b""


async def read_multipart(reader: Reader, content_type: str, field: str, *,
                         max_file_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    """The file parts named ``field``, as (filename, bytes); other parts are refused or dropped.

    Raises UploadError: 400 malformed body, 413 a part or the body over its limit or more than
    ``max_files`` files, 422 no such field or a text value where a file belongs.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "invalid multipart body (no boundary in the content-type)")
    files: list[tuple[str, bytes]] = []
    seen_fields: list[str] = []
    state = {"part": _Part(), "files": 0, "ended": False}

    def on_part_begin() -> None:
        state["part"] = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part = state["part"]
        part.header_name += data[start:end]
        if len(part.header_name) > 1024:
            raise UploadError(400, "invalid multipart body (header too long)")

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part = state["part"]
        part.header_value += data[start:end]
        if len(part.header_value) > 8192:
            raise UploadError(400, "invalid multipart body (header too long)")

    def on_header_end() -> None:
        part = state["part"]
        if part.header_name.strip().lower() == b"content-disposition":
            part.disposition = part.header_value
        part.header_name = part.header_value = b""

    def on_headers_finished() -> None:
        part = state["part"]
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise UploadError(400, "invalid multipart body (a part has no name)")
        part.field = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace") or part.field
            state["files"] += 1
            if state["files"] > max_files:
                raise UploadError(413, f"more than {max_files} images is over the batch limit "
                                       f"of {max_files}")
        seen_fields.append(part.field)
        if part.field == field and part.filename is None:
            raise UploadError(422, f"field {field!r} must be a file, not text")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = state["part"]
        n = end - start
        if part.field != field:
            if part.filename is None and len(part.data) + n > MAX_TEXT_FIELD:
                raise UploadError(413, f"text field {part.field!r} is over {MAX_TEXT_FIELD} bytes")
            if part.filename is not None:
                return  # a file under another name: not kept, only counted in the body limit
        elif len(part.data) + n > max_file_bytes:
            raise UploadError(413, f"{part.filename}: upload is over the limit of "
                                   f"{max_file_bytes} bytes")
        reader.hold(n)
        part.data.extend(data[start:end])

    def on_part_end() -> None:
        part = state["part"]
        if part.field == field and part.filename is not None:
            files.append((part.filename, bytes(part.data)))
        part.data = bytearray()

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_end": on_end})
    try:
        async for chunk in reader.chunks():
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's own parse errors
        text = " ".join(str(exc).split())[:200]
        raise UploadError(400, f"invalid multipart body ({text})") from None
    if not state["ended"]:
        raise UploadError(400, "invalid multipart body (it ends before its closing boundary)")
    if not files:
        got = ", ".join(dict.fromkeys(seen_fields)) or "none"
        raise UploadError(422, f"expected multipart field {field!r} (got: {got})")
    return files

"""`fashionnet serve`: an HTTP API over a `Predictor`, plus a one-page web UI.

    POST /v1/predict        one image: multipart field `file`, or the raw bytes as the body
    POST /v1/predict/batch  several images: multipart fields `files` (one model call)
    GET  /v1/model          heads, classes, input size, metrics, bundle version, limits
    GET  /healthz           ok once a real prediction succeeded at start-up
    GET  /                  the web page
    GET  /docs, /redoc      the API documentation, offline: Swagger UI and ReDoc are served from
                            the installed `fastapi-offline` package, never from a CDN

Every bad input gets a 4xx JSON ``{"error": ...}``; unexpected failures a 500 without a trace.

Limits (see `ServerLimits`; README "Server limits"): uploads are refused while they stream in
(per image, per request, and for all requests in flight together), a silent client is cut off
after ``read_timeout``, images over ``max_pixels`` are refused from their header before any
decoding, and decoding plus inference run in a worker pool off the event loop, with a bounded
queue (503 + Retry-After when full) and a per-request time limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from fashionnet.data.images import SERVICE_MAX_PIXELS, ImageDecodeError, ImageTooLargeError
from fashionnet.errors import FashionNetError
from fashionnet.inference import Predictor, load
from fashionnet.server.uploads import ByteBudget, Reader, UploadError, read_multipart, read_raw

log = logging.getLogger("fashionnet.server")
access_log = logging.getLogger("fashionnet.access")

#: Where the Swagger UI and ReDoc files of the `fastapi-offline` package are mounted.
DOCS_ASSETS = "/docs-assets"

#: A 96-pixel model needs nothing near 64 M pixels; 16 M covers 12-16 MP phone photos.
SERVER_MAX_PIXELS = SERVICE_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    max_bytes: int = 10_000_000            # one image
    max_request_bytes: int = 64_000_000    # one request body (a batch)
    max_buffered_bytes: int = 256_000_000  # all uploads in flight together
    max_pixels: int = SERVER_MAX_PIXELS    # width x height, from the header, before decoding
    max_batch: int = 32                    # images in one batch request
    workers: int = 0                       # decode + inference threads; 0: one per core
    queue: int = 0                         # requests waiting for a worker; 0: 4 per worker
    request_timeout: float = 30.0          # seconds for decode + inference, queue included
    read_timeout: float = 15.0             # seconds a client may stay silent mid-upload
    upload_timeout: float = 60.0           # seconds the whole request body may take

    def resolved(self) -> ServerLimits:
        workers = self.workers or max(1, os.cpu_count() or 1)
        return dataclasses.replace(self, workers=workers, queue=self.queue or 4 * workers)

    def public(self) -> dict:
        return dataclasses.asdict(self)


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class WorkerPool:
    """Runs decode + inference in threads: at most ``workers`` at once, ``queue`` waiting.

    A request beyond that is answered 503 with Retry-After at once. A job that outlives the
    time limit is answered 503 too and told to stop (``fn`` gets a `threading.Event` as its
    first argument and checks it between images): a queued job is dropped, a running one gives
    its slot back after the image it is on, instead of decoding the rest of a batch nobody
    waits for. The pool never runs more than it was sized for.
    """

    def __init__(self, workers: int, queue: int, timeout: float):
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fashionnet")
        self.capacity = workers + queue
        self.timeout = timeout
        self.pending = 0
        self._lock = threading.Lock()

    def _release(self, _future) -> None:
        with self._lock:
            self.pending -= 1

    async def run(self, fn, *args):
        with self._lock:
            if self.pending >= self.capacity:
                raise ApiError(503, "server busy: every worker and queue slot is taken; retry "
                                    "shortly", retry_after=1)
            self.pending += 1
        stop = threading.Event()
        try:
            future = self.executor.submit(fn, stop, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        try:
            # shield: a timeout must not cancel the wrapped future before we flag it ourselves
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                          self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            stop.set()
            future.cancel()  # still queued: never starts, and its slot is released now
            raise ApiError(503, f"the request took longer than the limit of "
                                f"{self.timeout:g} s; retry later", retry_after=5) from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def create_app(model: str | Path | Predictor, *, max_bytes: int = 10_000_000,
               max_pixels: int = SERVER_MAX_PIXELS, max_batch: int = 32,
               backend: str = "auto", access_log_enabled: bool = True,
               limits: ServerLimits | None = None, **limit_options) -> FastAPI:
    """The app. Limits come from ``limits`` or keyword options (see `ServerLimits`).

    Loading checks the bundle against its model and runs one real prediction; a model that
    cannot answer refuses to start (FashionNetError) instead of answering 500 forever.
    """
    limits = (limits or ServerLimits(max_bytes=max_bytes, max_pixels=max_pixels,
                                     max_batch=max_batch, **limit_options)).resolved()
    predictor = model if isinstance(model, Predictor) else load(model, backend=backend)
    predictor.max_pixels = limits.max_pixels
    predictor.self_test()
    bundle = predictor.bundle
    # Keras models are not safe to call from several threads; ONNX Runtime sessions are.
    model_lock = threading.Lock() if predictor.backend == "keras" else None
    pool = WorkerPool(limits.workers, limits.queue, limits.request_timeout)
    budget = ByteBudget(limits.max_buffered_bytes)
    app = FastAPI(title="FashionNet", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Multi-output image classification: one label set per head.")
    app.state.predictor = predictor
    app.state.limits = limits
    app.state.pool = pool
    app.state.budget = budget
    app.state.ready = True  # the start-up prediction above succeeded
    app.router.on_shutdown.append(pool.close)

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return _error(exc.status, exc.message, exc.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request", "detail": exc.errors()},
                            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse({"error": "internal error"}, status_code=500)

    async def uploads(request: Request, field: str, many: bool) -> list[tuple[str, bytes]]:
        """The uploaded images; the caller must `reader.release()` (done by `guarded`)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of "
                                f"{limits.max_request_bytes} bytes")
        reader = request.state.reader = Reader(
            request.stream(), max_request_bytes=limits.max_request_bytes, budget=budget,
            read_timeout=limits.read_timeout, upload_timeout=limits.upload_timeout)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            return await read_multipart(reader, content_type, field,
                                        max_file_bytes=limits.max_bytes,
                                        max_files=limits.max_batch if many else 1)
        if many:
            raise ApiError(415, "send several images as multipart/form-data fields 'files'")
        return [("body", await read_raw(reader, limits.max_bytes))]

    def decode(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise ApiError(400, f"{name}: empty upload")
        try:
            return predictor.decode(data)
        except ImageDecodeError as exc:
            reason = str(exc).split(": ", 1)[-1]
            status = 413 if isinstance(exc, ImageTooLargeError) else 400
            raise ApiError(status, f"{name}: {reason}") from None

    def predict_arrays(images: list[np.ndarray], names: list[str]) -> list[dict]:
        if model_lock is None:
            predictions = predictor.predict_arrays(np.stack(images), names)
        else:
            with model_lock:
                predictions = predictor.predict_arrays(np.stack(images), names)
        return [p.to_dict() for p in predictions]

    def job(stop: threading.Event, files: list[tuple[str, bytes]]
            ) -> list[dict | tuple[str, ApiError]]:
        """Worker thread: decode every image (failures per image), then one model call;
        stops between images once ``stop`` is set (the request timed out)."""
        results: list[dict | tuple[str, ApiError] | None] = [None] * len(files)
        images, names, where = [], [], []
        for i, (name, data) in enumerate(files):
            if stop.is_set():
                return []
            try:
                images.append(decode(name, data))
                names.append(name)
                where.append(i)
            except ApiError as exc:
                results[i] = (name, exc)
        if images and not stop.is_set():
            for i, result in zip(where, predict_arrays(images, names)):
                results[i] = result
        return results  # type: ignore[return-value]

    async def guarded(request: Request, field: str, many: bool):
        try:
            files = await uploads(request, field, many)
            return await pool.run(job, files)
        except UploadError as exc:
            raise ApiError(exc.status, exc.message, exc.retry_after) from None
        except ClientDisconnect:
            reader = getattr(request.state, "reader", None)
            log.warning("client disconnected during the upload to %s after %d bytes",
                        request.url.path, reader.received if reader else 0)
            raise _Disconnected from None
        finally:
            reader = getattr(request.state, "reader", None)
            if reader is not None:
                reader.release()

    @app.exception_handler(_Disconnected)
    async def _gone(_, exc):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.post("/v1/predict", summary="Classify one image (multipart `file` or raw body)",
              openapi_extra=_upload_schema("file", many=False))
    async def predict(request: Request) -> dict:
        result = (await guarded(request, "file", many=False))[0]
        if isinstance(result, tuple):
            raise result[1]
        if "error" in result:  # the model answered NaN for this image
            raise ApiError(500, result["error"])
        return result

    @app.post("/v1/predict/batch", summary="Classify several images (multipart `files`)",
              openapi_extra=_upload_schema("files", many=True))
    async def predict_batch(request: Request) -> dict:
        results = await guarded(request, "files", many=True)
        return {"results": [{"source": r[0], "error": r[1].message} if isinstance(r, tuple)
                            else r for r in results]}

    @app.get("/v1/model", summary="What the model predicts")
    def model_info() -> dict:
        return {"version": bundle.version, "backend": predictor.backend,
                "input_size": bundle.preprocessing.size,
                "heads": [{"name": h.name, "kind": h.kind, "classes": h.classes,
                           "threshold": h.threshold if h.multi else None}
                          for h in bundle.heads],
                "trained_combinations": bundle.trained_combinations,
                "metrics": {k: bundle.metrics.get(k) for k in ("test", "split")
                            if k in bundle.metrics},
                "limits": limits.public()}

    @app.get("/healthz", summary="Ready: a real prediction succeeded at start-up")
    def healthz():
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    page = resources.files("fashionnet.server").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    _add_offline_docs(app)
    if access_log_enabled:
        app.add_middleware(AccessLog)
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from files in an installed package, so that they work
    without internet access: FastAPI's own pages load their scripts, styles and favicon from
    CDNs, and Swagger UI would ask validator.swagger.io to check the schema."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]),
              name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


class _Disconnected(Exception):
    """The client went away mid-request: logged in one line, nothing to answer."""


def _error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class AccessLog:
    """ASGI middleware: one line per HTTP request, ``METHOD PATH STATUS MS in=BYTES out=BYTES``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": 0, "in": 0, "out": 0}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            access_log.info("%s %s %d %.1f ms in=%d out=%d", scope.get("method", "?"),
                            scope.get("path", "?"), seen["status"] or 500,
                            1000 * (time.perf_counter() - started), seen["in"], seen["out"])


def _upload_schema(field: str, many: bool) -> dict:
    """The request body the handlers read themselves (streamed, with limits), described for
    OpenAPI, so that /docs shows a file picker and "Try it out" sends the image."""
    binary = {"type": "string", "format": "binary"}
    multipart = {"type": "object", "required": [field], "properties": {
        field: {"type": "array", "items": binary} if many else binary}}
    content = {"multipart/form-data": {"schema": multipart}}
    if not many:
        for kind in ("image/jpeg", "image/png", "application/octet-stream"):
            content[kind] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
          access_log_enabled: bool = True, **options) -> None:
    try:
        import uvicorn
    except ImportError:
        raise FashionNetError("serving needs the serve extra: pip install "
                              "'fashionnet[serve]'") from None
    app = create_app(model, access_log_enabled=access_log_enabled, **options)
    if not logging.getLogger("fashionnet").handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fashionnet").setLevel(logging.INFO)
    limits = app.state.limits
    print(f"serving {model} ({app.state.predictor.backend}) on http://{host}:{port}/ "
          f"({limits.workers} workers, queue {limits.queue}, max {limits.max_pixels} pixels)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=5)

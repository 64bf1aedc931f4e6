"""`fashionnet serve`: an HTTP API over a `Predictor`, plus a one-page web UI.

    POST /v1/predict        one image: multipart field `file`, or the raw bytes as the body
    POST /v1/predict/batch  several images: multipart fields `files` (one model call)
    GET  /v1/model          heads, classes, input size, metrics, bundle version, limits
    GET  /healthz           ok once a real prediction succeeded at start-up
    GET  /v1/stats          the dynamic batcher's counters (model calls, mean batch, queue)
    GET  /                  the web page
    GET  /docs, /redoc      the API documentation, offline: Swagger UI and ReDoc are served from
                            the installed `fastapi-offline` package, never from a CDN

Every bad input gets a 4xx JSON ``{"error": ...}``; unexpected failures a 500 without a trace.

Limits (see `ServerLimits`; README "Server limits"): uploads are refused while they stream in
(per image, per request, and for all requests in flight together), a silent client is cut off
after ``read_timeout``, images over ``max_pixels`` are refused from their header before any
decoding, and decoding runs in a worker pool off the event loop, with a bounded queue (503 +
Retry-After when full) and a per-request time limit.

Inference is batched dynamically (`fashionnet.server.batching`): one model thread runs the
images of every request that is ready as one call of at most ``model_batch`` images; it waits
up to ``max_batch_delay_ms`` for more only while other requests are still being decoded, so a
lone request never waits. Its queue is bounded too (``batch_queue`` images; 503 when full).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
from fashionnet.runtime.runners import cores as cpu_cores
from fashionnet.server.batching import Batcher, BatcherClosed, BatcherFull
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
    workers: int = 0                       # decode threads; 0: one per core
    queue: int = 0                         # requests waiting for a worker; 0: 32 per worker
    request_timeout: float = 30.0          # seconds for decode + inference, queue included
    read_timeout: float = 15.0             # seconds a client may stay silent mid-upload
    upload_timeout: float = 60.0           # seconds the whole request body may take
    header_timeout: float = 10.0           # seconds the request line and headers may take
    model_batch: int = 8                   # images per model call (dynamic batching; see
                                           # inference.BATCH_SIZE for why so few)
    max_batch_delay_ms: float = 2.0        # wait for images being decoded; 0: never wait
    batch_queue: int = 0                   # images queued for the model; 0: 4 model batches,
                                           # and at least the request queue
    model_workers: int = 0                 # model threads, each running its own batch; 0:
                                           # one per core (measured: load_test_model_workers)
    model_threads: int = 0                 # ONNX Runtime threads per call; 0: cores / workers
    lone_threads: int = 0                  # threads for a request with the server to itself,
                                           # spinning within a call; 0: every core; 1: off

    def resolved(self) -> ServerLimits:
        cores = cpu_cores()
        workers = self.workers or cores
        model_workers = self.model_workers or cores
        return dataclasses.replace(
            self, workers=workers, queue=self.queue or 32 * workers,
            # small model batches must not make the model's queue shorter than the requests
            # the decode pool admits: 32 clients would get 503s at --model-batch 4
            batch_queue=self.batch_queue or max(4 * self.model_batch, 32 * workers),
            model_workers=model_workers,
            model_threads=self.model_threads or max(1, cores // model_workers),
            lone_threads=self.lone_threads or cores)

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

    async def run(self, fn, *args, timeout: float | None = None):
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
                                          self.timeout if timeout is None else timeout)
        except (asyncio.TimeoutError, TimeoutError):
            stop.set()
            future.cancel()  # still queued: never starts, and its slot is released now
            raise _too_slow(self.timeout) from None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _too_slow(limit: float) -> ApiError:
    return ApiError(503, f"the request took longer than the limit of {limit:g} s; retry later",
                    retry_after=5)


def create_app(model: str | Path | Predictor, *, max_bytes: int = 10_000_000,
               max_pixels: int = SERVER_MAX_PIXELS, max_batch: int = 32,
               backend: str = "auto", access_log_enabled: bool = True,
               limits: ServerLimits | None = None, precision: str = "auto",
               abstain: bool = True, **limit_options) -> FastAPI:
    """The app. Limits come from ``limits`` or keyword options (see `ServerLimits`);
    ``abstain``: heads with an out-of-set rule may answer unknown (``"label": null``).

    Loading checks the bundle against its model and runs one real prediction; a model that
    cannot answer refuses to start (FashionNetError) instead of answering 500 forever.
    """
    limits = (limits or ServerLimits(max_bytes=max_bytes, max_pixels=max_pixels,
                                     max_batch=max_batch, **limit_options)).resolved()
    if isinstance(model, Predictor):
        predictor = model
    else:
        # model_workers calls at a time (the batcher's threads), sharing the cores; ONNX
        # Runtime's threads sleep between calls instead of spinning (the default), so the
        # decode threads and the event loop get the CPU.
        predictor = load(model, backend=backend, precision=precision,
                         threads=limits.model_threads, abstain=abstain)
    predictor.max_pixels = limits.max_pixels
    predictor.batch_size = max(predictor.batch_size, limits.model_batch)
    predictor.self_test()
    bundle = predictor.bundle
    pool = WorkerPool(limits.workers, limits.queue, limits.request_timeout)

    # Keras models are not safe to call from several threads; ONNX Runtime sessions are.
    model_lock = threading.Lock() if predictor.backend == "keras" else None

    def infer(images: np.ndarray) -> list:
        if model_lock is None:
            return predictor.predict_arrays(images)
        with model_lock:
            return predictor.predict_arrays(images)

    # Several model workers of one thread each run a busy server's calls side by side; a
    # request with the server to itself (the lone client) runs on a second session that has
    # every core and whose threads spin within a call, since nothing else wants the cores
    # then: not slowed to one thread, nor by waking threads at every layer (ONNX only).
    alone = (predictor.with_threads(limits.lone_threads, spin=True)
             if model_lock is None and limits.lone_threads > 1 else predictor)
    batcher = Batcher(infer, max_batch=limits.model_batch, workers=limits.model_workers,
                      max_delay=limits.max_batch_delay_ms / 1000, capacity=limits.batch_queue,
                      infer_alone=None if alone is predictor else alone.predict_arrays)
    budget = ByteBudget(limits.max_buffered_bytes)
    app = FastAPI(title="FashionNet", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Multi-output image classification: one label set per head.")
    app.state.predictor = predictor
    app.state.limits = limits
    app.state.pool = pool
    app.state.batcher = batcher
    app.state.budget = budget
    app.state.ready = True  # the start-up prediction above succeeded
    app.router.on_shutdown.append(batcher.close)
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

    def job(stop: threading.Event, files: list[tuple[str, bytes]], slot
            ) -> tuple[Future | None, list[int], dict[int, ApiError]]:
        """Worker thread: decode every image (failures per image) into one array and hand it
        to the batcher straight from here (no trip through the event loop in between), which
        runs it in this thread when the model is idle, else queues it; stops between images
        once ``stop`` is set (the request timed out)."""
        images, where, failed = [], [], {}
        for i, (name, data) in enumerate(files):
            if stop.is_set():
                return None, [], {}
            try:
                images.append(decode(name, data))
                where.append(i)
            except ApiError as exc:
                failed[i] = exc
        if not images or stop.is_set():
            return None, where, failed
        return slot.run(np.stack(images)), where, failed

    async def classify(files: list[tuple[str, bytes]]) -> list[dict | tuple[str, ApiError]]:
        """Decode in the pool, then the model through the batcher; one result per file."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout
        try:
            slot = batcher.reserve(len(files))
        except BatcherFull:
            raise ApiError(503, "server busy: the model's queue is full; retry shortly",
                           retry_after=1) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down; retry shortly",
                           retry_after=1) from None
        try:
            future, where, failed = await pool.run(job, files, slot,
                                                   timeout=deadline - loop.time())
            results: list = [None] * len(files)
            for i, exc in failed.items():
                results[i] = (files[i][0], exc)
            if future is None:
                return results
            if future.done():  # run in the decoding thread: the model was idle
                predictions = future.result()
            else:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                predictions = await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(future)), left)
        except (asyncio.TimeoutError, TimeoutError):
            raise _too_slow(limits.request_timeout) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down; retry shortly",
                           retry_after=1) from None
        finally:
            slot.cancel()  # a no-op once answered; else its place in the queue is freed now
        for i, prediction in zip(where, predictions):
            prediction.source = files[i][0]
            results[i] = prediction.to_dict()
        return results

    async def guarded(request: Request, field: str, many: bool):
        try:
            files = await uploads(request, field, many)
            return await classify(files)
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
    async def predict(request: Request) -> JSONResponse:
        result = (await guarded(request, "file", many=False))[0]
        if isinstance(result, tuple):
            raise result[1]
        if "error" in result:  # the model answered NaN for this image
            raise ApiError(500, result["error"])
        # plain JSON of plain dicts: FastAPI's jsonable_encoder pass and response-model
        # validation of a `-> dict` return cost more CPU than the JSON itself
        return JSONResponse(result)

    @app.post("/v1/predict/batch", summary="Classify several images (multipart `files`)",
              openapi_extra=_upload_schema("files", many=True))
    async def predict_batch(request: Request) -> JSONResponse:
        results = await guarded(request, "files", many=True)
        return JSONResponse({"results": [{"source": r[0], "error": r[1].message}
                                         if isinstance(r, tuple) else r for r in results]})

    @app.get("/v1/model", summary="What the model predicts")
    def model_info() -> dict:
        return {"version": bundle.version, "backend": predictor.backend,
                "precision": predictor.precision,
                "input_size": bundle.preprocessing.size,
                "heads": [{"name": h.name, "kind": h.kind, "classes": h.classes,
                           "threshold": h.threshold if h.multi else None,
                           # may this head answer unknown (null, or [] when multi-label)?
                           "abstains": h.multi or h.name in predictor.rules,
                           "out_of_set_score": (predictor.rules[h.name].score
                                                if h.name in predictor.rules else None)}
                          for h in bundle.heads],
                "trained_combinations": bundle.trained_combinations,
                "metrics": {k: bundle.metrics.get(k) for k in ("test", "split")
                            if k in bundle.metrics},
                "limits": limits.public()}

    card_text = _model_card(bundle.path)

    @app.get("/v1/model/card", summary="The model card (Markdown): what it was trained on, "
                                       "its figures and limits", response_class=Response)
    def model_card() -> Response:
        return Response(card_text, media_type="text/markdown; charset=utf-8")

    @app.get("/healthz", summary="Ready: a real prediction succeeded at start-up")
    def healthz():
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/stats", summary="The dynamic batcher's counters: model calls, mean batch")
    def stats() -> dict:
        return {"batcher": batcher.stats(), "decode_pending": pool.pending}

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


def _model_card(path: Path) -> str:
    """The bundle's MODEL_CARD.md, or one generated from its files (the shipped model and
    bundles older than the card have none on disk); read once, at start-up."""
    from fashionnet.files import read_small_text
    from fashionnet.model_card import CARD_FILE, render_model_card

    if (path / CARD_FILE).is_file():
        try:
            return read_small_text(path / CARD_FILE, 1 << 20, "model card")
        except (FashionNetError, UnicodeDecodeError):
            pass
    try:
        return render_model_card(path)
    except FashionNetError as exc:
        return f"# Model card\n\nNot available: {exc}\n"


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
          access_log_enabled: bool = True, shutdown_grace: float = 3.0, **options) -> None:
    try:
        import uvicorn
    except ImportError:
        raise FashionNetError("serving needs the serve extra: pip install "
                              "'fashionnet[serve]'") from None
    app = create_app(model, access_log_enabled=access_log_enabled, **options)
    # What start-up made (the model, FastAPI's routes and schemas) lives as long as the
    # server: out of the collector's sight, full collections under load stop rescanning it
    # (measured: 16 clients p99 105.6 -> 94.6 ms, results/current/load_test_gc_freeze.md).
    gc.collect()
    gc.freeze()
    if not logging.getLogger("fashionnet").handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fashionnet").setLevel(logging.INFO)
    limits = app.state.limits
    print(f"serving {model} ({app.state.predictor.backend}, "
          f"{app.state.predictor.precision}) on http://{host}:{port}/ "
          f"({limits.workers} decode workers, queue {limits.queue}; {limits.model_workers} "
          f"model workers of {limits.model_threads} thread(s), a lone request on "
          f"{max(limits.lone_threads, limits.model_threads)}; model batches of up to "
          f"{limits.model_batch}, wait {limits.max_batch_delay_ms:g} ms, queue "
          f"{limits.batch_queue} images; max {limits.max_pixels} pixels)", flush=True)
    # On SIGTERM uvicorn stops accepting, answers the requests in flight and closes idle
    # keep-alive connections; whatever is still running after `shutdown_grace` seconds is cut.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=5, timeout_graceful_shutdown=shutdown_grace,
                http=header_deadline_protocol(limits.header_timeout))


def header_deadline_protocol(seconds: float):
    """uvicorn's HTTP protocol (httptools when installed, else h11) with a deadline on the
    request line and headers: a client that sends them a byte at a time would otherwise hold
    its connection for ever (uvicorn times out idle keep-alive connections, not slow headers;
    the body has `ServerLimits.upload_timeout`). The connection is closed once ``seconds``
    pass between a request's first byte and its last header."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class HeaderDeadline(Base):  # type: ignore[valid-type, misc]
        _header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._waiting_for_headers():
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)
            super().data_received(data)
            if self._header_timer is not None and not self._waiting_for_headers():
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                log.warning("closed a connection whose request headers took over %g s",
                            seconds)
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderDeadline

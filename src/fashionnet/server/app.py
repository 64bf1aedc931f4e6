"""`fashionnet serve`: an HTTP API over a `Predictor`, plus a one-page web UI.

    POST /v1/predict        one image: multipart field `file`, or the raw bytes as the body
    POST /v1/predict/batch  several images: multipart fields `files` (one model call)
    GET  /v1/model          heads, classes, input size, metrics, bundle version
    GET  /healthz           liveness
    GET  /                  the web page

Every bad input gets a 4xx JSON ``{"error": ...}``; unexpected failures a 500 without a trace.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashionnet.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError
from fashionnet.errors import FashionNetError
from fashionnet.inference import Predictor, load

log = logging.getLogger("fashionnet.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(model: str | Path | Predictor, *, max_bytes: int = 10_000_000,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = 32,
               backend: str = "auto") -> FastAPI:
    predictor = model if isinstance(model, Predictor) else load(model, backend=backend)
    predictor.max_pixels = max_pixels
    bundle = predictor.bundle
    lock = threading.Lock()  # Keras models are not safe to call from several threads
    app = FastAPI(title="FashionNet", version="0.1.0",
                  description="Multi-output image classification: one label set per head.")
    app.state.predictor = predictor

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

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

    async def read_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 1_000_000:
            raise ApiError(413, f"upload of {declared} bytes is over the limit of {max_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes + 1_000_000:
                raise ApiError(413, f"upload is over the limit of {max_bytes} bytes")
        return bytes(body)

    async def uploads(request: Request, field: str, many: bool) -> list[tuple[str, bytes]]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=max_batch + 1, max_part_size=max_bytes + 1)
            except Exception as exc:  # malformed multipart, too many parts
                raise ApiError(400, f"invalid multipart body ({exc})") from None
            items = form.getlist(field)
            if not items:
                raise ApiError(422, f"expected multipart field {field!r} "
                                    f"(got: {', '.join(form.keys()) or 'none'})")
            files = []
            for item in items:
                if isinstance(item, str):
                    raise ApiError(422, f"field {field!r} must be a file, not text")
                data = await item.read()
                files.append((item.filename or field, data))
            return files
        if many:
            raise ApiError(415, "send several images as multipart/form-data fields 'files'")
        return [("body", await read_limited(request))]

    def decode(name: str, data: bytes) -> np.ndarray:
        if not data:
            raise ApiError(400, f"{name}: empty upload")
        if len(data) > max_bytes:
            raise ApiError(413, f"{name}: {len(data)} bytes is over the limit of {max_bytes}")
        try:
            return predictor.decode(data)
        except ImageDecodeError as exc:
            reason = str(exc).split(": ", 1)[-1]
            status = 413 if isinstance(exc, ImageTooLargeError) else 400
            raise ApiError(status, f"{name}: {reason}") from None

    def run(images: list[np.ndarray], names: list[str]) -> list[dict]:
        with lock:
            predictions = predictor.predict_arrays(np.stack(images), names)
        return [p.to_dict() for p in predictions]

    @app.post("/v1/predict", summary="Classify one image (multipart `file` or raw body)")
    async def predict(request: Request) -> dict:
        name, data = (await uploads(request, "file", many=False))[0]
        return run([decode(name, data)], [name])[0]

    @app.post("/v1/predict/batch", summary="Classify several images (multipart `files`)")
    async def predict_batch(request: Request) -> dict:
        files = await uploads(request, "files", many=True)
        if len(files) > max_batch:
            raise ApiError(413, f"{len(files)} images is over the batch limit of {max_batch}")
        images, names, results = [], [], [None] * len(files)
        for i, (name, data) in enumerate(files):
            try:
                images.append(decode(name, data))
                names.append((i, name))
            except ApiError as exc:
                results[i] = {"source": name, "error": exc.message}
        if images:
            for (i, _), result in zip(names, run(images, [n for _, n in names])):
                results[i] = result
        return {"results": results}

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
                "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels,
                           "max_batch": max_batch}}

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict:
        return {"status": "ok"}

    page = resources.files("fashionnet.server").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    return app


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    try:
        import uvicorn
    except ImportError:
        raise FashionNetError("serving needs the serve extra: pip install "
                              "'fashionnet[serve]'") from None
    app = create_app(model, **options)
    print(f"serving {model} ({app.state.predictor.backend}) on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning")

"""Re-run the adversarial review of issue 11 against this checkout and tally the outcomes.

    python benchmarks/hostile_attacks.py --model RUN_DIR [--dataset DIR] [--out results/current/hostile.json]

Every attempt ends in one of: ``clear`` (a clear 4xx / one-line error, or the correct answer),
``crash`` (a traceback, a 500, an exception escaping), ``hang`` (no answer within its time
limit), ``loss`` (a bundle or data gone), ``silent_wrong`` (an answer that is wrong and says
nothing), ``dos`` (memory or latency blown up for everybody). The server attacks run against
a real `fashionnet serve` on 127.0.0.1 (loopback only); the rest run in-process or in child
processes killed with SIGKILL at chosen instants. Everything is local and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear", "crash", "hang", "loss", "silent_wrong", "dos")
RESULTS: dict[str, list[tuple[str, str, str]]] = defaultdict(list)


def record(kind: str, name: str, outcome: str, detail: str = "") -> None:
    assert outcome in OUTCOMES, outcome
    RESULTS[kind].append((name, outcome, detail))
    print(f"[{kind}] {name}: {outcome} {detail}", flush=True)


def jpeg(color=(200, 20, 20), size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def png16(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("I;16", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def corrupt_avif() -> bytes | None:
    """The adversarial suite's damaged AVIF (one generator for the tests and this script)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_hostile import corrupt_avif_raising_runtime_error

    return corrupt_avif_raising_runtime_error()


# --- the server -------------------------------------------------------------------------------


class Server:
    def __init__(self, model: Path, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fashionnet.cli", "serve", "--model", str(model), "--port",
             str(self.port), *extra], stdout=self.log, stderr=self.log,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.get("/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"server did not start: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def reset_peak(self) -> None:
        """Reset the process's peak RSS (VmHWM), so that each attack measures its own."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def rss(self) -> tuple[int, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        values = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                  if line.startswith(("VmRSS", "VmHWM"))}
        return values["VmRSS"] // 1024, values["VmHWM"] // 1024

    def connect(self, timeout: float = 30) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        with self.connect(timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return _read_response(s)

    def post(self, path: str, body: bytes, content_type: str, timeout: float = 60):
        with self.connect(timeout) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                      .encode() + body)
            return _read_response(s)

    def post_stream(self, path: str, pieces, content_type: str, timeout: float = 60):
        """Chunked upload, generated lazily; stops sending once the server answers."""
        sent = 0
        with self.connect(timeout) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                      .encode())
            s.setblocking(True)
            try:
                for piece in pieces:
                    s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    sent += len(piece)
                    if _readable(s):
                        break
                else:
                    s.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            status, body = _read_response(s)
        return status, body, sent

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _readable(s: socket.socket) -> bool:
    import select

    return bool(select.select([s], [], [], 0)[0])


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    with contextlib.suppress(ConnectionResetError, socket.timeout):
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def multipart_pieces(parts, boundary="B0undary", chunk=1 << 20):
    """The adversarial suite's lazy multipart body (one generator for the tests and this script)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_hostile import multipart_stream

    return multipart_stream(parts, boundary, chunk)


MP = "multipart/form-data; boundary=B0undary"


def multipart_body(parts: list[tuple[str, str, bytes]], boundary="B0undary") -> bytes:
    out = b""
    for field, filename, data in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def healthz_latency(server: Server, during) -> tuple[float, object]:
    """Run ``during`` in a thread; measure the worst /healthz latency while it runs."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", during()))
    worker.start()
    time.sleep(0.1)
    worst = 0.0
    while worker.is_alive():
        started = time.perf_counter()
        server.get("/healthz", timeout=60)
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.05)
    worker.join()
    return worst, result.get("r")


def server_attacks(model: Path, server_args: list[str]) -> None:
    kind = "server"
    server = Server(model, *server_args)
    try:
        base = server.rss()[0]

        def big_upload(name, parts, path):
            server.reset_peak()
            before = server.rss()[0]
            status, body, sent = server.post_stream(path, multipart_pieces(parts), MP)
            grew = server.rss()[1] - before
            ok = status == 413 and sent < 80_000_000 and grew < 100
            record(kind, name, "clear" if ok else "dos",
                   f"status {status}, {sent / 1e6:.0f} MB sent before the answer, "
                   f"peak RSS +{max(grew, 0)} MB")

        big_upload("multipart 300 MB file", [("file", "huge.jpg", 300_000_000)], "/v1/predict")
        big_upload("batch 8 x 60 MB", [("files", f"{i}.jpg", 60_000_000) for i in range(8)],
                   "/v1/predict/batch")
        big_upload("batch 20 x 5 MB (over the request limit)",
                   [("files", f"{i}.jpg", 5_000_000) for i in range(20)], "/v1/predict/batch")
        status, body, sent = server.post_stream(
            "/v1/predict", (b"\xff" * (1 << 20) for _ in range(300)), "image/jpeg")
        record(kind, "raw chunked body 300 MB", "clear" if status == 413 and sent < 30e6 else "dos",
               f"status {status}, {sent / 1e6:.0f} MB sent")

        bomb = png16(7999, 7999)
        started = time.perf_counter()
        status, _ = server.post("/v1/predict", multipart_body([("file", "b.png", bomb)]), MP)
        took = time.perf_counter() - started
        record(kind, f"16-bit PNG 7999x7999 ({len(bomb) // 1000} KB)",
               "clear" if status == 413 and took < 2 else "dos", f"status {status} in {took:.2f} s")

        at_cap = png16(4000, 4000)
        server.reset_peak()
        hwm_before = server.rss()[0]
        worst, answer = healthz_latency(server, lambda: server.post(
            "/v1/predict", multipart_body([("file", "c.png", at_cap)]), MP))
        grew = server.rss()[1] - hwm_before
        ok = answer[0] == 200 and worst < 1.0 and grew < 600
        record(kind, "16-bit PNG 4000x4000 (at the 16 M cap) + /healthz",
               "clear" if ok else "dos",
               f"status {answer[0]}, /healthz worst {worst:.2f} s, peak RSS +{max(grew, 0)} MB")

        # Formats outside the documented list must not reach their decoders (Ghostscript for
        # EPS; ICO decoded before the size check). Any answer but a 4xx counts as "dos": an
        # undocumented decoder ran on untrusted bytes.
        for name, data in (("EPS (Ghostscript)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 "
                                                 b"64 64\nshowpage\n"),
                           ("ICO", _ico()), ("PPM", _fmt("PPM")), ("TGA", _fmt("TGA"))):
            status, body = server.post("/v1/predict", multipart_body([("file", "x.jpg", data)]), MP)
            outcome = "clear" if 400 <= status < 500 else "crash" if status >= 500 else "dos"
            record(kind, f"{name} upload", outcome, f"status {status} {body[:80]!r}")

        avif = corrupt_avif()
        if avif is not None:
            status, body = server.post("/v1/predict/batch", multipart_body(
                [("files", "a.jpg", jpeg()), ("files", "bad.avif", avif),
                 ("files", "c.jpg", jpeg())]), MP)
            results = json.loads(body).get("results", []) if status == 200 else []
            ok = len(results) == 3 and "heads" in results[0] and "error" in results[1] \
                and "heads" in results[2]
            record(kind, "batch with a corrupt AVIF (RuntimeError)", "clear" if ok else "crash",
                   f"status {status}")

        for name, body in (("multipart without closing boundary",
                            b"--B0undary\r\nContent-Disposition: form-data; name=\"file\"; "
                            b"filename=\"a\"\r\n\r\nabc"),
                           ("multipart garbage", b"\x00" * 1000),
                           ("multipart part without name",
                            b"--B0undary\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
                            b"--B0undary--\r\n")):
            status, text = server.post("/v1/predict", body, MP)
            record(kind, name, "clear" if 400 <= status < 500 else "crash", f"status {status}")

        # A client that goes silent mid-upload.
        started = time.perf_counter()
        with server.connect(20) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Connection: close\r\nContent-Length: 100000\r\n\r\n" + b"\xff" * 100)
            try:
                first = s.recv(64)  # the answer's first bytes: the time the server gave up
            except TimeoutError:
                first = b""
            took = time.perf_counter() - started
            status = int(first.split()[1]) if first else 0
        record(kind, "silent client mid-upload", "clear" if status == 408 and took < 10 else "hang",
               f"status {status} after {took:.1f} s")

        # A client that disconnects mid-upload: one log line, no traceback.
        lines_before = server.log_text().count("\n")
        with server.connect(10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 1000000\r\n\r\n" + b"\xff" * 50_000)
            time.sleep(0.3)
        time.sleep(1.0)
        new = server.log_text().splitlines()[lines_before:]
        disconnect_lines = [line for line in new if "disconnected" in line]
        ok = len(disconnect_lines) == 1 and "Traceback" not in "\n".join(new)
        record(kind, "client disconnects mid-upload", "clear" if ok else "crash",
               f"{len(new)} new log line(s)")

        # 50 slow connections: /healthz must not slow down.
        slow = []
        for _ in range(50):
            s = server.connect(30)
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 100000\r\n\r\n\xff")
            slow.append(s)
        started = time.perf_counter()
        status, _ = server.get("/healthz")
        took = time.perf_counter() - started
        for s in slow:
            s.close()
        record(kind, "50 slow connections + /healthz", "clear" if status == 200 and took < 1
               else "dos", f"/healthz {took * 1000:.0f} ms")

        # A flood bigger than workers + queue: 200 / 503 only, never 500, /healthz stays fast.
        def one(_):
            return server.post("/v1/predict", multipart_body([("file", "c.png", png16(2000, 2000))]),
                               MP)[0]

        from concurrent.futures import ThreadPoolExecutor

        def flood():
            with ThreadPoolExecutor(24) as pool:
                return Counter(pool.map(one, range(24)))

        worst, statuses = healthz_latency(server, flood)
        ok = set(statuses) <= {200, 503} and worst < 1.0
        record(kind, "flood of 24 concurrent 4 M-pixel PNGs", "clear" if ok else "dos",
               f"statuses {dict(statuses)}, /healthz worst {worst:.2f} s")
        status, _ = server.post("/v1/predict", jpeg(), "image/jpeg")
        record(kind, "normal request after all of the above", "clear" if status == 200 else "dos",
               f"status {status}, RSS {server.rss()[0]} MB (started at {base} MB)")
    finally:
        server.stop()


def _ico() -> bytes:
    return _fmt("ICO")


def _fmt(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buf, fmt)
    return buf.getvalue()


# --- bundles -----------------------------------------------------------------------------------


def cli(*argv) -> tuple[int | str, str, str]:
    from fashionnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    except BaseException as exc:  # noqa: BLE001 - an escaping exception is the finding
        return f"raised {type(exc).__name__}", out.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def bundle_attacks(model: Path, work: Path) -> None:
    kind = "bundles"
    photo = work / "photo.jpg"
    photo.write_bytes(jpeg())

    def attempt(name, tamper):
        copy = work / "b" / name.replace(" ", "_")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(model, copy)
        (copy / "model.onnx").unlink(missing_ok=True)
        marker = work / "pwned"
        marker.unlink(missing_ok=True)
        tamper(copy, marker)
        code, out, err = cli("classify", "--model", copy, photo, "--backend", "keras")
        if marker.exists() or isinstance(code, str) or "Traceback" in err:
            outcome = "crash"
        elif code == 2 and err.count("\n") == 1 and err.startswith("error: "):
            outcome = "clear"
        else:
            outcome = "silent_wrong"
        record(kind, name, outcome, f"exit {code}: {err.strip()[:150]}")

    def labels(change):
        def tamper(path, _):
            doc = json.loads((path / "labels.json").read_text())
            (path / "labels.json").write_text(json.dumps(change(doc)))
        return tamper

    heads = lambda d, i, **kw: [h if j != i else {**h, **kw} for j, h in enumerate(d["heads"])]  # noqa: E731
    attempt("negative temperature", labels(lambda d: {**d, "temperatures": {"color": -1.0}}))
    attempt("zero temperature", labels(lambda d: {**d, "temperatures": {"color": 0}}))
    attempt("NaN temperature", labels(lambda d: {**d, "temperatures": {"color": float("nan")}}))
    attempt("temperature for an unknown head", labels(lambda d: {**d, "temperatures": {"x": 1}}))
    attempt("one class too many", labels(lambda d: {**d, "heads": heads(
        d, 0, classes=d["heads"][0]["classes"] + ["purple"])}))
    attempt("one class too few", labels(lambda d: {**d, "heads": heads(
        d, 1, classes=d["heads"][1]["classes"][:-1])}))
    attempt("input size mismatch", labels(lambda d: {**d, "input_size": 64, "preprocessing": {
        **d["preprocessing"], "size": 64}}))
    attempt("duplicate heads", labels(lambda d: {**d, "heads": d["heads"] + [d["heads"][0]]}))
    attempt("labels.json is []", labels(lambda d: []))
    attempt("labels.json is null", labels(lambda d: None))
    attempt("heads is a string", labels(lambda d: {**d, "heads": "color"}))
    attempt("head name is a number", labels(lambda d: {**d, "heads": heads(d, 0, name=3)}))
    attempt("classes is a string", labels(lambda d: {**d, "heads": heads(d, 0, classes="red")}))
    attempt("preprocessing missing", labels(lambda d: {k: v for k, v in d.items()
                                                       if k != "preprocessing"}))
    # Out-of-set rules (issue 34): shape, type and size games in labels.json's open_set.
    msp = {"score": "msp", "threshold": 0.1, "quantiles": [i / 100 for i in range(101)]}
    attempt("open_set rule for an unknown head", labels(lambda d: {**d, "open_set": {"x": msp}}))
    attempt("open_set is a list", labels(lambda d: {**d, "open_set": [msp]}))
    attempt("open_set NaN threshold", labels(lambda d: {**d, "open_set": {
        "color": {**msp, "threshold": float("nan")}}}))
    attempt("open_set score that runs code", labels(lambda d: {**d, "open_set": {
        "color": {**msp, "score": "__import__('os').system('touch pwned')"}}}))
    attempt("open_set embedding wider than the model's features", labels(lambda d: {
        **d, "open_set": {"color": {**msp, "score": "embedding",
                                    "means": [[0.1] * 7] * len(d["heads"][0]["classes"]),
                                    "precision": [[float(i == j) for j in range(7)]
                                                  for i in range(7)]}}}))
    attempt("open_set 3000x3000 precision matrix", labels(lambda d: {
        **d, "open_set": {"color": {**msp, "score": "embedding",
                                    "means": [[0.0] * 3000] * len(d["heads"][0]["classes"]),
                                    "precision": [[0] * 3000] * 3000}}}))

    def keras_config(change):
        def tamper(path, marker):
            with zipfile.ZipFile(path / "model.keras") as z:
                members = {n: z.read(n) for n in z.namelist()}
            config = json.loads(members["config.json"])
            members["config.json"] = json.dumps(change(config, marker)).encode()
            with zipfile.ZipFile(path / "model.keras", "w") as z:
                for n, data in members.items():
                    z.writestr(n, data)
        return tamper

    def popen(config, marker):
        layer = config["config"]["layers"][1]
        layer.update(module="subprocess", class_name="Popen", registered_name=None,
                     config={"args": ["touch", str(marker)]})
        return config

    def unsafe_then_lambda(config, marker):
        layer = config["config"]["layers"][1]
        layer.update(module="keras.config", class_name="enable_unsafe_deserialization",
                     registered_name=None, config={})
        return config

    attempt("model.keras resolving subprocess.Popen", keras_config(popen))
    attempt("model.keras calling enable_unsafe_deserialization", keras_config(unsafe_then_lambda))

    def lambda_layer(path, marker):
        import keras

        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        keras.Model(inputs, [keras.layers.Dense(4, name="color_output")(x),
                             keras.layers.Dense(4, name="category_output")(x)]).save(
            path / "model.keras")

    attempt("model.keras with a Lambda layer", lambda_layer)
    attempt("model.keras empty", lambda p, m: (p / "model.keras").write_bytes(b""))
    attempt("model.keras truncated", lambda p, m: (p / "model.keras").write_bytes(
        (p / "model.keras").read_bytes()[:5000]))


# --- datasets and cache -----------------------------------------------------------------------


def dataset_attacks(work: Path) -> None:
    from fashionnet.data.images import decode_many
    from fashionnet.data.sources import read_dataset
    from fashionnet.errors import FashionNetError

    kind = "datasets"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (data / name).write_bytes(jpeg())

    def manifest(name, filename, text, check):
        (data / filename).write_text(text, encoding="utf-8")
        try:
            records, _ = read_dataset(data / filename)
            outcome = "clear" if check(records) else "silent_wrong"
            detail = f"{len(records)} rows"
        except FashionNetError as exc:
            outcome = "clear" if check(exc) else "silent_wrong"
            detail = str(exc)[:120]
        except Exception as exc:  # noqa: BLE001
            outcome, detail = "crash", f"{type(exc).__name__}: {exc}"[:120]
        record(kind, name, outcome, detail)

    def labels_are(*expected):
        return lambda r: not isinstance(r, Exception) and \
            [x.labels["color"] for x in r] == list(expected)

    manifest("CSV quoted newline in a cell", "m1.csv",
             'path,color\na.jpg,"re\nd"\nb.jpg,blue\n', labels_are("re\nd", "blue"))
    for char, label in (("\f", "form feed"), ("\u2028", "U+2028"), ("\x85", "NEL")):
        manifest(f"CSV {label} inside a cell", "m2.csv", f"path,color\na.jpg,re{char}d\nb.jpg,blue\n",
                 labels_are(f"re{char}d", "blue"))
    manifest("CSV error line number after a quoted newline", "m3.csv",
             'path,color\na.jpg,"x\ny"\n,blue\n', lambda e: isinstance(e, Exception)
             and "line 4" in str(e))
    manifest("JSONL bad line number", "m4.jsonl", '{"path": "a.jpg", "color": "red"}\n{oops\n',
             lambda e: isinstance(e, Exception) and "line 2" in str(e))
    manifest("path ../ leaving the folder", "m5.csv", "path,color\n../x.jpg,red\n",
             lambda e: isinstance(e, Exception) and "line 2" in str(e))
    manifest("absolute path", "m6.csv", "path,color\n/etc/passwd,red\n",
             lambda e: isinstance(e, Exception) and "line 2" in str(e))

    os.mkfifo(data / "fifo.jpg")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("d", decode_many(
        [data / "a.jpg", data / "fifo.jpg"], 32, progress=False, cache=False)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        with open(data / "fifo.jpg", "wb"):
            pass
        record(kind, "FIFO in the dataset", "hang")
    else:
        record(kind, "FIFO in the dataset", "clear" if result["d"].kept.tolist() == [0]
               else "silent_wrong", result["d"].failures[0][-60:])

    avif = corrupt_avif()
    if avif is not None:
        (data / "bad.avif").write_bytes(avif)
        try:
            out = decode_many([data / "a.jpg", data / "bad.avif", data / "b.jpg"], 32,
                              progress=False, cache=False)
            record(kind, "corrupt AVIF among good images",
                   "clear" if out.kept.tolist() == [0, 2] else "silent_wrong", out.failures[0][-70:])
        except Exception as exc:  # noqa: BLE001
            record(kind, "corrupt AVIF among good images", "crash", type(exc).__name__)
    (data / "x.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    out = decode_many([data / "x.eps"], 32, progress=False, cache=False)
    record(kind, "EPS file (Ghostscript)", "clear" if not len(out.kept) else "silent_wrong",
           out.failures[0][-50:] if out.failures else "decoded!")

    # The cache: damage an entry, then decode again.
    from fashionnet.data import images as im

    paths = [data / "a.jpg", data / "b.jpg"]
    truth = decode_many(paths, 32, progress=False, cache=False)
    damages = {
        "cache: 0-byte images.npy": lambda e: (e / "images.npy").write_bytes(b""),
        "cache: malformed meta.json": lambda e: (e / "meta.json").write_text("{"),
        "cache: arrays of the wrong shape": lambda e: np.save(e / "images.npy",
                                                              np.zeros((2, 8, 8, 3), np.uint8)),
        "cache: flipped bits (same shape)": lambda e: np.save(e / "images.npy",
                                                              np.zeros((2, 32, 32, 3), np.uint8)),
        "cache: kept.npy missing": lambda e: (e / "kept.npy").unlink(),
    }
    for name, damage in damages.items():
        shutil.rmtree(im.cache_dir(), ignore_errors=True)
        decode_many(paths, 32, progress=False)
        entry = im.cache_dir() / im._cache_key(paths, 32, im.DEFAULT_MAX_PIXELS)
        damage(entry)
        try:
            again = decode_many(paths, 32, progress=False)
            third = decode_many(paths, 32, progress=False)
            same = again.images.tobytes() == truth.images.tobytes() == third.images.tobytes()
            record(kind, name, "clear" if same else "silent_wrong")
        except Exception as exc:  # noqa: BLE001
            record(kind, name, "crash", f"{type(exc).__name__}: {exc}"[:100])

    code, _, err = cli("init-config", "--dataset", _odd_folder(work), "--output",
                       work / "cfg.toml", "--overwrite")
    record(kind, "init-config on a path with a quote and a newline",
           "clear" if code == 0 else "crash", err.strip()[:100])


def _odd_folder(work: Path) -> Path:
    folder = work / 'odd"\nholdout = ["x"]'
    for combo in ("red_dress", "blue_shirt"):
        (folder / combo).mkdir(parents=True, exist_ok=True)
        (folder / combo / "a.jpg").write_bytes(jpeg())
    return folder


# --- crash timing ------------------------------------------------------------------------------

KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from fashionnet.bundle import atomic_directory
real = Path.rename
def rename(self, other):
    result = real(self, other)
    if ".old-" in str(other):
        os.kill(os.getpid(), signal.SIGKILL)   # old set aside, new not yet in
    return result
Path.rename = rename
with atomic_directory(sys.argv[1], overwrite=True) as tmp:
    (tmp / "labels.json").write_text("new")
"""

KILL_IN_EXPORT = """
import os, signal, sys
from fashionnet.bundle import update_bundle_file
def write(path):
    path.write_bytes(b"x" * 1_000_000)
    os.kill(os.getpid(), signal.SIGKILL)
update_bundle_file(sys.argv[1], "model.onnx", write)
"""


def crash_attacks(model: Path, work: Path) -> None:
    from fashionnet.bundle import load_bundle

    kind = "crash timing"
    for i in range(3):
        target = work / f"crash{i}" / "run"
        shutil.rmtree(target.parent, ignore_errors=True)
        shutil.copytree(model, target)
        subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(target)], check=False)
        left = sorted(p.name for p in target.parent.iterdir())
        try:
            bundle = load_bundle(target)
            ok = (bundle.path / "model.keras").is_file()
            record(kind, f"SIGKILL between the renames of --overwrite #{i + 1}",
                   "clear" if ok else "loss", f"left {left}, then recovered on load")
        except Exception as exc:  # noqa: BLE001
            record(kind, f"SIGKILL between the renames of --overwrite #{i + 1}", "loss",
                   f"left {left}: {exc}"[:120])
    target = work / "crash_export" / "run"
    shutil.rmtree(target.parent, ignore_errors=True)
    shutil.copytree(model, target)
    subprocess.run([sys.executable, "-c", KILL_IN_EXPORT, str(target)], check=False)
    leftovers = [p.name for p in target.iterdir() if ".tmp-" in p.name]
    from fashionnet.bundle import update_bundle_file

    update_bundle_file(target, "notes.txt", lambda p: p.write_text("x"))
    after = [p.name for p in target.iterdir() if ".tmp-" in p.name]
    record(kind, "SIGKILL inside export's temp write", "clear" if leftovers and not after
           else "loss", f"left {leftovers}, after the next write {after}")


# --- round two (issue 38): outputs over inputs, links, side files, NaN, Ray, slow uploads ----


def run_cmd(*argv, timeout: float = 120, measure: bool = False) -> tuple[int | str, str, int]:
    """`fashionnet ARGV` in a child process: (exit code or "hang", stderr, peak RSS in MB).

    The peak is the child's VmHWM: getrusage's ru_maxrss would count this (large) parent's
    pages, which a forked child holds until it execs.
    """
    code = ("import sys\nfrom fashionnet.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "print(f'@@rss {int(hwm[0].split()[1]) // 1024 if hwm else 0}', "
            "file=sys.stderr)\nsys.exit(rc)\n") if measure else \
        "import sys\nfrom fashionnet.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    try:
        done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                              text=True, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return "hang", "", 0
    err, rss = done.stderr, 0
    if "@@rss" in err:
        rss = int(err.rsplit("@@rss", 1)[1].split()[0])
        err = err.rsplit("@@rss", 1)[0]
    return done.returncode, err, rss


def _refusal(code, err: str) -> str:
    """A user mistake must end as exit 2 with one `error:` line naming the problem."""
    if code == "hang":
        return "hang"
    if "Traceback" in err or code not in (0, 2):
        return "crash"
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    return "clear" if code == 2 and len(lines) == 1 else "silent_wrong"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def round_two_attacks(model: Path, work: Path, with_ray: bool) -> None:
    kind = "round two"
    root = work / "r2"
    photos = root / "d" / "photos"
    for combo, color in (("red_dress", (220, 20, 20)), ("blue_shirt", (20, 20, 220)),
                         ("blue_dress", (20, 20, 200)), ("red_shirt", (200, 20, 20))):
        for i in range(4):
            (photos / combo).mkdir(parents=True, exist_ok=True)
            (photos / combo / f"{i}.jpg").write_bytes(jpeg(color))
    (root / "d" / "notes.txt").write_text("the user's notes")

    def loss_attempt(name, argv, guarded: Path, timeout=180):
        before = _snapshot(guarded)
        code, err, _ = run_cmd(*argv, timeout=timeout)
        after = _snapshot(guarded) if guarded.exists() else {}
        outcome = "loss" if after != before else _refusal(code, err)
        record(kind, name, outcome, f"exit {code}: {err.strip()[-140:]}")

    # 1. Ray's --storage: the user's folder survives, only the run's sub-folder goes.
    if with_ray:
        storage = root / "shared-mount"
        storage.mkdir()
        (storage / "other-team.txt").write_text("not ours")
        from fashionnet.data.synthetic import write_dataset

        garments = write_dataset(root / "garments", per_combination=6, size=48)
        code, err, _ = run_cmd("train", "--dataset", garments, "--output", root / "ray-run",
                               "--workers", "2", "--epochs", "1", "--input-size", "32",
                               "--batch-size", "16", "--storage", storage, timeout=600)
        kept = (storage / "other-team.txt").is_file()
        record(kind, "train --workers 2 --storage DIR (DIR holds a user's file)",
               "clear" if code == 0 and kept and not (storage / "fashionnet-ray-run").exists()
               else ("loss" if not kept else _refusal(code, err)),
               f"exit {code}; user's file {'kept' if kept else 'DELETED'}: "
               f"{err.strip()[-160:]}")
        code, err, _ = run_cmd("train", "--dataset", photos, "--output", root / "r",
                               "--workers", "2", "--address", "127.0.0.1:1", timeout=90)
        record(kind, "train --workers --address 127.0.0.1:1 (nothing listens)",
               _refusal(code, err), err.strip()[-120:])
        code, err, _ = run_cmd("train", "--dataset", photos, "--output", root / "r",
                               "--workers", "2", "--address", "localhost:port", timeout=90)
        record(kind, "train --address localhost:port (malformed)", _refusal(code, err),
               err.strip()[-120:])
        uri_out = root / "uri-out"
        code, err, _ = run_cmd("classify", "--engine", "ray", photos, "--model", model,
                               "--output", f"file://{uri_out}", timeout=300)
        stray = [p for p in Path.cwd().glob("file:*")]
        record(kind, "classify --engine ray --output file:///abs/path",
               "clear" if code == 0 and (uri_out / "_summary.json").is_file() and not stray
               else "silent_wrong", f"exit {code}, stray {stray}")
        loss_attempt("classify --engine ray DIR --output DIR --overwrite",
                     ["classify", "--engine", "ray", photos, "--output", photos, "--overwrite",
                      "--model", model], root / "d")
    # 2. --overwrite where the output is, holds or lies in the input.
    loss_attempt("train --dataset DIR --output DIR --overwrite",
                 ["train", "--dataset", photos, "--output", photos, "--overwrite"], root / "d")
    loss_attempt("train --dataset d/photos --output d --overwrite",
                 ["train", "--dataset", photos, "--output", root / "d", "--overwrite"], root / "d")
    link = root / "link-to-photos"
    link.symlink_to(photos)
    loss_attempt("train --output LINK-TO-DATASET --overwrite",
                 ["train", "--dataset", photos, "--output", link, "--overwrite"], root / "d")
    loss_attempt("train --output d/photos/red_dress/.. --overwrite",
                 ["train", "--dataset", photos, "--output", photos / "red_dress" / "..",
                  "--overwrite"], root / "d")
    mine = root / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    loss_attempt("train --output USERS-FOLDER --overwrite (no marker)",
                 ["train", "--dataset", photos, "--output", mine, "--overwrite"], mine)
    if _has("cleanlab"):
        loss_attempt("doctor --dataset photos --output photos --overwrite",
                     ["doctor", "--dataset", photos, "--output", photos, "--overwrite",
                      "--quiet"], root / "d")
        loss_attempt("doctor --dataset d/photos --output d --overwrite",
                     ["doctor", "--dataset", photos, "--output", root / "d", "--overwrite",
                      "--quiet"], root / "d")
        blocker = root / "a-file"
        blocker.write_text("x")
        code, err, _ = run_cmd("doctor", "--dataset", photos, "--output", blocker / "report",
                               "--quiet")
        record(kind, "doctor --output under a file", _refusal(code, err), err.strip()[-120:])
        big = root / "big"
        for combo in ("red_dress", "blue_shirt"):
            (big / combo).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (5000, 5000), 255 - i).save(big / combo / f"{i}.png",
                                                           optimize=True)
        code, err, rss = run_cmd("doctor", "--dataset", big, "--output", root / "big-report",
                                 "--quiet", measure=True, timeout=300)
        record(kind, "doctor on four 25 M-pixel PNGs (~100 KB in all)",
               "clear" if code in (0, 2) and rss < 1000 and "Traceback" not in err else "dos",
               f"exit {code}, peak RSS {rss} MB")
    # 3. annotated copies over the originals.
    pics = root / "pics"
    pics.mkdir()
    (pics / "photo.png").write_bytes(_png_photo())
    loss_attempt("classify --annotate DIR DIR/photo.png", ["classify", "--model", model,
                 "--annotate", pics, pics / "photo.png"], pics)
    # 4. symlinked folders in a folder dataset.
    looped = root / "looped"
    shutil.copytree(photos, looped)
    (looped / "blue_dress" / "parent").symlink_to("..")
    from fashionnet.data.sources import read_folders

    records = read_folders(looped, ["color", "category"])
    record(kind, "blue_dress/parent -> .. (relabelling)",
           "clear" if len(records) == 16 else "silent_wrong", f"{len(records)} records for 16")
    exploding = root / "exploding"
    shutil.copytree(photos, exploding)
    for name in ("a", "b"):
        (exploding / "red_dress" / name).symlink_to(".")
    code, err, _ = run_cmd("classify", "--model", model, exploding, "--format", "csv",
                           timeout=120)
    record(kind, "two '-> .' links (exponential walk)", "hang" if code == "hang" else
           ("clear" if code == 0 else _refusal(code, err)), f"exit {code}")
    # 5. a manifest row through a symlink.
    secret = root / "secret"
    secret.mkdir()
    (secret / "passwd.jpg").write_bytes(jpeg())
    (root / "m" / "images").mkdir(parents=True)
    (root / "m" / "images" / "etc_link").symlink_to(secret)
    (root / "m" / "labels.csv").write_text("path,color,category\n"
                                           "images/etc_link/passwd.jpg,red,dress\n")
    code, err, _ = run_cmd("train", "--dataset", root / "m" / "labels.csv", "--output",
                           root / "m-run", "--epochs", "1")
    record(kind, "manifest row images/etc_link/passwd (link to outside)", _refusal(code, err),
           err.strip()[-120:])
    # 6. bundle side files.
    photo = root / "photo.jpg"
    photo.write_bytes(jpeg())

    def side_file(name, tamper, expect="not a regular file"):
        copy = root / "bundles" / name.replace(" ", "_").replace("/", "_")
        shutil.copytree(model, copy)
        tamper(copy)
        code, err, rss = run_cmd("classify", "--model", copy, photo, timeout=30, measure=True)
        outcome = _refusal(code, err)
        if outcome == "clear" and expect not in err:
            outcome = "silent_wrong"  # refused, but for the wrong reason ("missing")
        if rss > 2000:
            outcome = "dos"
        record(kind, name, outcome, f"exit {code}, peak {rss} MB: {err.strip()[-110:]}")

    def replace_with(name, how):
        def tamper(copy):
            (copy / name).unlink(missing_ok=True)
            how(copy / name)
        return tamper

    fifo = os.mkfifo
    dev_zero = lambda p: p.symlink_to("/dev/zero")  # noqa: E731
    side_file("FIFO metrics.json", replace_with("metrics.json", fifo))
    side_file("metrics.json -> /dev/zero", replace_with("metrics.json", dev_zero))
    side_file("FIFO labels.json", replace_with("labels.json", fifo))
    side_file("labels.json -> /dev/zero", replace_with("labels.json", dev_zero))
    side_file("labels.json nested 100,000 deep", replace_with(
        "labels.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)), expect="labels")
    side_file("FIFO model.onnx", replace_with("model.onnx", fifo))
    side_file("model.onnx -> /dev/zero", replace_with("model.onnx", dev_zero))

    def multi(copy):
        doc = json.loads((copy / "labels.json").read_text())
        doc["heads"][0]["kind"] = "multi"
        (copy / "labels.json").write_text(json.dumps(doc))

    side_file("labels.json head kind switched to multi", multi, expect="softmax")
    # 7. NaN and infinity.
    for name, argv in (("--learning-rate nan", ["--learning-rate", "nan"]),
                       ("--recolor inf", ["--recolor", "inf"]),
                       ("--loss-weight color=nan", ["--loss-weight", "color=nan"])):
        code, err, _ = run_cmd("train", "--dataset", photos, "--output", root / "nan-run",
                               *argv)
        record(kind, f"train {name}", _refusal(code, err), err.strip()[-100:])
    for name, text in (("learning_rate = nan", "learning_rate = nan\n"),
                       ("loss_weight = nan", '[[heads]]\nname = "color"\nloss_weight = nan\n'),
                       ("Latin-1 TOML", None), ("TOML nested 5,000 deep", "a = " + "[" * 5000
                                                                        + "]" * 5000 + "\n"),
                       ('separator = ""', 'separator = ""\n')):
        path = root / "c.toml"
        if text is None:
            path.write_bytes("dataset = 'caf\xe9'\n".encode("latin-1"))
        else:
            path.write_text(text)
        code, err, _ = run_cmd("train", "--config", path, "--dataset", photos, "--output",
                               root / "toml-run")
        record(kind, f"config {name}", _refusal(code, err), err.strip()[-100:])
    if _has("fastapi"):
        for flag, value in (("--request-timeout", "nan"), ("--workers", "-1"),
                            ("--port", "70000"), ("--upload-timeout", "inf")):
            code, err, _ = run_cmd("serve", "--model", model, flag, value, timeout=60)
            record(kind, f"serve {flag} {value}", _refusal(code, err), err.strip()[-100:])


def trickle_attack(model: Path) -> None:
    """One byte every 2 s: never silent for --read-timeout, but the body never ends."""
    kind = "round two"
    server = Server(model, "--read-timeout", "3", "--upload-timeout", "8")
    try:
        started = time.perf_counter()
        with server.connect(40) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 100000\r\nConnection: close\r\n\r\n")
            status = 0
            for _ in range(15):
                try:
                    s.sendall(b"\xff")
                except OSError:
                    break
                if _readable(s):
                    status = _read_response(s)[0]
                    break
                time.sleep(2)
        took = time.perf_counter() - started
        record(kind, "upload of one byte every 2 s (read timeout 3 s, upload timeout 8 s)",
               "clear" if status == 408 and took < 14 else "dos",
               f"status {status} after {took:.1f} s")
    finally:
        server.stop()


def timed_out_batches_attack(model: Path) -> None:
    """Batches of PNGs at the pixel cap that time out must not keep the server busy."""
    kind = "round two"
    server = Server(model, "--request-timeout", "1", "--workers", "2", "--queue", "2")
    try:
        heavy = png16(3999, 3999)
        body = multipart_body([("files", f"{i}.png", heavy) for i in range(16)])
        threads = [threading.Thread(target=lambda: server.post("/v1/predict/batch", body, MP,
                                                               timeout=120))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        started = time.perf_counter()
        status = 503
        while status != 200 and time.perf_counter() - started < 60:
            status, _ = server.post("/v1/predict", multipart_body([("file", "a.jpg", jpeg())]),
                                    MP)
            if status != 200:
                time.sleep(0.5)
        took = time.perf_counter() - started
        record(kind, "4 batches of 16 PNGs at the pixel cap, timed out: back to 200 in",
               "clear" if status == 200 and took < 5 else "dos",
               f"status {status} after {took:.1f} s")
    finally:
        server.stop()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _png_photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a bundle (Keras backend)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "current" / "hostile.json")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-ray", action="store_true", help="round two without Ray attacks")
    parser.add_argument("--server-args", default="--read-timeout 3 --workers 2 --queue 4",
                        help="extra `fashionnet serve` options (empty for an older checkout)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["FASHIONNET_CACHE_DIR"] = str(work / "cache")
        if not args.skip_server:
            server_attacks(args.model, args.server_args.split())
        bundle_attacks(args.model, work)
        dataset_attacks(work)
        crash_attacks(args.model, work)
        round_two_attacks(args.model, work, with_ray=not args.skip_ray and _has("ray"))
        if not args.skip_server:
            trickle_attack(args.model)
            timed_out_batches_attack(args.model)
    table = {kind: {"attempts": len(rows), **{o: sum(r[1] == o for r in rows) for o in OUTCOMES},
                    "rows": [{"attempt": n, "outcome": o, "detail": d} for n, o, d in rows]}
             for kind, rows in RESULTS.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"\n| class | attempts | {' | '.join(OUTCOMES)} |")
    for kind, row in table.items():
        print(f"| {kind} | {row['attempts']} | " + " | ".join(str(row[o]) for o in OUTCOMES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

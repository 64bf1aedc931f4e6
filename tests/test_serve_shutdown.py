"""A real `fashionnet serve` on 127.0.0.1: SIGTERM under load ends it in time, cleanly."""

from __future__ import annotations

import http.client
import io
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("uvicorn")
pytest.importorskip("onnxruntime")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 60, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _start_server(tmp_path, *options: str) -> tuple[subprocess.Popen, int]:
    """A real `fashionnet serve` with the shipped model, once /healthz answers 200."""
    port = _free_port()
    with (tmp_path / "server.log").open("wb") as log:  # a file, never an unread pipe
        server = subprocess.Popen(
            [sys.executable, "-m", "fashionnet.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), *options], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        assert time.monotonic() < deadline, "the server did not start in 60 s"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.1)


def test_sigterm_under_load_exits_within_5_s_answering_or_refusing_cleanly(tmp_path):
    server, port = _start_server(tmp_path)
    try:
        body = _jpeg()
        seen = {"ok": 0, "refused": 0, "cut": 0, "bad_status": []}
        lock = threading.Lock()
        stop = threading.Event()

        def client():
            conn = None
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    conn.request("POST", "/v1/predict", body=body,
                                 headers={"content-type": "image/jpeg"})
                    response = conn.getresponse()
                    data = response.read()
                    with lock:
                        if response.status == 200 and b'"heads"' in data:
                            seen["ok"] += 1
                        elif response.status != 503:  # 503 + Retry-After: a clean refusal
                            seen["bad_status"].append(response.status)
                    if response.will_close:
                        conn.close()
                        conn = None
                except http.client.IncompleteRead:
                    with lock:
                        seen["cut"] += 1
                    conn = None
                except (ConnectionError, http.client.RemoteDisconnected, OSError):
                    with lock:  # refused, or closed before any byte of an answer
                        seen["refused"] += 1
                    conn = None
                    time.sleep(0.02)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        assert seen["ok"] > 0, "no request was answered before the signal"
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("the server was still running 5 s after SIGTERM under load")
        took = time.monotonic() - signalled
        stop.set()
        for t in threads:
            t.join(15)
        assert took < 5
        assert seen["cut"] == 0 and seen["bad_status"] == [], seen
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_request_headers_sent_a_byte_at_a_time_are_cut_off(tmp_path):
    """uvicorn times out idle keep-alive connections, not slow headers: a client trickling
    its headers held a connection for ever (issue 38); now --header-timeout closes it."""
    server, port = _start_server(tmp_path, "--header-timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
            started, closed_after = time.monotonic(), None
            while time.monotonic() - started < 15:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                    s.settimeout(0.5)
                    if s.recv(100) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None and closed_after < 6, closed_after
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200  # everyone else is served as before
    finally:
        server.kill()
        server.wait()

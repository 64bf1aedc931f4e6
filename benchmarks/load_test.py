"""Bounded load test of `fashionnet serve` on 127.0.0.1: N clients for T seconds.

    python benchmarks/load_test.py --model runs/recipe [--clients 8 --seconds 20]

Starts the server in a subprocess, posts a 256 px JPEG from ../shared (or a generated one)
to /v1/predict from each client in a loop, and writes results/load_test.{json,md}: requests/s,
p50/p99 latency, error count. Traffic goes to the loopback address only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "datasets" / "fashion" / "red_dress"


def _photo() -> tuple[str, bytes]:
    if PHOTO.is_dir():
        path = sorted(PHOTO.iterdir())[0]
        return path.name, path.read_bytes()
    import io

    import numpy as np

    from fashionnet.data.synthetic import render

    buf = io.BytesIO()
    render("red", "dress", np.random.default_rng(0), 256).save(buf, "JPEG")
    return "generated.jpg", buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "results" / "load_test"))
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "fashionnet.cli", "serve", "--model",
                               args.model, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        backend = httpx.get(url + "/v1/model").json()["backend"]
        name, data = _photo()
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        deadline = time.perf_counter() + args.seconds

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    try:
                        ok = http.post(url + "/v1/predict",
                                       files={"file": (name, data, "image/jpeg")}).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        errors[0] += not ok

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=20)

    latencies.sort()
    result = {
        "command": "python benchmarks/load_test.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {_cores()} cores",
        "backend": backend, "clients": args.clients, "seconds": round(elapsed, 1),
        "requests": len(latencies), "errors": errors[0],
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "image": name, "image_bytes": len(data),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        "# Load test\n\n"
        f"`{result['command']}` on {result['machine']}, backend {backend}.\n\n"
        "| clients | seconds | requests | requests/s | p50 | p99 | errors |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {args.clients} | {result['seconds']} | {result['requests']} | "
        f"{result['requests_per_second']} | {result['p50_ms']} ms | {result['p99_ms']} ms | "
        f"{result['errors']} |\n")
    print(json.dumps(result, indent=2))
    return 1 if errors[0] else 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())

"""Bounded load test of `fashionnet serve` on 127.0.0.1, against the model's own speed.

    python benchmarks/load_test.py [--model BUNDLE] [--clients 1,8,16,32] [--seconds 8]
                                   [--rounds 3] [--shutdown]

Starts `fashionnet serve` in a subprocess (its output goes to a log file, never to a pipe
nobody reads: a full pipe blocks the server's access log and then the server), and posts one
fashion photo to /v1/predict from N keep-alive clients (asyncio, one process, raw HTTP/1.1:
a few tens of microseconds of client CPU per request, so the load generator takes little of
the two cores it shares with the server) for ``--seconds`` or ``--max-requests`` per level.

Each round, in this order, on the same photo and model:
  1. in-process baselines in a fresh process: one call (decode + model, batch 1; what a
     request costs without HTTP), and the model alone on batches of 32 (img/s);
  2. each client level: requests/s, p50/p99 latency, errors (any non-200, any broken
     connection), the server's peak resident memory during the level (VmRSS sampled every
     50 ms), its CPU time per request, and the batcher's mean batch size.
Rounds are interleaved so that every figure sees the same machine; the tables give min /
median / max over rounds. ``--shutdown`` then puts 32 clients on the server, sends SIGTERM,
and times the exit, sorting what the clients got after the signal: answers (200), refusals
(connection refused or closed before any byte of a response: retryable), and broken answers
(a response cut mid-way, or a 5xx).

Writes results/current/load_test.{json,md}. Loopback only; every level stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO_DIR = ROOT.parent / "shared" / "datasets" / "fashion" / "red_dress"
HOST = "127.0.0.1"


def photo() -> tuple[str, bytes]:
    if PHOTO_DIR.is_dir():
        path = sorted(PHOTO_DIR.iterdir())[0]
        return path.name, path.read_bytes()
    import io

    import numpy as np

    from fashionnet.data.synthetic import render

    buf = io.BytesIO()
    render("red", "dress", np.random.default_rng(0), 256).save(buf, "JPEG")
    return "generated.jpg", buf.getvalue()


def multipart_request(name: str, data: bytes, path: str = "/v1/predict") -> bytes:
    boundary = "fashionnetloadtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class Broken(Exception):
    """A response cut after some of its bytes had arrived."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(status, keep-alive, body); EOFError if the connection closed before any byte."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError from None
        raise Broken("response head cut") from None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    try:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    except asyncio.IncompleteReadError:
        raise Broken("response body cut") from None
    return status, headers.get("connection", "").lower() != "close", body


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        status, _, body = await read_response(reader)
        return status, body
    finally:
        writer.close()


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.refused = 0   # connection refused, or closed before any byte of an answer
        self.broken = 0    # an answer cut mid-way
        self.bad_body = 0  # a 200 without a prediction in it
        self.sent = 0

    def errors(self) -> int:
        return (sum(n for s, n in self.statuses.items() if s != 200) + self.refused
                + self.broken + self.bad_body)


async def exchange(reader, writer, request: bytes, tally: Tally
                   ) -> tuple[int | None, bytes, bool]:
    """One request on an open connection, counted in ``tally``: (status, body, whether the
    connection stays open). A refused or cut exchange closes the connection."""
    tally.sent += 1
    started = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        status, keep_alive, body = await read_response(reader)
    except (EOFError, ConnectionError):
        tally.refused += 1
        writer.close()
        return None, b"", False
    except Broken:
        tally.broken += 1
        writer.close()
        return None, b"", False
    tally.latencies.append(time.perf_counter() - started)
    tally.statuses[status] = tally.statuses.get(status, 0) + 1
    if not keep_alive:
        writer.close()
    return status, body, keep_alive


async def client(port: int, request: bytes, stop_at: float, budget: list[int], tally: Tally,
                 stop_event: asyncio.Event | None = None) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at and budget[0] > 0:
        if stop_event is not None and stop_event.is_set():
            break
        budget[0] -= 1
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                tally.refused += 1
                await asyncio.sleep(0.01)
                continue
        status, body, alive = await exchange(reader, writer, request, tally)
        if status == 200 and b'"heads"' not in body:
            tally.bad_body += 1
        if not alive:
            writer = None
    if writer is not None:
        writer.close()


def run_level(port: int, request: bytes, clients: int, seconds: float,
              max_requests: int, pid: int | None = None) -> tuple[Tally, float]:
    tally = Tally()
    tally.peak_rss_mb = 0.0
    budget = [max_requests]

    async def watch_memory(done: asyncio.Event):
        while pid is not None and not done.is_set():
            tally.peak_rss_mb = max(tally.peak_rss_mb, rss_mb(pid) or 0.0)
            await asyncio.sleep(0.05)

    async def main():
        stop_at = time.perf_counter() + seconds
        done = asyncio.Event()
        watcher = asyncio.create_task(watch_memory(done))
        await asyncio.gather(*(client(port, request, stop_at, budget, tally)
                               for _ in range(clients)))
        done.set()
        await watcher

    started = time.perf_counter()
    asyncio.run(main())
    return tally, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else 0.0


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """The process's resident memory now (VmRSS) or its peak since it started (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


#: A --server-args token of this script, not of `fashionnet serve`: that server runs with
#: httptools and uvloop hidden from it, so uvicorn falls back to h11 + asyncio, as it does
#: without uvicorn[standard]; for comparing the two HTTP stacks taking turns in one run.
H11_ASYNCIO = "--h11-asyncio"
HIDE_FAST_STACK = ("import sys; sys.modules.update(httptools=None, uvloop=None); "
                   "from fashionnet.cli import main; sys.exit(main())")


def start_server(model: str | None, log_path: Path, extra: list[str]) -> tuple[subprocess.Popen,
                                                                              int]:
    port = free_port()
    entry = ["-m", "fashionnet.cli"]
    if H11_ASYNCIO in extra:
        extra = [a for a in extra if a != H11_ASYNCIO]
        entry = ["-c", HIDE_FAST_STACK]
    command = [sys.executable, *entry, "serve", "--host", HOST, "--port",
               str(port), *(["--model", model] if model else []), *extra]
    log = log_path.open("ab")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()  # the child holds its own descriptor
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited ({server.returncode}): {log_path.read_text()[-2000:]}")
        try:
            if asyncio.run(http_get(port, "/healthz"))[0] == 200:
                return server, port
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("server did not start in 120 s")


def stop_server(server: subprocess.Popen) -> float:
    started = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    return time.perf_counter() - started


def baseline_child(model: str | None, photo_bytes: bytes, calls: int = 200) -> dict:
    """In this (fresh) process: one request's work without HTTP, and the model alone."""
    import numpy as np

    from fashionnet.default_model import default_model_path
    from fashionnet.inference import load

    predictor = load(model or default_model_path())
    image = predictor.decode(photo_bytes)
    batch = np.repeat(image[None], 32, axis=0)
    for _ in range(20):
        predictor.predict_arrays(predictor.decode(photo_bytes)[None])
        predictor.predict_probabilities(batch)
        predictor.predict_probabilities(batch[:4])
    single, model_only = [], []
    for _ in range(calls):
        t = time.perf_counter()
        predictor.predict_arrays(predictor.decode(photo_bytes)[None])[0].to_dict()
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        predictor.predict_probabilities(image[None])
        model_only.append(time.perf_counter() - t)
    batched, small = [], []
    for _ in range(max(5, calls // 20)):
        t = time.perf_counter()
        predictor.predict_probabilities(batch)
        batched.append(time.perf_counter() - t)
        for _ in range(8):
            t = time.perf_counter()
            predictor.predict_probabilities(batch[:4])
            small.append(time.perf_counter() - t)
    out = {"decode_and_model_ms": 1000 * statistics.median(single),
           "model_only_ms": 1000 * statistics.median(model_only),
           "model_batch32_img_s": 32 / statistics.median(batched),
           "model_batch4_img_s": 4 / statistics.median(small)}
    # A big convolutional network at 224 px can run fewer img/s in batches of 32 than of 1
    # or 4 (its activations leave the cache): the model's best is the highest of the three.
    out["model_best_img_s"] = max(1000 / out["model_only_ms"], out["model_batch4_img_s"],
                                  out["model_batch32_img_s"])
    return out


def baseline(model: str | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--baseline-child",
                          *(["--model", model] if model else [])],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def shutdown_under_load(model: str | None, request: bytes, log_path: Path, extra: list[str],
                        clients: int = 32) -> dict:
    server, port = start_server(model, log_path, extra)
    before, after = Tally(), Tally()
    signalled: dict = {}

    async def main():
        stop = asyncio.Event()
        budget = [10**9]

        async def signal_later():
            await asyncio.sleep(2.0)
            signalled["at"] = time.perf_counter()
            server.send_signal(signal.SIGTERM)
            tally_switch["now"] = after
            while server.poll() is None and time.perf_counter() - signalled["at"] < 20:
                await asyncio.sleep(0.005)
            signalled["exit_s"] = time.perf_counter() - signalled["at"]
            await asyncio.sleep(0.3)  # clients see the closed port
            stop.set()

        tally_switch = {"now": before}

        async def switching_client():
            # each request is counted in the tally current when it was sent
            reader = writer = None
            while not stop.is_set() and budget[0] > 0:
                tally = tally_switch["now"]
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection(HOST, port)
                    except OSError:
                        tally.refused += 1
                        await asyncio.sleep(0.02)
                        continue
                _, _, alive = await exchange(reader, writer, request, tally)
                if not alive:
                    writer = None
            if writer is not None:
                writer.close()

        await asyncio.gather(signal_later(), *(switching_client() for _ in range(clients)))

    asyncio.run(main())
    if server.poll() is None:
        server.kill()
    server.wait()
    return {"clients": clients, "exit_seconds": round(signalled.get("exit_s", float("nan")), 2),
            "exit_code": server.returncode,
            "answered_before_signal": before.statuses.get(200, 0),
            "after_signal": {"answered_200": after.statuses.get(200, 0),
                             "other_statuses": {str(k): v for k, v in after.statuses.items()
                                                if k != 200},
                             "refused_or_closed_before_answer": after.refused,
                             "cut_mid_answer": after.broken},
            "clean": after.broken == 0 and not any(k >= 500 for k in after.statuses)}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="bundle folder (default: the shipped model)")
    parser.add_argument("--clients", default="1,8,16,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level and round")
    parser.add_argument("--max-requests", type=int, default=20000, help="per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shutdown", action="store_true", help="SIGTERM under load, timed")
    parser.add_argument("--server-args", action="append",
                        help="extra `fashionnet serve` options; repeat it to compare "
                             "configurations: one server each, taking turns at every level; "
                             f"--server-args={H11_ASYNCIO} (this script's): uvicorn on h11 + "
                             "asyncio, with httptools and uvloop hidden")
    parser.add_argument("--out", default=str(ROOT / "results" / "current" / "load_test"))
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    name, data = photo()
    if args.baseline_child:
        print(json.dumps(baseline_child(args.model, data)))
        return 0

    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]
    request = multipart_request(name, data)
    configs = args.server_args or [""]
    log_dir = Path(tempfile.mkdtemp(prefix="fashionnet-load-"))
    log_path = log_dir / "server.log"
    servers = {}
    for config in configs:
        servers[config or "defaults"] = start_server(args.model, log_path, config.split())
    rounds: list[dict] = []
    stop_seconds = {}
    try:
        port0 = next(iter(servers.values()))[1]
        info = json.loads(asyncio.run(http_get(port0, "/v1/model"))[1])
        for r in range(args.rounds):
            base = baseline(args.model)
            print(f"round {r + 1}: in-process decode+model {base['decode_and_model_ms']:.2f} ms,"
                  f" model only {base['model_only_ms']:.2f} ms, batch 32 "
                  f"{base['model_batch32_img_s']:.0f} img/s", flush=True)
            row: dict = {"baseline": base, "servers": {label: {"levels": {}}
                                                       for label in servers}}
            for clients in levels:
                order = list(servers) if r % 2 == 0 else list(servers)[::-1]
                for label in order:
                    server, port = servers[label]
                    level = measure_level(server, port, request, clients, args)
                    row["servers"][label]["levels"][str(clients)] = level
                    print(f"  [{label}] {clients:3d} clients: "
                          f"{level['requests_per_second']:7.1f} req/s, p50 "
                          f"{level['p50_ms']:6.1f} ms, p99 {level['p99_ms']:6.1f} ms, errors "
                          f"{level['errors']}, peak RSS {level['peak_rss_mb']:.0f} MB, mean batch "
                          f"{level['mean_model_batch']:.1f}, CPU per request: server "
                          f"{level['server_cpu_ms_per_request']:.2f} ms, load generator "
                          f"{level['client_cpu_ms_per_request']:.2f} ms", flush=True)
            rounds.append(row)
    finally:
        for label, (server, _) in servers.items():
            stop_seconds[label] = round(stop_server(server), 2)
    shutdown = None
    if args.shutdown:
        shutdown = shutdown_under_load(args.model, request, log_path, configs[0].split())
        print(f"SIGTERM under load: exit in {shutdown['exit_seconds']} s, "
              f"{json.dumps(shutdown['after_signal'])}", flush=True)

    summary = {label: summarise(rounds, levels, label) for label in servers}
    result = {
        "command": "python benchmarks/load_test.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {_cores()} cores, load average before "
                   f"{load_before:.1f}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "backend": f"{info['backend']}, {info.get('precision', 'fp32')}",
        "model": args.model or "shipped default", "image": name, "image_bytes": len(data),
        "server_args": configs, "limits": info["limits"], "rounds": rounds,
        "summary": summary, "idle_stop_seconds": stop_seconds,
        "shutdown_under_load": shutdown, "server_log": str(log_path)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # suffixes appended, not replaced: --out results/current/load_test.scratch works
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{out}.md").write_text(render(result, levels))
    print(render(result, levels))
    errors = sum(lv["errors"] for r in rounds for srv in r["servers"].values()
                 for lv in srv["levels"].values())
    return 1 if errors or (shutdown and not shutdown["clean"]) else 0


def measure_level(server: subprocess.Popen, port: int, request: bytes, clients: int,
                  args) -> dict:
    stats_before = json.loads(asyncio.run(http_get(port, "/v1/stats"))[1])["batcher"]
    cpu_before, own_before = cpu_seconds(server.pid), time.process_time()
    tally, elapsed = run_level(port, request, clients, args.seconds, args.max_requests,
                               pid=server.pid)
    cpu = cpu_seconds(server.pid) - cpu_before
    own = time.process_time() - own_before
    stats = json.loads(asyncio.run(http_get(port, "/v1/stats"))[1])["batcher"]
    calls = stats["batches"] - stats_before["batches"]
    images = stats["images"] - stats_before["images"]
    done = len(tally.latencies)
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": done,
            "errors": tally.errors(), "requests_per_second": done / elapsed,
            "p50_ms": 1000 * percentile(tally.latencies, 0.5),
            "p99_ms": 1000 * percentile(tally.latencies, 0.99),
            "peak_rss_mb": tally.peak_rss_mb,
            "peak_rss_since_start_mb": rss_mb(server.pid, "VmHWM"),
            "mean_model_batch": images / calls if calls else 0.0,
            "server_cpu_ms_per_request": 1000 * cpu / max(done, 1),
            "client_cpu_ms_per_request": 1000 * own / max(done, 1)}


def summarise(rounds: list[dict], levels: list[int], label: str) -> dict:
    base = {k: spread([r["baseline"][k] for r in rounds]) for k in rounds[0]["baseline"]}
    out: dict = {"baseline": base, "levels": {}}
    for clients in levels:
        rows = [r["servers"][label]["levels"][str(clients)] for r in rounds]
        entry = {k: spread([row[k] for row in rows]) for k in
                 ("requests_per_second", "p50_ms", "p99_ms", "mean_model_batch",
                  "server_cpu_ms_per_request", "client_cpu_ms_per_request")}
        entry["errors"] = sum(row["errors"] for row in rows)
        entry["requests"] = sum(row["requests"] for row in rows)
        entry["peak_rss_mb"] = spread([row["peak_rss_mb"] for row in rows])
        # ratios within each round (same machine state), then their spread
        entry["throughput_vs_model_batch32"] = spread(
            [row["requests_per_second"] / r["baseline"]["model_batch32_img_s"]
             for row, r in zip(rows, rounds)])
        entry["throughput_vs_model_best"] = spread(
            [row["requests_per_second"] / r["baseline"]["model_best_img_s"]
             for row, r in zip(rows, rounds)])
        entry["p50_vs_in_process_call"] = spread(
            [row["p50_ms"] / r["baseline"]["decode_and_model_ms"] for row, r in zip(rows, rounds)])
        out["levels"][str(clients)] = entry
    return out


def render(result: dict, levels: list[int]) -> str:
    b = next(iter(result["summary"].values()))["baseline"]

    def mmm(d, fmt="{:.1f}"):
        return " / ".join(fmt.format(d[k]) for k in ("min", "median", "max"))

    lines = [
        "# Load test", "",
        f"`{result['command']}` on {result['machine']}, {result['date']}; model "
        f"{result['model']} ({result['backend']}), photo {result['image']} "
        f"({result['image_bytes']} bytes) posted as multipart to /v1/predict by keep-alive "
        f"clients on 127.0.0.1. {len(result['rounds'])} rounds, each: the in-process baselines "
        "(a fresh process), then every client level; min / median / max over rounds. Ratios "
        "are taken within a round, then summarised.", "",
        "In-process baselines (same photo, same model):", "",
        "| measure | min / median / max |", "| --- | --- |",
        f"| one call: decode + model, batch 1 | {mmm(b['decode_and_model_ms'], '{:.2f}')} ms |",
        f"| model only, batch 1 | {mmm(b['model_only_ms'], '{:.2f}')} ms |",
        f"| model only, batches of 4 | {mmm(b['model_batch4_img_s'], '{:.0f}')} img/s |",
        f"| model only, batches of 32 | {mmm(b['model_batch32_img_s'], '{:.0f}')} img/s |",
        f"| model only, best of batch 1 / 4 / 32 | {mmm(b['model_best_img_s'], '{:.0f}')} img/s"
        " |"]
    for label, s in result["summary"].items():
        lines += [
            "", f"Server `fashionnet serve{'' if label == 'defaults' else ' ' + label}` "
            f"({label}):", "",
            "| clients | requests/s | p50 ms | p99 ms | errors | requests | server peak RSS, MB "
            "| mean model batch | server CPU ms/request | req/s vs model batch-32 img/s | "
            "req/s vs model's best img/s | p50 vs one in-process call |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for clients in levels:
            e = s["levels"][str(clients)]
            lines.append(
                f"| {clients} | {mmm(e['requests_per_second'], '{:.0f}')} | {mmm(e['p50_ms'])} |"
                f" {mmm(e['p99_ms'])} | {e['errors']} | {e['requests']} | "
                f"{mmm(e['peak_rss_mb'], '{:.0f}')} | {mmm(e['mean_model_batch'])} | "
                f"{mmm(e['server_cpu_ms_per_request'], '{:.2f}')} | "
                f"{mmm(e['throughput_vs_model_batch32'], '{:.2f}')} | "
                f"{mmm(e['throughput_vs_model_best'], '{:.2f}')} | "
                f"{mmm(e['p50_vs_in_process_call'], '{:.2f}')} |")
    lines += ["", "Peak RSS: the server's resident memory sampled every 50 ms during the level "
              "(it does not shrink back after a busier level).", "",
              f"Server stop when idle (SIGTERM to exit), seconds: {result['idle_stop_seconds']}."]
    sd = result.get("shutdown_under_load")
    if sd:
        a = sd["after_signal"]
        lines += [
            "", f"SIGTERM under load ({sd['clients']} clients): the server exited in "
            f"{sd['exit_seconds']} s (exit code {sd['exit_code']}). After the signal: "
            f"{a['answered_200']} requests answered 200, {a['refused_or_closed_before_answer']}"
            f" refused (connection refused, or closed before any byte of an answer: safe to "
            f"retry), {a['cut_mid_answer']} answers cut mid-way, other statuses "
            f"{a['other_statuses'] or 'none'}: {'clean' if sd['clean'] else 'NOT clean'}."]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    from fashionnet.runtime.runners import cores

    return cores()


if __name__ == "__main__":
    sys.exit(main())

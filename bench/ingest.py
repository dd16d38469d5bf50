"""Rows over HTTP: rows/s and request latency of ``[ingest] listen`` against ``spoold append`` and a raw floor.

N clients (threads, one keep-alive connection each, raw sockets so the client
costs little of the 2 CPUs it shares with the daemon) post R requests of B
rows (~300-byte JSON lines) to a real ``spoold run``; every 200 means the
request's rows are fsync'd in the spool. Baselines on the same rows, same
process and run: ``spoold append`` with one process per request (as a hook or
script producer does) and one for everything; and the floor, raw
``os.write`` + ``fsync`` of each request's bytes to one file.
Flushes are held off (``debounce_s`` 600) so the figures are ingest's alone.

    .venv/bin/python bench/ingest.py [--clients 8] [--requests 300] [--rows 100]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from common import sqlite_toml, status_mb

TABLE = "bench.events"
COLUMNS = {"part_id": "string!", "ts": "timestamptz", "session_id": "string", "kind": "string", "n": "long",
           "text": "string"}


def row(key: str, k: int) -> bytes:
    return orjson.dumps({"part_id": key, "ts": "2026-12-05T06:00:00.123456Z", "session_id": f"s{k % 97:08d}",
                         "kind": "text", "n": k, "text": ("lorem ipsum dolor sit amet " * 8)[: 150 + k % 20]}) + b"\n"


def bodies(clients: int, requests: int, rows: int) -> list[list[bytes]]:
    return [[b"".join(row(f"c{c}r{r}n{i}", r * rows + i) for i in range(rows)) for r in range(requests)]
            for c in range(clients)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(state: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    cols = "".join(f'{c} = "{t}"\n' for c, t in COLUMNS.items())
    cfg = state / "spoold.toml"
    cfg.write_text(sqlite_toml(state) + f'[flush]\ndebounce_s = 600\nmax_delay_s = 600\n[ingest]\n'
                   f'listen = "127.0.0.1:{port}"\n[tables."{TABLE}".columns]\n{cols}')
    log = state / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 60
    while not re.search(rb"/v1/logs on http://", log.read_bytes()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"spoold run did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc, cfg


def client(port: int, reqs: list[bytes], lat: list[float], errors: list[str]) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"POST /v1/tables/{TABLE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-ndjson\r\n"
    for body in reqs:
        t0 = time.perf_counter()
        s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            if not (more := s.recv(65536)):
                errors.append(f"connection closed: {buf[:200]!r}")
                return
            buf += more
        top, _, rest = buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", top.lower()).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            if not (more := s.recv(65536)):
                errors.append("connection closed mid-reply")
                return
            rest += more
        lat.append(time.perf_counter() - t0)
        if not top.startswith(b"HTTP/1.1 200"):
            errors.append(top.split(b"\r\n", 1)[0].decode())
    s.close()


def run_ingest(port: int, work: list[list[bytes]]) -> tuple[float, list[float], list[str]]:
    lats: list[list[float]] = [[] for _ in work]
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(port, w, lat, errors)) for w, lat in zip(work, lats)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sorted(x for lat in lats for x in lat), errors


def raw_floor(path: Path, reqs: list[bytes]) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    for body in reqs:
        os.write(fd, body)
        os.fsync(fd)
    took = time.perf_counter() - t0
    os.close(fd)
    return took


def spoold_append(cfg: Path, reqs: list[bytes], table: str) -> float:
    spoold = [sys.executable, "-m", "spoold", "append", table, "-", "--config", str(cfg)]
    t0 = time.perf_counter()
    for body in reqs:
        subprocess.run(spoold, input=body, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="per client")
    ap.add_argument("--rows", type=int, default=100, help="per request")
    ap.add_argument("--append-requests", type=int, default=100, help="requests replayed with `spoold append`")
    a = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="spoold-bench-ingest-"))
    work = bodies(a.clients, a.requests, a.rows)
    n_req = a.clients * a.requests
    n_rows = n_req * a.rows
    size = sum(map(len, work[0])) / a.requests
    print(f"bench/ingest.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, in {state}")
    print(f"{a.clients} keep-alive clients x {a.requests} requests x {a.rows} rows "
          f"({size / a.rows:.0f} B a row, {size / 1024:.1f} KiB a request): {n_rows:,} rows")
    port = free_port()
    proc, cfg = start_daemon(state, port)
    try:
        time.sleep(1.0)
        idle = status_mb("VmRSS", proc.pid)
        took, lat, errors = run_ingest(port, work)
        after = status_mb("VmRSS", proc.pid)
        hwm = status_mb("VmHWM", proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    ingest_rate = n_rows / took
    print(f"ingest      : {ingest_rate:>10,.0f} rows/s, {n_req / took:,.0f} requests/s; latency p50 "
          f"{lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, max "
          f"{lat[-1] * 1000:.1f} ms   [target >= 50,000 rows/s: {'met' if ingest_rate >= 50_000 else 'MISSED'}]")
    print(f"              daemon RSS idle {idle:.1f} MB (ingest on), {after:.1f} MB after, peak {hwm:.1f} MB")
    flat = [b for w in work for b in w]
    floor = raw_floor(state / "raw.jsonl", flat)
    print(f"raw floor   : {n_rows / floor:>10,.0f} rows/s (os.write + fsync per request, one writer)"
          f"   ingest = {ingest_rate / (n_rows / floor):.0%} of it")
    few = flat[: a.append_requests]
    per_req = spoold_append(cfg, few, TABLE + "_a")
    rate_a = len(few) * a.rows / per_req
    print(f"spoold append, a process per request: {rate_a:>8,.0f} rows/s ({len(few)} requests; "
          f"{per_req / len(few) * 1000:.1f} ms each)   ingest = {ingest_rate / rate_a:.1f}x")
    one = spoold_append(cfg, [b"".join(flat)], TABLE + "_b")
    print(f"spoold append, one process for all {n_rows:,} rows: {n_rows / one:,.0f} rows/s")


if __name__ == "__main__":
    main()

"""Hundreds of idle and slow connections neither lock out other clients nor stop flushes; the slow are cut off."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import orjson
import pytest
from support.daemonproc import DaemonProc, wait_for
from support.ingest import Client, ingest_address, ingest_config
from support.tables import committed_counts

TABLE = '[tables."app.events"]\n[tables."app.events".columns]\npart_id = "string!"\nn = "long"\n'
HEAD = b"POST /v1/tables/app.events HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"


def body(keys: range) -> bytes:
    return b"".join(orjson.dumps({"part_id": f"k{k}", "n": k}) + b"\n" for k in keys)


@pytest.mark.slow
def test_idle_and_slow_connections_cannot_starve_others(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE, ingest="header_timeout_s = 2\nidle_timeout_s = 300\nmax_connections = 300\n")
    d = DaemonProc(cfg)
    idle: list[Client] = []
    slow: list[socket.socket] = []
    try:
        addr = ingest_address(d)
        host, port = addr.rsplit(":", 1)
        for i in range(200):  # keep-alive connections that sent one request and then say nothing
            c = Client(addr)
            assert c.post("/v1/tables/app.events", body(range(100_000 + i, 100_001 + i)))[0] == 200
            idle.append(c)
        for _ in range(200):
            s = socket.create_connection((host, int(port)))
            s.setblocking(False)
            slow.append(s)
        cut: dict[int, float] = {}
        started = time.monotonic()

        def trickle() -> None:  # a header byte a second on each slow connection, until the server cuts it
            for step in range(15):
                for i, s in enumerate(slow):
                    if i in cut:
                        continue
                    try:
                        if s.recv(1 << 16) == b"":
                            cut[i] = time.monotonic() - started
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        cut[i] = time.monotonic() - started
                        continue
                    try:
                        s.send(HEAD[step : step + 1])
                    except OSError:
                        cut[i] = time.monotonic() - started
                if len(cut) == len(slow):
                    return
                time.sleep(1.0)

        slowpoke = threading.Thread(target=trickle)
        slowpoke.start()
        latencies: list[float] = []
        c: Client | None = None
        for r in range(100):  # others: half on new connections (each may have to make room), half keep-alive
            if c is None or r % 2 == 0:
                c = Client(addr, timeout=30)
            t0 = time.monotonic()
            code, _, _ = c.post("/v1/tables/app.events", body(range(r * 10, r * 10 + 10)))
            latencies.append(time.monotonic() - t0)
            assert code == 200
            time.sleep(0.02)
        slowpoke.join(30)
        latencies.sort()
        p99 = latencies[98]
        print(f"\nother clients under 200 idle + 200 slow connections: p50 {latencies[49] * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms; slow ones cut after {min(cut.values()):.1f}..{max(cut.values()):.1f} s")
        assert len(cut) == len(slow) and max(cut.values()) < 10  # header_timeout_s = 2, a generous margin
        assert p99 < 2.0  # measured ≤ 200 ms on an idle machine (bench/RESULTS.md); generous under load
        want = {f"k{k}" for k in range(1000)}
        wait_for(lambda: want <= set(committed_counts(cfg, "app.events")), "flushes went on meanwhile")
    finally:
        for s in slow:
            s.close()
        for c in idle:
            c.close()
        d.close()

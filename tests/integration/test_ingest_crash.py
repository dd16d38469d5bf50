"""kill -9 of the daemon while clients post: every acknowledged row is committed after a restart, none twice."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import orjson
import pytest
from support.daemonproc import DaemonProc, wait_for
from support.ingest import Client, ingest_address, ingest_config
from support.tables import committed_counts

TABLE = '[tables."app.events"]\n[tables."app.events".columns]\npart_id = "string!"\nn = "long"\n'
ROUNDS = 20
CLIENTS = 4


@pytest.mark.slow
def test_acknowledged_rows_survive_kill_9_at_random_points(tmp_path: Path, rng: random.Random) -> None:
    cfg = ingest_config(tmp_path, TABLE, flush="debounce_s = 0.2\nmax_delay_s = 1\n")
    acked: list[str] = []
    sent: set[str] = set()
    lock = threading.Lock()
    for rnd in range(ROUNDS):
        d = DaemonProc(cfg)
        addr = ingest_address(d)
        stop = threading.Event()
        first = threading.Event()

        def client(i: int, addr: str = addr, stop: threading.Event = stop, first: threading.Event = first,
                    rnd: int = rnd) -> None:
            c = Client(addr, timeout=10)
            batch = 0
            while not stop.is_set():
                keys = [f"r{rnd}c{i}b{batch}n{k}" for k in range(20)]
                batch += 1
                with lock:
                    sent.update(keys)
                try:
                    code, _, _ = c.post("/v1/tables/app.events",
                                        b"".join(orjson.dumps({"part_id": k, "n": batch}) + b"\n" for k in keys))
                except OSError:
                    return  # the daemon died under this request: not acknowledged
                if code == 200:
                    with lock:
                        acked.extend(keys)
                    first.set()
            c.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        assert first.wait(30), d.log()
        stop.wait(rng.uniform(0.0, 0.6))  # a random point: mid-append, mid-fsync, mid-flush, mid-commit...
        d.kill()
        d.close()
        stop.set()
        for t in threads:
            t.join(30)
    d = DaemonProc(cfg)
    try:
        want = set(acked)
        assert len(want) == len(acked) > 0
        counts = wait_for(lambda: (c := committed_counts(cfg, "app.events")) and want <= set(c) and c,
                          "every acknowledged row committed after the restart")
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
        assert set(counts) <= sent  # and nothing that was never sent
    finally:
        d.close()

"""/metrics and /health: the pure health decision, the counters, and the listener served in-process."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.daemonproc import http_get
from support.paths import REPO

from spoold.config import ConfigError, parse_config, parse_listen
from spoold.daemon import metrics
from spoold.daemon.metrics import DRAINING, RUNNING, STALL_S, STARTING, Metrics, health
from spoold.errors import SpooldError

NOW = 1_000_000.0


def state(**tables: dict[str, Any]) -> dict[str, Any]:
    return {"tables": tables, "spool_full": [], "sources": []}


# --- health (pure) -------------------------------------------------------------------------------


def test_health_is_unavailable_while_starting_or_draining() -> None:
    assert health(STARTING, state(), NOW, 600) == (False, "starting")
    assert health(DRAINING, state(), NOW, 600) == (False, "draining")
    assert health(RUNNING, state(), NOW, 600) == (True, "ok")


def test_health_fails_once_rows_have_failed_to_commit_for_longer_than_max_delay() -> None:
    failing = {"failures": 3, "oldest_pending_at": NOW - 601, "last_error": "catalog down: http://u:pw@h",
               "error_class": "catalog unreachable"}
    ok, why = health(RUNNING, state(**{"a.b": failing}), NOW, 600)
    # The table and the class of its error; never the error's text (it may quote a URI with credentials).
    assert not ok and "a.b" in why and "catalog unreachable" in why and "catalog down" not in why
    # Failing, but the rows are younger than max_delay_s: not yet.
    assert health(RUNNING, state(**{"a.b": {**failing, "oldest_pending_at": NOW - 599}}), NOW, 600)[0]
    # Old rows, but nothing failed (a long debounce, a busy table): commits work.
    assert health(RUNNING, state(**{"a.b": {**failing, "failures": 0}}), NOW, 600)[0]


def test_health_fails_while_a_spool_is_full() -> None:
    ok, why = health(RUNNING, {**state(), "spool_full": ["a.b"]}, NOW, 600)
    assert not ok and "a.b" in why and "full" in why


# --- listen address ------------------------------------------------------------------------------


@pytest.mark.parametrize("listen, want", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)),
                                          ("localhost:80", ("localhost", 80))])
def test_listen_addresses(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:port", "::1:9464", "h:70000", "h:-1"])
def test_malformed_listen_addresses_are_refused_at_config_load(listen: str) -> None:
    with pytest.raises(ConfigError, match="daemon.listen: expected HOST:PORT"):
        parse_config({"daemon": {"listen": listen}})


def test_counting_is_free_and_imports_nothing_without_a_listener() -> None:
    code = ("import sys\nimport spoold.daemon.loop, spoold.daemon.metrics\n"
            "from spoold.daemon import metrics\n"
            "metrics.flushed('a.b', 'ok', 1.0, {'committed': 1}); metrics.commit_conflict('a.b')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'http', 'ssl')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# --- the server, in-process ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[Metrics]:
    s = Metrics("127.0.0.1:0")
    try:
        yield s
    finally:
        s.close()


def get(server: Metrics, path: str) -> tuple[int, bytes]:
    return http_get(server.address, path)


def samples(server: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = get(server, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_metrics_count_flushes_and_conflicts_and_show_the_published_state(server: Metrics) -> None:
    cfg = parse_config({"flush": {"max_delay_s": 60, "debounce_s": 1}})
    assert get(server, "/health")[0] == 503  # starting: the loop has not turned yet
    metrics.flushed("a.b", "ok", 0.3, {"committed": 5, "deduplicated": 2, "quarantined": 1})
    metrics.flushed("a.b", "error", 2.0, {"committed": 1})
    metrics.commit_conflict("a.b")
    metrics.maintained("a.b")
    published = {"tables": {"c.d": {"pending_rows_estimate": 7, "pending_bytes": 900, "oldest_pending_at": 1.0,
                                    "failures": 0}},
                 "spool_full": ["c.d"], "spool_free_bytes": 12345,
                 "sources": [{"table": "c.d", "path": "/x/*.jsonl", "lag_bytes": 42}]}
    server.observe(published, cfg)
    got = samples(server)
    t = (("table", "a.b"),)
    assert got[("spoold_rows_committed_total", t)] == 6
    assert got[("spoold_rows_deduplicated_total", t)] == 2
    assert got[("spoold_rows_quarantined_total", t)] == 1
    assert got[("spoold_flushes_total", (("result", "ok"), *t))] == 1
    assert got[("spoold_flushes_total", (("result", "error"), *t))] == 1
    assert got[("spoold_commit_conflicts_total", t)] == 1
    assert got[("spoold_maintenance_runs_total", (("result", "ok"), *t))] == 1
    assert got[("spoold_flush_duration_seconds_count", t)] == 2
    assert got[("spoold_flush_duration_seconds_bucket", (("le", "0.5"), *t))] == 1
    c = (("table", "c.d"),)
    assert got[("spoold_spool_pending_rows", c)] == 7
    assert got[("spoold_spool_pending_bytes", c)] == 900
    assert got[("spoold_oldest_pending_seconds", c)] > 1000
    assert got[("spoold_spool_full", c)] == 1 and got[("spoold_spool_full", t)] == 0
    assert got[("spoold_spool_pending_rows", t)] == 0  # a table without pending rows shows 0
    assert got[("spoold_rows_committed_total", c)] == 0  # a table seen only pending counts from 0
    assert got[("spoold_source_lag_bytes", (("path", "/x/*.jsonl"), *c))] == 42
    assert got[("spoold_spool_free_bytes", ())] == 12345
    assert got[("spoold_healthy", ())] == 0  # c.d's spool is full
    code, body = get(server, "/health")
    assert code == 503 and orjson.loads(body)["reason"] == "table c.d: spool full, appends are refused"
    assert orjson.loads(body)["tables"] == {"c.d": {"error": "spool full"}}
    server.observe({**published, "spool_full": []}, cfg)
    code, body = get(server, "/health")
    assert code == 200 and orjson.loads(body) == {"ok": True, "status": "running", "reason": "ok"}
    assert get(server, "/nope")[0] == 404
    server.phase = DRAINING
    assert get(server, "/health")[0] == 503


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(server: Metrics) -> None:
    metrics.flushed("a.b", "ok", 0.1, {"committed": 1})
    req = urllib.request.Request(f"http://{server.address}/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().rstrip().endswith(b"# EOF")


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SpooldError, match=rf"daemon.listen = '127.0.0.1:{port}': cannot listen there: .*in use"):
            Metrics(f"127.0.0.1:{port}")


def test_counting_stops_when_the_server_closes() -> None:
    s = Metrics("127.0.0.1:0")
    s.close()
    metrics.flushed("a.b", "ok", 0.1, {"committed": 1})  # no server: a no-op, no error
    assert metrics._live is None


def test_health_fails_while_the_loop_has_not_turned_or_a_table_lock_stays_held() -> None:
    assert health(RUNNING, state(), NOW, 600, stalled_s=STALL_S - 1) == (True, "ok")
    ok, why = health(RUNNING, state(), NOW, 600, stalled_s=STALL_S + 1)
    assert not ok and "loop stuck" in why
    held = {"oldest_pending_at": NOW - 700, "failures": 0, "lock_held_since": NOW - 650}
    ok, why = health(RUNNING, state(**{"a.b": held}), NOW, 600)
    assert not ok and "a.b" in why and "spool lock held" in why
    assert health(RUNNING, state(**{"a.b": {**held, "oldest_pending_at": NOW - 10}}), NOW, 600)[0]


def test_a_full_quarantine_is_named_as_such_on_health_not_as_a_full_spool() -> None:
    from spoold.errors import QuarantineFull, SpoolFull, error_class

    assert error_class(QuarantineFull("x")) == "quarantine full" and error_class(SpoolFull("x")) == "spool full"


def test_health_fails_while_the_ingest_listener_is_down() -> None:
    assert health(RUNNING, {}, 0.0, 60.0, ingest_down=True) == (False, "ingest listener down")
    assert health(RUNNING, {}, 0.0, 60.0, ingest_down=False) == (True, "ok")

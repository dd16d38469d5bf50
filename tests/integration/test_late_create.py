"""The first-create race of issue 12, made deterministic: a catalog whose create is not atomic.

Two hosts create one new table at the same moment through a catalog whose
create is check-then-write (SeaweedFS 4.48's REST catalog): both "succeed",
and the name goes to whichever wrote last. ``support.latecreate.LateCreateCatalog``
(pyiceberg's SQL catalog plus that one late write, on cue) replays the two
windows without a server: the late write lands right after this host's
create (its create response names a table the catalog no longer serves), or
right after its first commit (the commit is then referenced by nothing).
Each test runs the real ``spoold`` CLI per host, as the issue's hosts did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.paths import REPO
from support.tables import read_table

from spoold.config import load_config
from spoold.flush.verify import recheck
from spoold.iceberg.sink import Sink
from spoold.layout import HELD
from spoold.spool.held import Record
from spoold.spool.spool import Spool

TABLE = """
[tables."app.events"]
[tables."app.events".columns]
part_id = "string!"
n = "long"
host = "string"
"""
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}


def host(tmp_path: Path, name: str, *, late: str = "", chunk_rows: int = 100_000, verify_after_s: float = 0,
         extra: str = "") -> Path:
    """A host's config: its own spool, the shared catalog (``late``: the late create it will see)."""
    state = tmp_path / "shared"
    state.mkdir(exist_ok=True)
    catalog = (f'[catalog]\npy-catalog-impl = "support.latecreate.LateCreateCatalog"\n'
               f'uri = "sqlite:///{state / "catalog.db"}"\nwarehouse = "file://{state / "warehouse"}"\n')
    if late:
        catalog += f'late-create = "{late}"\nlate-create-marker = "{state / "late.marker"}"\n'
    flush = f"[flush]\nchunk_rows = {chunk_rows}\nverify_after_s = {verify_after_s}\n{extra}"
    return write_config(tmp_path / name, TABLE + flush, catalog=catalog + "\n")


def rows(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}{i}", "n": i, "host": prefix} for i in range(start, start + n)]


def append(cfg: Path, batch: list[dict[str, Any]]) -> None:
    Spool.from_config(load_config(cfg)).append("app.events", batch)


def spoold(cfg: Path, *args: str) -> Any:
    return run_spoold(*args, "--config", str(cfg), env=ENV)


def flush(cfg: Path) -> dict[str, Any]:
    proc = spoold(cfg, "flush", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return {"stderr": proc.stderr.decode(), **json.loads(proc.stdout)["tables"].get("app.events", {})}


def spooled_rows(cfg: Path) -> int:
    proc = spoold(cfg, "status", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return int(json.loads(proc.stdout)["tables"]["app.events"]["spooled_rows"])


def keys(cfg: Path) -> Counter[str]:
    return Counter(read_table(cfg, "app.events").column("part_id").to_pylist())


def records(cfg: Path) -> list[Record]:
    d = load_config(cfg).spool_root / "app.events" / HELD
    return [Record.from_json(p.read_bytes()) for p in sorted(d.glob("*.json"))]


@pytest.mark.slow  # ~14 s
def test_a_late_create_after_this_hosts_commit_loses_no_row(tmp_path: Path) -> None:
    """The silent loss: A creates, commits 300 rows and exits 0; B's late create then replaces the table."""
    a, b = host(tmp_path, "a", late="after-commit"), host(tmp_path, "b")
    append(a, rows("a", 300))
    assert flush(a)["committed"] == 300
    assert sum(keys(b).values()) == 0  # the late create replaced the table: A's commit is referenced by nothing
    assert spooled_rows(a) == 300  # ... but A still holds the rows it committed to a table not verified yet
    (rec,) = records(a)
    (lost,) = rec.commits

    append(b, rows("b", 100) + rows("a", 10, 290))  # B also spooled 10 of A's keys
    assert flush(b)["committed"] == 110
    again = flush(a)  # A looks again: its snapshot is gone, so its rows go back into the queue
    assert again["committed"] == 290 and again["deduplicated"] == 10
    assert "LOST COMMIT" in again["stderr"] and str(lost.snapshot_id) in again["stderr"]
    assert lost.metadata_location in again["stderr"]
    assert keys(b) == Counter(f"a{i}" for i in range(300)) + Counter(f"b{i}" for i in range(100))

    for cfg in (a, b):  # a later look finds every commit in the served table: verified, pinned, nothing held
        flush(cfg)
        assert spooled_rows(cfg) == 0
        served = str(load_config(cfg).spool_root / "app.events" / ".table-uuid")
        assert Path(served).read_text() == str(_served_uuid(cfg))
    assert sum(keys(a).values()) == 400


def test_a_file_split_across_commits_that_straddle_the_late_create_is_committed_again(tmp_path: Path) -> None:
    """Chunks of one flush file land in two tables: the file is held with both commits, and re-queued."""
    a = host(tmp_path, "a", late="after-commit", chunk_rows=100)
    for i in range(0, 350, 10):  # one flush file of 35 lines, four commits: the first one's table gets replaced
        append(a, rows("a", 10, i))
    assert flush(a)["committed"] == 350
    assert sum(keys(a).values()) == 250  # the first chunk's 100 rows went with the replaced table
    (rec,) = records(a)
    assert len(rec.commits) == 4 and len({c.table_uuid for c in rec.commits}) == 2
    again = flush(a)
    assert (again["committed"], again["deduplicated"]) == (100, 250)
    assert keys(a) == Counter(f"a{i}" for i in range(350))
    flush(a)
    assert spooled_rows(a) == 0


def test_a_create_answered_with_a_table_the_catalog_no_longer_serves_is_adopted_not_refused(tmp_path: Path) -> None:
    """B's create lands right after A's: A adopts the served table instead of failing for good."""
    a = host(tmp_path, "a", late="after-create")
    append(a, rows("a", 50))
    assert flush(a)["committed"] == 50  # (trusting its create response, A would refuse the "replaced" table)
    assert keys(a) == Counter(f"a{i}" for i in range(50))
    flush(a)
    assert spooled_rows(a) == 0
    assert (load_config(a).spool_root / "app.events" / ".table-uuid").read_text() == str(_served_uuid(a))


def test_a_backfill_into_a_table_not_verified_yet_loses_no_row(tmp_path: Path) -> None:
    """Backfill commits straight to the table: its copy of the rows waits in the spool until verified."""
    a = host(tmp_path, "a", late="after-commit", chunk_rows=100)
    src = tmp_path / "history.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows("h", 250)))
    proc = spoold(a, "backfill", "app.events", "--source", str(src), "--all", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["written"] == 250
    assert sum(keys(a).values()) == 150  # the first chunk's commit went with the replaced table
    assert spooled_rows(a) == 250  # a copy of every row committed to the unverified table

    again = flush(a)  # the first chunk's copy goes back into the queue; the other copies are verified
    assert (again["committed"], again["deduplicated"]) == (100, 0) and "LOST COMMIT" in again["stderr"]
    assert keys(a) == Counter(f"h{i}" for i in range(250))
    flush(a)
    assert spooled_rows(a) == 0


def test_a_daemon_looks_at_what_it_holds_by_itself_and_commits_a_lost_commit_again(tmp_path: Path) -> None:
    """No flush of its own comes after: the daemon still looks once the held rows are due (bounded latency)."""
    a = host(tmp_path, "a", late="after-commit", verify_after_s=1,
             extra="debounce_s = 0.2\nmax_delay_s = 2\n\n[daemon]\nrescan_s = 1\n")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = zygote.popen([sys.executable, "-m", "spoold", "run", "--config", str(a)], stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        append(a, rows("a", 40))  # committed once, then the late create replaces the table
        deadline = time.monotonic() + 180
        while not (spooled_rows(a) == 0 and keys(a) == Counter(f"a{i}" for i in range(40))):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    text = log.read_text()
    assert "LOST COMMIT" in text and "verified" in text


def test_held_rows_wait_for_their_look_and_a_catalog_that_cannot_answer_postpones_it(tmp_path: Path) -> None:
    a = host(tmp_path, "a", verify_after_s=600)
    append(a, rows("a", 20))
    assert flush(a)["committed"] == 20
    config, table = load_config(a), "app.events"
    spool = Spool.from_config(config)
    (held_at,) = [r.held_at for r in records(a)]
    assert recheck(config, spool, Sink(config), table) == 0 and spooled_rows(a) == 20  # not due: untouched

    broken = load_config(write_config(tmp_path / "broken", TABLE, catalog=(
        f'[catalog]\npy-catalog-impl = "support.latecreate.LateCreateCatalog"\nuri = "sqlite:////nonexistent/c.db"\n'
        f'warehouse = "file://{tmp_path}/w"\n\n'), spool=str(config.spool_root)))
    later = held_at + 601
    assert recheck(broken, spool, Sink(broken), table, now=later) == 0  # due, but the catalog cannot answer
    assert spooled_rows(a) == 20 and [r.due for r in records(a)] == [later + 60]  # postponed, nothing deleted
    assert recheck(config, spool, Sink(config), table, now=later + 1) == 0 and spooled_rows(a) == 20
    assert recheck(config, spool, Sink(config), table, now=later + 600) == 0  # verified: released, pinned
    assert spooled_rows(a) == 0 and not records(a)
    assert (config.spool_root / table / ".table-uuid").read_text() == _served_uuid(a)
    assert keys(a) == Counter(f"a{i}" for i in range(20))


def test_a_sql_catalog_verifies_the_first_commit_at_once_and_holds_nothing(tmp_path: Path) -> None:
    """pyiceberg's SQL catalog creates exclusively: no late create exists, so nothing waits."""
    cfg = write_config(tmp_path, TABLE + "[flush]\nverify_after_s = 3600\n")
    append(cfg, rows("s", 30))
    proc = run_spoold("flush", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr.decode()
    assert spooled_rows(cfg) == 0 and not (load_config(cfg).spool_root / "app.events" / HELD).exists()
    assert (load_config(cfg).spool_root / "app.events" / ".table-uuid").read_text() == str(_served_uuid(cfg))


def _served_uuid(cfg: Path) -> str:
    config = load_config(cfg)
    tbl = Sink(config).tables.catalog().load_table("app.events")
    return str(tbl.metadata.table_uuid)

"""Operating spoold (issue 10): /metrics and /health over HTTP, a bounded spool that pushes back, a full disk.

The real daemon (``python -m spoold run``) and the real CLI against a temp
spool and a real SQLite catalog. Every wait polls until a generous deadline.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli import run_spoold
from support.daemonproc import DaemonProc, http_get, wait_for
from support.tables import committed_keys, spooled_keys

from spoold.config import load_config
from spoold.envelope import encode
from spoold.spool.spool import Spool

T = "ops.events"


def write_cfg(tmp_path: Path, *, spool: str = "", flush: str = "debounce_s = 0.3\nmax_delay_s = 2.0\n",
              listen: bool = True, sources: str = "",
              root: Path | None = None) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    text = (f'[spool]\nroot = "{root or state / "spool"}"\n{spool}\n'
            f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\nwarehouse = "file://{state / "wh"}"\n'
            f"[flush]\nretry_max_s = 1\n{flush}\n"
            + ('[daemon]\nlisten = "127.0.0.1:0"\n' if listen else "")
            + f'[tables."{T}"]\n[tables."{T}".columns]\npart_id = "string!"\nn = "long"\ntext = "string"\n'
            + sources)
    cfg = tmp_path / "spoold.toml"
    cfg.write_text(text)
    return cfg


def daemon_state(cfg: Path) -> dict[str, Any]:
    try:
        return orjson.loads((load_config(cfg).spool_root / ".daemon.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def listener(cfg: Path) -> str:
    return wait_for(lambda: daemon_state(cfg).get("listen"), "the listener's address in .daemon.json")


def scrape(base: str) -> dict[tuple[str, str], float]:
    """``{(sample name, table label): value}`` of the table-labelled samples, read over HTTP."""
    code, body = http_get(base, "/metrics")
    assert code == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if "table" in s.labels and set(s.labels) <= {"table", "result"}:
                name = s.name + (f"{{{s.labels['result']}}}" if "result" in s.labels else "")
                out[(name, s.labels["table"])] = s.value
    return out


def metric(base: str, name: str) -> float:
    return scrape(base).get((name, T), -1.0)


def health(base: str) -> tuple[int, dict[str, Any]]:
    code, body = http_get(base, "/health")
    return code, orjson.loads(body)


def cli_append(cfg: Path, rows: list[dict[str, Any]]) -> subprocess.CompletedProcess[bytes]:
    return run_spoold("append", T, "-", "--config", str(cfg), input=b"".join(orjson.dumps(r) + b"\n" for r in rows))


def committed(cfg: Path) -> list[str]:
    return committed_keys(cfg, T)


def pending_bytes(cfg: Path) -> bytes:
    spool = Spool.from_config(load_config(cfg))
    return b"".join(p.read_bytes() for p in spool.pending(T))


@contextmanager
def catalog_down(tmp_path: Path) -> Iterator[None]:
    """The SQLite catalog cannot be opened at all until the block ends (its file is a directory)."""
    db = tmp_path / "state" / "catalog.db"
    away = tmp_path / "catalog.db.away"
    shutil.move(db, away)
    db.mkdir()
    try:
        yield
    finally:
        db.rmdir()
        shutil.move(away, db)


def rows(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}{i}", "n": i, "text": "spool " * 20} for i in range(start, start + n)]


# --- 10.1: /metrics and /health over HTTP --------------------------------------------------------------------


@pytest.mark.slow  # an outage past max_delay_s and back
def test_metrics_count_what_was_appended_and_health_follows_an_outage(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_cfg(tmp_path)
    d = daemons(cfg)
    base = listener(cfg)
    assert cli_append(cfg, rows("k", 5)).returncode == 0
    wait_for(lambda: metric(base, "spoold_rows_committed_total") == 5, "5 rows counted as committed")
    assert health(base) == (200, {"ok": True, "status": "running", "reason": "ok"})

    # Two repeats and one new row; a line no envelope rule accepts and a row of the wrong type.
    assert cli_append(cfg, [*rows("k", 2), *rows("k", 1, 5)]).returncode == 0
    spool = Spool.from_config(load_config(cfg))
    spool.append_lines(T, [b'{"version": 2}\n', encode(["part_id", "n"], [["bad", "not a long"]])])
    wait_for(lambda: metric(base, "spoold_rows_quarantined_total") == 2, "2 quarantined")
    got = scrape(base)
    assert got[("spoold_rows_committed_total", T)] == 6
    assert got[("spoold_rows_deduplicated_total", T)] == 2
    assert got[("spoold_rows_quarantined_total", T)] == 2
    assert got[("spoold_flushes_total{ok}", T)] >= 2 and got[("spoold_flushes_total{error}", T)] == 0
    assert got[("spoold_flush_duration_seconds_count", T)] == got[("spoold_flushes_total{ok}", T)]
    assert got[("spoold_commit_conflicts_total", T)] == 0
    assert sorted(committed(cfg)) == [f"k{i}" for i in range(6)]

    with catalog_down(tmp_path):
        assert cli_append(cfg, rows("o", 10)).returncode == 0
        first = wait_for(lambda: (v := metric(base, "spoold_spool_pending_rows")) > 0 and v, "pending rows seen")
        assert cli_append(cfg, rows("o", 30, 10)).returncode == 0
        wait_for(lambda: metric(base, "spoold_spool_pending_rows") > first, "pending rows rising")
        assert metric(base, "spoold_spool_pending_bytes") > 0
        code, doc = wait_for(lambda: (h := health(base))[0] == 503 and h, "503 after max_delay_s of failures")
        assert doc["ok"] is False and T in doc["reason"] and "failing to commit" in doc["reason"]
        got = scrape(base)
        assert got[("spoold_flushes_total{error}", T)] >= 1 and got[("spoold_flush_failures", T)] >= 1
        assert got[("spoold_oldest_pending_seconds", T)] > 2.0
        assert d.proc.poll() is None
    wait_for(lambda: health(base)[0] == 200, "200 after the catalog is back")
    wait_for(lambda: metric(base, "spoold_rows_committed_total") == 46, "the outage's 40 rows counted")
    wait_for(lambda: metric(base, "spoold_spool_pending_rows") == 0, "nothing pending")
    assert sorted(committed(cfg)) == sorted([f"k{i}" for i in range(6)] + [f"o{i}" for i in range(40)])
    assert d.stop() == 0


def test_health_is_503_while_draining(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = write_cfg(tmp_path, flush="debounce_s = 300\nmax_delay_s = 600\n")
    assert cli_append(cfg, rows("seed", 1)).returncode == 0
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0  # the table exists
    d = daemons(cfg)
    base = listener(cfg)
    wait_for(lambda: health(base)[0] == 200, "running")
    assert cli_append(cfg, rows("p", 2)).returncode == 0
    db = sqlite3.connect(tmp_path / "state" / "catalog.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # the shutdown flush now waits on the catalog
    try:
        d.signal(signal.SIGTERM)
        code, doc = wait_for(lambda: (h := health(base))[0] == 503 and h, "503 while draining")
        assert doc["status"] == "draining"
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert d.wait() == 0


def test_a_listen_address_that_cannot_be_served_stops_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_cfg(tmp_path, listen=False)
        cfg.write_text(cfg.read_text() + f'[daemon]\nlisten = "127.0.0.1:{port}"\n')
        out = run_spoold("run", "--config", str(cfg))
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines()[-1].startswith(
        f"spoold: error: daemon.listen = '127.0.0.1:{port}': cannot listen there")
    cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{port}", "127.0.0.1"))
    out = run_spoold("run", "--config", str(cfg))
    assert out.returncode == 2 and b"daemon.listen: expected HOST:PORT" in out.stderr


# --- 10.2: a full spool pushes back, loses nothing --------------------------------------------------------------


@pytest.mark.slow  # fills a spool through ~40 CLI appends, then drains it
def test_a_full_spool_refuses_appends_whole_and_loses_nothing(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    limit = 40_000
    src = tmp_path / "src"
    src.mkdir()
    source = src / "events.jsonl"
    source.write_bytes(b"")
    sources = f'[[sources]]\ntable = "{T}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n'
    cfg = write_cfg(tmp_path, spool=f"max_bytes = {limit}", sources=sources)
    source_keys: list[str] = []

    def grow(n: int) -> None:
        more = rows(f"s{len(source_keys)}-", n)
        with open(source, "ab") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in more))
        source_keys.extend(r["part_id"] for r in more)

    d = daemons(cfg)
    messages = d.notify.messages  # every datagram on its NOTIFY_SOCKET
    base = listener(cfg)
    assert cli_append(cfg, rows("first", 1)).returncode == 0
    wait_for(lambda: committed(cfg) == ["first0"], "the table exists")

    with catalog_down(tmp_path):
        acknowledged: list[str] = ["first0"]
        refused: list[dict[str, Any]] = []
        for i in range(100):
            batch = rows(f"a{i}-", 20)
            out = cli_append(cfg, batch)
            if out.returncode != 0:
                refused = batch
                break
            acknowledged += [r["part_id"] for r in batch]
            grow(3)  # the tailed source grows too, while there is room
        assert refused, "the spool never filled"
        err = out.stderr.decode()
        assert out.returncode == 1 and err.startswith("spoold: error: spool full:"), err
        assert T in err and f"max_bytes = {limit}" in err and len(err.strip().splitlines()) == 1
        spooled = pending_bytes(cfg)
        assert len(spooled) <= limit
        assert not any(r["part_id"].encode() in spooled for r in refused)  # nothing of it was appended

        grow(80)  # the source keeps growing while the spool is full: the tailer must wait, not drop
        wait_for(lambda: T in daemon_state(cfg).get("spool_full", []), "the daemon sees the spool full")
        st = orjson.loads(run_spoold("status", "--json", "--config", str(cfg)).stdout)
        assert st["tables"][T]["spool_full"] is True
        assert sum(s["lag_bytes"] for s in st["sources"]) > 0  # the source file keeps the rows
        assert metric(base, "spoold_spool_full") == 1
        wait_for(lambda: any(f"spool full: {T}" in m for _, m in messages), "STATUS line says spool full")
        assert cli_append(cfg, refused).returncode == 1  # still full: still refused whole
        assert d.proc.poll() is None

    everything = set(acknowledged) | set(source_keys)
    wait_for(lambda: everything <= set(committed(cfg)), "every acknowledged and source row committed")
    assert cli_append(cfg, refused).returncode == 0  # appends work again
    everything |= {r["part_id"] for r in refused}
    wait_for(lambda: everything <= set(committed(cfg)), "the once refused rows committed")
    got = committed(cfg)
    assert len(got) == len(set(got)) == len(everything)  # exactly once each
    wait_for(lambda: T not in daemon_state(cfg).get("spool_full", ["?"]), "no longer full")
    assert metric(base, "spoold_spool_full") == 0
    assert d.stop() == 0


# --- 10.3: a disk that is really full --------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (we run as root); skipped where mounting is impossible, except in CI."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        why = f"cannot mount a small tmpfs here ({(out.stderr or out.stdout).strip()})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: CI must test a real ENOSPC (run as root, with CAP_SYS_ADMIN)")
        pytest.skip(f"{why}; tests/spool/test_bounds.py injects ENOSPC at the write instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt: Path, leave: int = 0) -> Path:
    """Fill ``mnt`` up to its last byte, then give back ``leave`` bytes; the filler file is returned."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"\0" * 65536
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def test_enospc_during_append_refuses_it_whole(tmp_path: Path, small_fs: Path) -> None:
    cfg = write_cfg(tmp_path, spool="min_free_bytes = 0", listen=False, root=small_fs / "spool")
    assert cli_append(cfg, rows("a", 10)).returncode == 0
    filler = fill(small_fs, leave=8192)
    before = pending_bytes(cfg)
    out = cli_append(cfg, rows("big", 400))  # ~60 KB: part of it would fit
    err = out.stderr.decode()
    assert out.returncode == 1 and "spool full: no space left" in err and T in err, err
    assert pending_bytes(cfg) == before  # not one line of it
    assert cli_append(cfg, rows("small", 1)).returncode == 0  # what fits goes in
    before = pending_bytes(cfg)
    out = cli_append(cfg, rows("huge", 40_000))  # ~6 MB: staged in a temp file, to be renamed as a flush file
    assert out.returncode == 1 and b"spool full: no space left" in out.stderr, out.stderr
    assert pending_bytes(cfg) == before
    filler.unlink()
    assert cli_append(cfg, rows("big", 400)).returncode == 0
    assert spooled_keys(cfg, T) == [f"a{i}" for i in range(10)] + ["small0"] + [f"big{i}" for i in range(400)]
    table_dir = small_fs / "spool" / T
    assert not [p.name for p in table_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # a 3 s debounce to fill the disk before the rotation
def test_the_daemon_survives_enospc_in_append_and_rotation_and_loses_nothing(
    tmp_path: Path, small_fs: Path, daemons: Callable[..., DaemonProc]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    source = src / "events.jsonl"
    source.write_bytes(b"")
    sources = f'[[sources]]\ntable = "{T}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n'
    cfg = write_cfg(tmp_path, spool="min_free_bytes = 0", flush="debounce_s = 3\nmax_delay_s = 5\n",
                    root=small_fs / "spool", sources=sources)
    d = daemons(cfg)
    assert cli_append(cfg, rows("first", 1)).returncode == 0
    wait_for(lambda: committed(cfg) == ["first0"], "the table exists")

    assert cli_append(cfg, rows("a", 20)).returncode == 0  # acknowledged: on disk
    filler = fill(small_fs)  # the disk is full before the daemon rotates them (debounce 3 s)
    wait_for(lambda: "flush failed" in d.log(), "a flush (its rotation) failing on the full disk")
    assert "No space left on device" in d.log()
    out = cli_append(cfg, rows("b", 100))  # more than the slack in active.jsonl's last page
    assert out.returncode == 1 and b"spool full: no space left" in out.stderr
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows("s", 30)))  # the tailer meets ENOSPC too
    wait_for(lambda: "waiting for room" in d.log(), "the tailer waiting for room")
    assert d.proc.poll() is None
    assert not list(small_fs.glob("spool/**/.*.tmp"))  # no temp file of a failed write is left behind

    filler.unlink()
    want = {"first0", *(f"a{i}" for i in range(20)), *(f"s{i}" for i in range(30))}
    wait_for(lambda: want <= set(committed(cfg)), "everything committed once there is room")
    assert cli_append(cfg, rows("b", 100)).returncode == 0
    want |= {f"b{i}" for i in range(100)}
    wait_for(lambda: want <= set(committed(cfg)), "appends work again")
    got = committed(cfg)
    assert len(got) == len(set(got)) == len(want)
    assert not (small_fs / "spool" / T / "quarantine").exists()  # nothing was torn
    assert d.stop() == 0

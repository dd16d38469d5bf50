"""The spool when the disk says no, and when files vanish under a reader (issue 15).

- A write that fails for real (the process's file size limit: EFBIG, what
  injected errors in test_bounds.py stand for) makes ``spoold append`` exit 1
  with one line, and leaves the spool as it was: a small append is cut back,
  a large (staged) one leaves no stage file; every acknowledged row is
  committed once.
- A spool file that a flush removes or rotates while backfill's spool scan or
  the daemon's pending probe is walking the listing is skipped, and the rows
  it held are still found where they went.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.tables import read_table

from spoold.backfill.seen import spooled_keys
from spoold.config import TableSpec, load_config
from spoold.daemon.pending import Pending
from spoold.envelope import Validator
from spoold.spool.spool import STAGE_BYTES, Spool

TABLE = "app.events"


def rows(prefix: str, n: int, pad: int = 0) -> bytes:
    return b"".join(orjson.dumps({"part_id": f"{prefix}{i}", "pad": "x" * pad}) + b"\n" for i in range(n))


def append_limited(cfg: Path, data: bytes, limit: int) -> subprocess.CompletedProcess[bytes]:
    """``spoold append`` in a process that may write files of at most ``limit`` bytes (writes past it fail)."""
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "spoold", "append", TABLE, "--config", str(cfg)], input=data,
                          capture_output=True, preexec_fn=limit_writes, timeout=120)


def test_a_failing_write_acknowledges_nothing_and_costs_no_acknowledged_row(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert run_spoold("append", TABLE, "--config", str(cfg), input=rows("ok", 10)).returncode == 0
    table_dir = load_config(cfg).spool_root / TABLE
    active = table_dir / "active.jsonl"

    # A small append: its envelope line is cut short by the limit, and the append is cut back.
    size = active.stat().st_size
    proc = append_limited(cfg, rows("lost", 50), size + 40)
    assert proc.returncode == 1, proc.stderr
    # (a coverage run of the suite adds its own warning: it cannot write its data file either)
    (err,) = [ln for ln in proc.stderr.decode().splitlines() if "coverage" not in ln.lower()]
    assert err.startswith("spoold: error: ") and "File too large" in err
    assert active.stat().st_size == size
    # A large append (staged in a temp file, published by rename): the stage goes, nothing else changes.
    proc = append_limited(cfg, rows("big", 2000, pad=3000), 1 << 20)
    assert 2000 * 3000 > STAGE_BYTES and proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in table_dir.iterdir() if not p.name.startswith(".")) == ["active.jsonl"]
    assert not list(table_dir.glob(".stage-*")) and active.stat().st_size == size

    # The disk is fine again: appends land whole, and only the acknowledged rows are committed.
    assert run_spoold("append", TABLE, "--config", str(cfg), input=rows("ok2-", 10)).returncode == 0
    out = run_spoold("flush", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tables"][TABLE] == {"committed": 20, "deduplicated": 0, "quarantined": 0}
    keys = read_table(cfg, TABLE).column("part_id").to_pylist()
    assert sorted(keys) == sorted([*(f"ok{i}" for i in range(10)), *(f"ok2-{i}" for i in range(10))])
    assert not (table_dir / "quarantine").exists()  # no torn line to set aside


def _three_pending(tmp_path: Path) -> tuple[Spool, TableSpec]:
    """Two rotated flush files and an active one, three rows each."""
    config = load_config(write_config(tmp_path))
    spool = Spool.from_config(config)
    for name in ("f1", "f2"):
        spool.append(TABLE, [{"part_id": f"{name}-{i}"} for i in range(3)])
        spool.rotate(TABLE)
    spool.append(TABLE, [{"part_id": f"act-{i}"} for i in range(3)])  # still in active.jsonl
    return spool, config.table(TABLE)


def test_backfills_spool_scan_skips_files_that_vanish_and_follows_rotated_rows(tmp_path: Path) -> None:
    spool, spec = _three_pending(tmp_path)
    scan = spooled_keys(spool, spec, Validator(spec))
    first_path, first_keys = next(scan)
    assert first_keys == ["f1-0", "f1-1", "f1-2"]
    # Meanwhile a flush commits and removes the second file, and rotates active.jsonl.
    second = spool.flush_files(TABLE)[1]
    second.unlink()
    rotated = spool.rotate(TABLE)
    assert rotated is not None
    rest = list(scan)
    assert [p.name for p, _ in rest] == [rotated.name]  # the vanished ones skipped, the new one read
    assert rest[0][1] == ["act-0", "act-1", "act-2"]  # rows moved by rotation are still seen as spooled


def test_the_daemons_pending_probe_skips_a_file_removed_after_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, _ = _three_pending(tmp_path)
    probe = Pending(spool)
    first, n = probe.probe(TABLE)
    assert first is not None and n > 0
    real = spool.pending

    def listing_then_a_flush_removes_the_first(table: str) -> list[Path]:
        files = real(table)
        files[0].unlink()  # between the listing and the stat
        return files

    monkeypatch.setattr(spool, "pending", listing_then_a_flush_removes_the_first)
    first2, n2 = probe.probe(TABLE)
    assert first2 is not None and 0 < n2 < n  # the two files left count, the vanished one does not

"""Quarantine is bounded: a per-table budget, huge lines kept truncated, free space kept, a retention period.

Through the real CLI (``spoold flush``, ``spoold quarantine --json``) and the real daemon, against a
temp spool and a real SQLite catalog.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for

from spoold.config import load_config
from spoold.envelope import encode
from spoold.errors import SpoolFull
from spoold.spool.spool import Spool

T = "junk.q"
MB = 1 << 20
BUDGET = 2 * MB
TALLY_MAX = 256 << 10  # the small constant past the budget: the tally of what was counted, not kept
RAW_HEAD_BYTES = 4 << 10  # what a truncated line keeps


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _config(tmp_path: Path, spool: str) -> Path:
    state = tmp_path / "state"
    cfg = write_config(tmp_path, f'[tables."{T}".columns]\npart_id = "string!"\nn = "long"\n')
    cfg.write_text(cfg.read_text().replace(f'root = "{state / "spool"}"\n', f'root = "{state / "spool"}"\n{spool}\n'))
    return cfg


def _qdir(cfg: Path) -> Path:
    return load_config(cfg).spool_root / T / "quarantine"


def _disk_bytes(d: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in d.iterdir()) if d.is_dir() else 0


def _junk(rng: random.Random, total: int) -> tuple[list[bytes], int]:
    """Lines of junk adding up to about ``total`` bytes, and how many quarantine records they make.

    A third of it lines that are not JSON (not even UTF-8), a third envelopes whose every row is bad
    (each row one record), a third very long lines (a MiB each, not JSON).
    """
    lines: list[bytes] = []
    records = size = 0
    while size < total:
        noise = bytes(rng.randrange(256) for _ in range(64)).replace(b"\n", b"") * 3
        lines.append(noise + b"\n")
        records += 1
        bad = encode(["part_id", "n"], [[f"k{len(lines)}-{i}", "not a long"] for i in range(100)])
        lines.append(bad)
        records += 100
        size += len(noise) + len(bad)
        if len(lines) % 400 == 0:
            lines.append(b"x" * MB + b"\n")
            records += 1
            size += MB
    return lines, records


@pytest.mark.slow  # 20 MB of junk through several flushes
def test_a_flood_of_junk_stays_within_the_quarantine_budget(tmp_path: Path, rng: random.Random) -> None:
    """20 MB of junk (not 100 MB: the property is the same, past a budget of 2 MB and a spool bound of
    6 MB every byte more only repeats what is already shown, and the shared test machine is small)
    goes through flushes; quarantine on disk stays within its budget plus the tally, and still counts
    every record. Without a budget, quarantine grows to several times its input (the issue measured 6x)."""
    cfg = _config(tmp_path, f"quarantine_max_bytes = {BUDGET}\nmax_bytes = {6 * MB}\n")
    spool = Spool.from_config(load_config(cfg))
    lines, records = _junk(rng, 20 * MB)
    i = flushes = 0
    while i < len(lines):
        try:
            spool.append_lines(T, lines[i : i + 50])
            i += 50
        except SpoolFull:  # max_bytes: flush to make room, as the daemon would
            ok(run_spoold("flush", T, "--config", str(cfg)))
            flushes += 1
    out = json.loads(ok(run_spoold("flush", T, "--json", "--config", str(cfg))).stdout)
    assert flushes >= 3 and out["tables"][T]["committed"] == 0
    on_disk = _disk_bytes(_qdir(cfg))
    assert on_disk <= BUDGET + TALLY_MAX + 64 * 1024, on_disk  # + a few partly filled blocks
    doc = json.loads(ok(run_spoold("quarantine", T, "--json", "--config", str(cfg))).stdout)["tables"][T]
    assert doc["records"] == records
    assert sum(doc["reasons"].values()) == records
    assert doc["not_kept"] > 0
    assert doc["reasons"]["column 'n': cannot cast a value to long"] >= records * 0.9
    status = json.loads(ok(run_spoold("status", T, "--json", "--config", str(cfg))).stdout)
    assert status["tables"][T]["quarantined"] == records


def test_a_huge_line_is_kept_truncated_and_a_normal_one_whole(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "")
    spool = Spool.from_config(load_config(cfg))
    huge = b'{"version": 1, "columns": ["part_id"], "rows": [["' + b"\xff" * (3 * MB) + b'"]]}\n'
    normal = encode(["part_id", "n"], [["k1", "x" * 30_000]])
    spool.append_lines(T, [huge, normal])
    ok(run_spoold("flush", T, "--config", str(cfg)))
    recs = [json.loads(line) for p in sorted(_qdir(cfg).glob("*.jsonl")) for line in p.read_bytes().splitlines()]
    by_kind = {r["kind"]: r for r in recs}
    line, row = by_kind["line"], by_kind["row"]
    assert line["truncated"] is True and line["raw_bytes"] == len(huge) - 1
    assert line["raw_sha256"] == hashlib.sha256(huge[:-1]).hexdigest()
    assert "raw" not in line and "raw_b64" not in line
    assert line["raw_head"].startswith('{"version": 1') and len(line["raw_head_b64"]) < RAW_HEAD_BYTES * 2
    assert row["row"] == ["k1", "x" * 30_000] and "truncated" not in row  # a normal row stays replayable
    assert _disk_bytes(_qdir(cfg)) < 200 * 1024
    # the truncated record cannot be replayed; it stays, with its reason
    out = json.loads(ok(run_spoold("quarantine", "replay", T, "--json", "--config", str(cfg))).stdout)
    assert out["replayed"] == 0 and out["kept"] == 2


def test_quarantine_counts_against_min_free_bytes(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "min_free_bytes = 0\n")
    spool = Spool.from_config(load_config(cfg))
    spool.append_lines(T, [encode(["part_id", "n"], [[f"k{i}", "bad"] for i in range(200)]) for _ in range(50)])
    # Now keep all but 64 KiB of what is free: the quarantine may not eat into it.
    fs = os.statvfs(cfg.parent)
    _config(tmp_path, f"min_free_bytes = {fs.f_bavail * fs.f_frsize - 64 * 1024}\n")
    ok(run_spoold("flush", T, "--config", str(cfg)))
    doc = json.loads(ok(run_spoold("quarantine", T, "--json", "--config", str(cfg))).stdout)["tables"][T]
    assert doc["records"] == 10_000 and doc["not_kept"] > 5_000
    kept = sum(p.stat().st_size for p in _qdir(cfg).glob("*.jsonl"))
    assert kept <= 64 * 1024 + 4096  # what free space allowed (others may write meanwhile: never more)


def test_the_daemon_removes_quarantine_past_its_retention(tmp_path: Path, daemons: Any) -> None:
    cfg = _config(tmp_path, "quarantine_retention_s = 3600\n")
    spool = Spool.from_config(load_config(cfg))
    spool.append_lines(T, [encode(["part_id", "n"], [["old", "bad"]])])
    ok(run_spoold("flush", T, "--config", str(cfg)))
    old = list(_qdir(cfg).glob("*.jsonl"))
    assert len(old) == 1
    os.utime(old[0], (time.time() - 7200, time.time() - 7200))
    spool.append_lines(T, [encode(["part_id", "n"], [["new", "bad"]])])
    ok(run_spoold("flush", T, "--config", str(cfg)))
    d: DaemonProc = daemons(cfg)
    wait_for(lambda: not old[0].exists(), "the old quarantine file removed")
    wait_for(lambda: "removed 1 quarantine file(s), 1 record(s)" in d.log(), "the retention log line")
    doc = json.loads(ok(run_spoold("quarantine", T, "--json", "--config", str(cfg))).stdout)["tables"][T]
    assert doc["records"] == 1  # the new one stays
    assert d.stop() == 0


@pytest.mark.slow  # 100 MB of junk tailed through the daemon
def test_a_100_mb_junk_source_tailed_by_the_daemon_stays_within_the_quarantine_budget(tmp_path: Path) -> None:
    """The issue's case as it stands: a 100 MB junk source, `[spool] max_bytes` set. Half its lines are not
    JSON (quarantined by the tailer), half rows whose value does not fit the declared type (quarantined by
    flush); the spool's bound throttles the tailer, which resumes after each flush. Quarantine on disk stays
    within its budget plus the tally, every record is counted, and the source is read to its end."""
    src = tmp_path / "src"
    src.mkdir()
    cfg = _config(tmp_path, f"quarantine_max_bytes = {BUDGET}\nmax_bytes = {8 * MB}\n")
    cfg.write_text(cfg.read_text() + "\n[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\n"
                   f'\n[[sources]]\ntable = "{T}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n')
    not_json = b"{not json at all: " + b"z" * 180 + b"\n"
    bad_row = b'{"part_id": "k%d", "n": "not a long", "pad": "' + b"p" * 150 + b'"}\n'
    lines, size = 0, 0
    with open(src / "junk.jsonl", "wb") as f:
        while size < 100 * MB:
            chunk = b"".join(not_json + bad_row % (lines + i) for i in range(0, 2000, 2))
            f.write(chunk)
            lines, size = lines + 2000, size + len(chunk)
    d = DaemonProc(cfg)
    try:
        def drained() -> bool:
            doc = json.loads(ok(run_spoold("quarantine", T, "--json", "--config", str(cfg))).stdout)
            return doc["tables"].get(T, {}).get("records", 0) == lines
        wait_for(drained, "every junk line quarantined", timeout=900, every=2.0)
    finally:
        assert d.stop() == 0, d.log()
    on_disk = _disk_bytes(_qdir(cfg))
    assert on_disk <= BUDGET + TALLY_MAX + 64 * 1024, on_disk
    status = json.loads(ok(run_spoold("status", T, "--json", "--config", str(cfg))).stdout)["tables"][T]
    assert status["quarantined"] == lines and status["spooled_rows"] == 0

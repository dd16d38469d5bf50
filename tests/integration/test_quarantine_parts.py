"""Quarantine of a flush file with very many rejects (issue 15): parts of 10,000 records or 64 MB.

A part is named by its flush file and the line its first record came from, so
a flush that dies and is retried (with other chunking, even) rewrites the same
parts instead of adding copies.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import write_config
from support.fakesink import FakeSink, raises

import spoold.flush.flush
from spoold.config import Config, load_config
from spoold.errors import CatalogError
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.spool import Spool, flush_name

TABLE = "app.events"
EVENTS = '[tables."app.events"]\n[tables."app.events".columns]\npart_id = "string!"\n'


def setup(tmp_path: Path, chunk_rows: int) -> tuple[Config, Spool]:
    config = load_config(write_config(tmp_path, EVENTS + f"\n[flush]\nchunk_rows = {chunk_rows}\n"))
    return config, Spool.from_config(config)


def good(prefix: str, n: int) -> list[bytes]:
    return [orjson.dumps({"version": 1, "columns": ["part_id"], "rows": [[f"{prefix}{i}"]]}) + b"\n"
            for i in range(n)]


def parts(spool: Spool) -> dict[str, list[dict[str, Any]]]:
    qdir = spool.table_dir(TABLE) / "quarantine"
    return {p.stem: [orjson.loads(line) for line in p.read_bytes().splitlines()] for p in sorted(qdir.glob("*.jsonl"))}


def test_ten_thousand_rejects_a_part_and_a_retried_flush_rewrites_the_same_parts(tmp_path: Path) -> None:
    config, spool = setup(tmp_path, chunk_rows=5)
    bad = [b"not json %d\n" % i for i in range(25_000)]
    # Good rows between the bad lines: with chunk_rows = 5 the first commit comes after part 1 is out.
    spool.append_lines(TABLE, bad[:12_000] + good("g", 10) + bad[12_000:] + good("h", 10))
    spool.rotate(TABLE)
    stem = flush_name(1).removesuffix(".jsonl")

    with pytest.raises(CatalogError):
        # the catalog goes away at the first commit (after some parts were published)
        flush_table(config, spool, FakeSink(Sink(config), commit=raises(CatalogError("catalog went away"))), TABLE)
    first_try = parts(spool)
    assert f"{stem}-0000000001" in first_try and len(first_try[f"{stem}-0000000001"]) == 10_000

    config, _ = setup(tmp_path, chunk_rows=100_000)  # retried with other chunking
    result = flush_table(config, spool, Sink(config), TABLE)
    assert (result.committed, result.quarantined) == (20, 25_000)
    got = parts(spool)
    # Lines 1-10,000, then 10,001-20,010 less the ten good ones, then the rest: by file and first line.
    assert {name: len(recs) for name, recs in got.items()} == {
        f"{stem}-0000000001": 10_000, f"{stem}-0000010001": 10_000, f"{stem}-0000020011": 5_000}
    where = Counter((r["file"], r["line"]) for recs in got.values() for r in recs)
    assert len(where) == 25_000 and max(where.values()) == 1  # nothing quarantined twice
    assert spool.pending(TABLE) == []


def test_rejects_are_also_cut_by_their_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MB of rejected lines would make a slow test; the same rule, at 100 KB.
    monkeypatch.setattr(spoold.flush.flush, "_QUARANTINE_PART_BYTES", 100 * 1024)
    config, spool = setup(tmp_path, chunk_rows=100_000)
    spool.append_lines(TABLE, [b"x" * 1023 + b"%04d\n" % i for i in range(1_000)])  # 1,027 bytes each
    spool.rotate(TABLE)
    result = flush_table(config, spool, Sink(config), TABLE)
    assert result.quarantined == 1_000
    got = parts(spool)
    stem = flush_name(1).removesuffix(".jsonl")
    # a part closes once its lines reach 100 KB: every 100 lines (102,700 bytes)
    assert list(got) == [f"{stem}-{line:010d}" for line in range(1, 1_001, 100)]
    assert all(len(recs) == 100 for recs in got.values())

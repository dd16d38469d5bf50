"""Encoding a pass's lines: a line's fault is quarantined, the host's (memory) is not a line's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from spoold.config import SourceSpec
from spoold.sources import pack as pack_mod
from spoold.sources.pack import pack
from spoold.sources.reader import SourceLine
from spoold.sources.tail import Tailer
from spoold.spool.spool import Spool

TABLE = "t.src"


def source_lines(*keys: str) -> list[SourceLine]:
    return [SourceLine("a.jsonl", i + 1, i * 10, i * 10 + 10, [{"part_id": k}], None) for i, k in enumerate(keys)]


def failing_on(key: str, exc: BaseException) -> Any:
    real = pack_mod.envelopes

    def envelopes(rows: list[dict[str, Any]], max_line: int | None = None) -> Iterator[tuple[bytes, int]]:
        if any(r["part_id"] == key for r in rows):
            raise exc
        return real(rows, max_line)

    return envelopes


def test_a_recursion_error_is_the_line_s_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_mod, "envelopes", failing_on("deep", RecursionError("maximum recursion depth")))
    envs, bad = pack(source_lines("a", "deep", "b"))
    assert sum(n for _, n in envs) == 2
    assert [(line.lineno, "RecursionError" in why) for line, why in bad] == [(2, True)]


def test_running_out_of_memory_is_not_a_line_s_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pack_mod, "envelopes", failing_on("big", MemoryError()))
    with pytest.raises(MemoryError):
        pack(source_lines("a", "big", "b"))


def test_the_tailer_retries_a_pass_that_ran_out_of_memory_and_quarantines_nothing(
    spool: Spool, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = src / "a.jsonl"
    f.write_bytes(b"".join(orjson.dumps({"part_id": k}) + b"\n" for k in ("a", "big", "b")))
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")])
    t.discover()
    real = pack_mod.envelopes
    monkeypatch.setattr(pack_mod, "envelopes", failing_on("big", MemoryError()))
    assert t.run_pass() == {}  # the daemon goes on; the file waits for its retry
    assert not (spool.table_dir(TABLE) / "quarantine").exists()
    (follow,) = t.files.follows.values()
    assert follow.pos.offset == 0 and t._retry
    monkeypatch.setattr(pack_mod, "envelopes", real)  # memory again
    t._retry = dict.fromkeys(t._retry, 0.0)  # due now
    assert t.run_pass() == {TABLE: 3}

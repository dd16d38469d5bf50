"""Property (issue 13, acceptance 2, the source side): source lines mixing valid rows with poison never
stall the tailer or a backfill.

Random jsonl sources mix valid rows with poison: values nested deeper than
orjson writes (or reads), huge values, integers past 64 bits, lines that are
not JSON objects, and hostile column names (dots, blanks, unicode, very long,
empty). Whatever the mix, and however the file grows (cut at random bytes,
read in small passes, the tailer restarted in between), nothing raises out of
the tailer or backfill; every valid line is spooled (tailer) or written
(backfill) exactly once; every poison line is quarantined (tailer) or
quarantined or reported as failed (backfill), never both.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import write_config

from spoold.config import SourceSpec, load_config
from spoold.envelope import parse_envelope
from spoold.iceberg.sink import Sink
from spoold.sources.tail import Tailer
from spoold.spool.files import QUARANTINE, iter_lines
from spoold.spool.spool import Spool

TABLE = "src.poison"
HOSTILE = ["meta.src", "a.b.c", " ", "\t", "ünïcødé", "emoji 🚀", "x" * 300, "new\nline", "quote\"name", "_", ""]
# Kinds: "valid" lines must land; "poison" ones must be set aside; "either" land or are set aside, once.
KINDS = {"good": "valid", "huge": "valid", "deep": "poison", "too_deep": "poison", "not_json": "poison",
         "not_object": "poison", "bad_utf8": "poison", "hostile": "either", "bigint": "either"}

line_kinds = st.tuples(st.sampled_from([*KINDS, "good", "good", "good"]), st.sampled_from(HOSTILE),
                       st.integers(min_value=260, max_value=1000))


def _line(i: int, kind: str, name: str, levels: int) -> bytes:
    row: dict[str, Any] = {"part_id": f"k{i}", "line_no": i, "text": f"row {i}"}
    if kind == "huge":
        row["text"] = "h" * 1_500_000
    elif kind == "hostile":
        row[name] = f"v{i}"
    elif kind == "bigint":
        row["big"] = 2**64 - 1
    elif kind == "not_json":
        return b'{"part_id": "k%d", oops}' % i
    elif kind == "not_object":
        return b'["k%d", 1]' % i
    elif kind == "bad_utf8":
        return b'{"part_id": "k%d", "text": "\xff\xfe"}' % i
    raw = orjson.dumps(row)
    if kind in ("deep", "too_deep"):
        n = levels if kind == "deep" else 1100  # orjson reads 1,024 levels and writes ~254
        raw = raw[:-1] + b', "v": ' + b"[" * n + b"]" * n + b"}"
    return raw


def _expectation(kind: str, name: str) -> str:
    if kind == "hostile" and name == "":
        return "poison"  # no envelope carries an empty column name
    return KINDS[kind]


def _spooled_lines(spool: Spool) -> Counter[int]:
    got: Counter[int] = Counter()
    for path in spool.pending(TABLE):
        for _, raw, terminated in iter_lines(path):
            env, err = parse_envelope(raw, terminated)
            assert err is None, err
            i = env["columns"].index("line_no")
            got.update(row[i] for row in env["rows"])
    return got


def _quarantine(spool: Spool) -> list[dict[str, Any]]:
    qdir = spool.root / TABLE / QUARANTINE
    return [orjson.loads(x) for q in sorted(qdir.glob("*.jsonl")) for x in q.read_bytes().splitlines()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kinds=st.lists(line_kinds, min_size=1, max_size=20),
       cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=4),
       max_lines=st.integers(min_value=1, max_value=6), restarts=st.lists(st.booleans(), min_size=5, max_size=5))
def test_the_tailer_spools_every_valid_line_once_and_quarantines_every_poison_one(
    kinds: list[tuple[str, str, int]], cuts: list[float], max_lines: int, restarts: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, spool = Path(tmp) / "src", Spool(Path(tmp) / "spool")
        src.mkdir()
        data = b"".join(_line(i, *k) + b"\n" for i, k in enumerate(kinds))
        points = sorted({int(c * len(data)) for c in cuts} | {len(data)})
        path, at = src / "app.jsonl", 0
        path.write_bytes(b"")

        def tailer() -> Tailer:
            t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")], max_lines=max_lines)
            t.discover()
            return t

        t = tailer()
        for n, point in enumerate(points):  # the file grows in pieces cut anywhere, even mid-line
            with open(path, "ab") as f:
                f.write(data[at:point])
            at = point
            if restarts[n % len(restarts)]:
                t = tailer()
            t.on_change(str(path))
            while t.has_work():
                t.run_pass()
        spooled = _spooled_lines(spool)
        quarantined = Counter(r["line"] - 1 for r in _quarantine(spool))
        for i, (kind, name, _) in enumerate(kinds):
            placed = (spooled[i], quarantined[i])
            assert placed in ((1, 0), (0, 1)), (i, kind, placed)
            expect = _expectation(kind, name)
            if expect == "valid":
                assert placed == (1, 0), (i, kind)
            elif expect == "poison":
                assert placed == (0, 1), (i, kind)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kinds=st.lists(line_kinds, min_size=1, max_size=16), limit=st.sampled_from([None, 3, 7]))
def test_backfill_writes_every_valid_line_once_and_sets_every_poison_one_aside(
    kinds: list[tuple[str, str, int]], limit: int | None
) -> None:
    from spoold.backfill.run import backfill

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp), "[flush]\nchunk_rows = 4\n"))
        src = Path(tmp) / "history.jsonl"
        src.write_bytes(b"".join(_line(i, *k) + b"\n" for i, k in enumerate(kinds)))
        failed = 0
        for _ in range(len(kinds) + 1):  # limited runs walk the file through their cursors
            s = backfill(config, TABLE, [str(src)], "auto", limit)
            failed += s.failed
            if not s.limit_reached:
                break
        tbl = Sink(config).load(config.table(TABLE))
        written = Counter(tbl.scan(selected_fields=("part_id",)).to_arrow()["part_id"].to_pylist()) if tbl else {}
        spool = Spool.from_config(config)
        recs = _quarantine(spool)
        by_line = Counter(r["line"] - 1 for r in recs if r["line"] > 0)
        by_key = Counter(r["key"] for r in recs if r["line"] < 0)  # rows a commit refused
        for i, (kind, name, _) in enumerate(kinds):
            placed = (written.get(f"k{i}", 0), by_line[i] + by_key[f"k{i}"])
            assert placed in ((1, 0), (0, 1), (0, 0)), (i, kind, placed)
            expect = _expectation(kind, name)
            if expect == "valid":
                assert placed == (1, 0), (i, kind, placed)
            elif expect == "poison":
                assert placed[0] == 0, (i, kind)
        unplaced = sum(1 for i in range(len(kinds)) if not written.get(f"k{i}") and not by_line[i] + by_key[f"k{i}"])
        assert unplaced == failed  # every line neither written nor quarantined was reported as failed

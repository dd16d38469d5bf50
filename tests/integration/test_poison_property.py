"""Property (issue 13): spool lines mixing valid rows with poison never wedge a table.

Random envelopes (written by hand, as a producer with another JSON library
would) mix valid rows with values nested too deeply to write, values the
table's types refuse, partition values too long for a file name, huge values
and hostile column names. Whatever the mix, a flush raises nothing, every row
ends up committed or quarantined (never both, never twice), every valid row is
committed and every poison row is quarantined. `spoold append` of such input
either appends all of it or refuses it with an InputError.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import write_config

from spoold.cli.append import validated_batches
from spoold.config import load_config
from spoold.envelope import Validator, envelopes
from spoold.errors import InputError
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.files import ACTIVE
from spoold.spool.spool import Spool

TABLE = """
[tables."app.p"]
partition_by = ["identity(session_id)"]
[tables."app.p".columns]
part_id = "string!"
session_id = "string"
n = "long"
"""
DEEP = b"[" * 300 + b"]" * 300

hostile_names = st.one_of(
    st.sampled_from(["meta.src", "a.b.c", "with space", "ünïcødé", "emoji 🚀", "UPPER", "x" * 300, "tab\tname",
                     "slash/name", "quote\"name", "new\nline", "_", "0"]),
    st.text(min_size=1, max_size=40).filter(lambda s: s not in ("part_id", "session_id", "n", "text")),
)
# (kind, extra column name or None); kinds: good rows must land, poison rows must be quarantined,
# "hostile" rows (a new column with a hostile name) must end up in exactly one place.
row_kinds = st.tuples(st.sampled_from(["good", "good", "good", "deep", "partition", "type", "huge", "hostile"]),
                      hostile_names)


def _row(i: int, kind: str, name: str) -> dict[str, bytes]:
    """One row as raw JSON values per column."""
    row = {"part_id": orjson.dumps(f"k{i}"), "session_id": orjson.dumps(f"s{i % 3}"), "n": orjson.dumps(i)}
    if kind == "deep":
        row["n"] = DEEP
    elif kind == "partition":
        row["session_id"] = orjson.dumps("p" * 300)
    elif kind == "type":
        row["n"] = orjson.dumps("not a number")
    elif kind == "huge":
        row["text"] = orjson.dumps("h" * 2_000_000)
    elif kind == "hostile":
        row[name] = orjson.dumps(f"v{i}")
    return row


def _envelopes(rows: list[dict[str, bytes]], sizes: list[int]) -> bytes:
    out, at = [], 0
    for size in sizes:
        group = rows[at : at + size]
        at += size
        if not group:
            break
        cols = list(dict.fromkeys(c for r in group for c in r))
        body = b",".join(b"[" + b",".join(r.get(c, b"null") for c in cols) + b"]" for r in group)
        out.append(b'{"version":1,"columns":' + orjson.dumps(cols) + b',"rows":[' + body + b"]}\n")
    return b"".join(out)


def _quarantined_keys(qdir: Path) -> list[str]:
    keys = []
    for p in qdir.glob("*.jsonl"):
        for line in p.read_text().split("\n"):
            if not line:
                continue
            rec = json.loads(line)
            if rec.get("key"):
                keys.append(rec["key"])
            elif "columns" in rec and rec.get("row") is not None:
                keys.append(rec["row"][rec["columns"].index("part_id")])
            else:  # a whole envelope line
                env = json.loads(rec["raw"])
                keys += [r[env["columns"].index("part_id")] for r in env["rows"]]
    return keys


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kinds=st.lists(row_kinds, min_size=1, max_size=24),
       sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=24, max_size=24))
def test_poison_in_spool_envelopes_is_quarantined_and_every_valid_row_lands_once(
    kinds: list[tuple[str, str]], sizes: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), TABLE)
        config = load_config(cfg)
        spool = Spool.from_config(config)
        rows = [_row(i, kind, name) for i, (kind, name) in enumerate(kinds)]
        (spool.table_dir("app.p", create=True) / ACTIVE).write_bytes(_envelopes(rows, sizes))
        flush_table(config, spool, Sink(config), "app.p")  # must not raise
        tbl = Sink(config).load(config.table("app.p"))
        committed = [] if tbl is None else tbl.scan(selected_fields=("part_id",)).to_arrow()["part_id"].to_pylist()
        quarantined = _quarantined_keys(spool.table_dir("app.p") / "quarantine")
        every = sorted(f"k{i}" for i in range(len(kinds)))
        assert sorted(committed + quarantined) == every  # each row in exactly one place, once
        for i, (kind, _name) in enumerate(kinds):
            if kind in ("good", "huge"):
                assert f"k{i}" in committed, (kind, quarantined)
            elif kind in ("deep", "partition", "type"):
                assert f"k{i}" in quarantined, (kind, committed)
        assert not spool.flush_files("app.p")  # nothing left behind to fail again


LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["part_id", "n", "meta.src", "x"]),
                    st.one_of(st.none(), LONGS, st.text(max_size=5), st.booleans()), max_size=4),
    st.just({"part_id": "deep", "x": "DEEP"}),
), min_size=1, max_size=10))
def test_spoold_append_validation_either_takes_everything_or_names_a_line(rows: list[dict[str, Any]]) -> None:
    data = b"\n".join(orjson.dumps(r).replace(b'"DEEP"', DEEP) for r in rows) + b"\n"
    validator = Validator(load_config(write_config(Path(tempfile.mkdtemp()))).table("app.x"), cast=False)
    try:
        lines = [line for got, _ in validated_batches(io.BytesIO(data), validator) for line in envelopes(got)]
    except InputError as e:
        assert str(e).startswith("line "), e
        return
    assert sum(n for _, n in lines) == len(rows)

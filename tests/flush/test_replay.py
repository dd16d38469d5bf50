"""Quarantine records: their format, the summary by reason, and how replay judges each kind again."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from spoold.config import Column, TableSpec
from spoold.envelope import Validator
from spoold.flush.replay import judge
from spoold.spool.files import quarantine_record
from spoold.spool.quarantine import quarantine_doc, reason_group
from spoold.spool.spool import Spool

SPEC = TableSpec("t.x", columns=(Column("part_id", "string", True), Column("n", "long")), declared=True)
ENVELOPE = b'{"version":1,"columns":["part_id","n"],"rows":[["a",1],["b","x"],["c",3]]}'


def v() -> Validator:
    return Validator(SPEC)


def test_a_record_says_its_kind_and_keeps_bad_bytes_readable() -> None:
    raw = b'{"version":1,"columns":["part_id"],"rows":[["key-7"]],"blob":"\xff\xfe"}'
    rec = quarantine_record("not valid UTF-8 JSON: ...", "flush-1.jsonl", 3, raw)
    assert rec["kind"] == "line" and base64.b64decode(rec["raw_b64"]) == raw
    assert rec["raw_escaped"] == '{"version":1,"columns":["part_id"],"rows":[["key-7"]],"blob":"\\xff\\xfe"}'
    assert b"key-7" in orjson.dumps(rec)  # grep finds the key in the file
    assert quarantine_record("r", "f", 1, row_index=0, columns=["part_id"], row=["k"])["kind"] == "row"
    assert quarantine_record("r", "f", 1, b"x", format="jsonl")["kind"] == "source"


def test_a_line_that_passes_now_is_replayed_whole() -> None:
    ok = b'{"version":1,"columns":["part_id","n"],"rows":[["a",1],["c",3]]}'
    rows, kept = judge(quarantine_record("torn write", "active.jsonl", -1, ok), v())
    assert rows == [{"part_id": "a", "n": 1}, {"part_id": "c", "n": 3}] and kept == []


def test_a_line_that_passes_in_part_leaves_a_row_record_for_what_still_fails() -> None:
    rec = quarantine_record("version must be the integer 1 (got 2)", "flush-1.jsonl", 4, ENVELOPE)
    rows, kept = judge(rec, v())
    assert [r["part_id"] for r in rows] == ["a", "c"]
    (row,) = kept
    assert row["kind"] == "row" and row["row"] == ["b", "x"] and row["columns"] == ["part_id", "n"]
    assert row["reason"] == "column 'n': cannot cast \"x\" to long" and row["first_reason"] == rec["reason"]
    assert (row["file"], row["line"], row["row_index"]) == ("flush-1.jsonl", 4, 1) and "raw" not in row


def test_a_line_that_still_fails_stays_with_its_current_reason() -> None:
    rec = quarantine_record("not valid UTF-8 JSON: x", "flush-1.jsonl", 1, b"\xff{not json")
    rows, (kept,) = judge(rec, v())
    assert rows == [] and kept["raw_b64"] == rec["raw_b64"] and kept["reason"].startswith("not valid UTF-8 JSON")
    assert judge(kept, v()) == ([], [kept])  # unchanged the second time: nothing to rewrite


def test_rows_from_envelopes_and_row_objects_are_judged_against_the_current_types() -> None:
    as_list = quarantine_record("column 'n': cannot cast 5000000000 to int", "flush-1.jsonl", 2, row_index=0,
                                columns=["part_id", "n"], row=["big", 5_000_000_000])
    as_object = quarantine_record("column 'n': cannot cast 6000000000 to int", "/src/a.jsonl", 9,
                                  row={"part_id": "big2", "n": 6_000_000_000}, source="backfill")
    assert judge(as_list, v()) == ([{"part_id": "big", "n": 5_000_000_000}], [])
    assert judge(as_object, v()) == ([{"part_id": "big2", "n": 6_000_000_000}], [])
    narrow = Validator(TableSpec("t.x", columns=(Column("part_id", "string"), Column("n", "int")), declared=True))
    rows, (kept,) = judge(as_list, narrow)
    assert rows == [] and kept is as_list  # the same reason: the record is kept as it is


def test_a_source_line_is_read_again_with_its_format() -> None:
    line = (b'{"type":"user","uuid":"u1","sessionId":"s","timestamp":"2026-01-01T00:00:00Z",'
            b'"message":{"role":"user","content":"hello"}}')
    rec = quarantine_record("no usable key", "/src/s.jsonl", 5, line, format="transcript")
    rows, kept = judge(rec, Validator(TableSpec("chat.parts")))
    assert kept == [] and [r["part_id"] for r in rows] == ["u1:0"] and rows[0]["text"] == "hello"
    bad = quarantine_record("not valid JSON", "/src/s.jsonl", 6, b"{oops", format="jsonl")
    rows, (kept,) = judge(bad, v())
    assert rows == [] and kept["reason"].startswith("not valid JSON")


def test_records_without_anything_to_judge_are_kept_as_they_are() -> None:
    for rec in ({"reason": "r", "file": "f", "line": 1}, {"unreadable": "garbage"},
                {"reason": "r", "kind": "row", "row": 5}):
        assert judge(rec, v()) == ([], [rec])


def test_reasons_are_grouped_without_the_values_they_name(tmp_path: Path) -> None:
    assert reason_group("column 'n': cannot cast 3000000000 to int") == "column 'n': cannot cast a value to int"
    assert reason_group("not valid UTF-8 JSON: unexpected character: line 1 column 2 (char 1)") == \
        "not valid UTF-8 JSON"
    assert reason_group("no usable key: 'part_id' is not a non-empty string") == \
        "no usable key: 'part_id' is not a non-empty string"
    spool = Spool(tmp_path / "spool")
    recs = [quarantine_record(f"column 'n': cannot cast {i} to int", "f", i, row=[str(i), i],
                              columns=["part_id", "n"]) for i in range(3)]
    recs[0]["at"], recs[2]["at"] = 100.0, 300.0
    recs[1]["at"] = 200.0
    spool.quarantine("t.x", "flush-1-1", recs)
    doc = quarantine_doc(spool, [])
    s = doc["tables"]["t.x"]
    assert (s["records"], s["reasons"], s["oldest"], s["newest"]) == (
        3, {"column 'n': cannot cast a value to int": 3}, 100.0, 300.0)
    assert quarantine_doc(spool, ["t.y"])["tables"]["t.y"]["records"] == 0

"""Source formats: the same line always gives the same rows, bad lines are reported, offsets resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.paths import REPO

from spoold.sources import (
    FORMATS,
    SourceLine,
    SourceLineError,
    expand_sources,
    materializer,
    read_lines,
    reader,
)
from spoold.sources import jsonl as jsonl_format
from spoold.sources import transcript as transcript_format

FIXTURES = REPO / "fixtures" / "sources"
LOCAL_CC = FIXTURES / "claude-code"
NON_MESSAGE_TYPES = {
    "ai-title",
    "attachment",
    "file-history-snapshot",
    "last-prompt",
    "permission-mode",
    "queue-operation",
    "system",
}
COLUMNS = {"part_id", "message_id", "part_index", "session_id", "ts", "role", "kind", "text"}


def _transcript_files() -> list[Path]:
    files = sorted(LOCAL_CC.glob("*.jsonl"))
    assert len(files) == 23, f"fixtures/sources/claude-code should hold the 23 peer transcripts, found {len(files)}"
    return files


def _expected_parts(obj: dict) -> list[dict]:
    """The transcript rules of SPEC.md, written independently of the implementation (stdlib json)."""
    if obj.get("type") not in ("user", "assistant") or not isinstance(obj.get("message"), dict):
        return []
    content = obj["message"]["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    rows = []
    for i, part in enumerate(parts):
        if part["type"] == "text":
            text = part["text"]
        elif part["type"] == "thinking" and part["thinking"]:
            text = part["thinking"]
        else:
            text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        rows.append(
            {
                "part_id": f"{obj['uuid']}:{i}",
                "message_id": obj["uuid"],
                "part_index": i,
                "session_id": obj["sessionId"],
                "ts": obj["timestamp"],
                "role": obj["message"]["role"],
                "kind": part["type"],
                "text": text,
            }
        )
    return rows


def _lines(path: Path, fmt: str, **kw: object) -> list[SourceLine]:
    return list(read_lines(path, fmt, **kw))  # type: ignore[arg-type]


# --- transcript: real Claude Code logs ----------------------------------------------------------


def test_local_copies_of_peer_fixtures_are_present() -> None:
    names = {p.name for p in LOCAL_CC.glob("*.jsonl")}
    assert len(names) == 23
    assert {"assistant_multi.jsonl", "user_string.jsonl", "user_tool_result_str.jsonl"} <= names


def test_peer_fixtures_cover_every_line_type() -> None:
    types = {json.loads(ln)["type"] for p in LOCAL_CC.glob("*.jsonl") for ln in p.read_text().splitlines()}
    assert types == NON_MESSAGE_TYPES | {"user", "assistant"}


@pytest.mark.parametrize("path", _transcript_files(), ids=lambda p: p.name)
def test_transcript_fixture_materializes_as_specified(path: Path) -> None:
    raw = path.read_bytes().splitlines()
    lines = _lines(path, "transcript")
    assert [sl.lineno for sl in lines] == list(range(1, len(raw) + 1))
    for sl, line in zip(lines, raw, strict=True):
        assert sl.error is None, f"{path.name}:{sl.lineno}: {sl.error}"
        obj = json.loads(line)
        assert sl.rows == _expected_parts(obj)
        if obj["type"] in NON_MESSAGE_TYPES:
            assert sl.rows == []
        else:
            assert sl.rows, "a message line must give at least one part"
        for row in sl.rows:
            assert set(row) == COLUMNS
            assert type(row["part_index"]) is int
            assert isinstance(row["text"], str)


_DUMP_ROWS = """
import sys, orjson
from spoold.sources import read_lines
for path in sys.argv[1:]:
    for sl in read_lines(path, "transcript"):
        sys.stdout.buffer.write(orjson.dumps([sl.lineno, sl.start, sl.end, sl.rows, sl.error]) + b"\\n")
"""


def test_same_line_gives_identical_rows_in_every_process() -> None:
    """The same source line, read by two processes (another hash seed, as a tailing daemon and a later
    backfill would be), gives byte-identical rows, in the same order, with the same keys."""
    files = [str(p) for p in _transcript_files()]
    outs = [subprocess.run([sys.executable, "-c", _DUMP_ROWS, *files], capture_output=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1]
    here = b"".join(orjson.dumps([sl.lineno, sl.start, sl.end, sl.rows, sl.error]) + b"\n"
                    for f in files for sl in _lines(Path(f), "transcript"))
    assert here == outs[0] and len(outs[0].splitlines()) == sum(len(Path(f).read_bytes().splitlines()) for f in files)


def _line(name: str, lineno: int) -> bytes:
    return (LOCAL_CC / name).read_bytes().splitlines()[lineno - 1]


def test_thinking_text_and_tool_use_parts_hand_checked() -> None:
    rows = transcript_format.materialize(_line("assistant_multi.jsonl", 3))
    assert [(r["part_index"], r["kind"], r["part_id"]) for r in rows] == [
        (0, "thinking", "uuid-0058:0"),
        (1, "text", "uuid-0058:1"),
        (2, "tool_use", "uuid-0058:2"),
    ]
    for r in rows:
        assert (r["message_id"], r["session_id"], r["ts"], r["role"]) == (
            "uuid-0058",
            "sess-fixture-005",
            "2026-04-29T08:22:11.788Z",
            "assistant",
        )
    # An empty thinking string carries no text: the part (with its signature) is kept as JSON.
    assert rows[0]["text"].startswith('{"signature":"EswHClkIDRgCKkBJxR44')
    assert rows[0]["text"].endswith('","thinking":"","type":"thinking"}')
    assert rows[1]["text"] == (
        "Deacon is clearly active \u2014 just rotated wisp from `hy-wisp-hjny` to `hy-wisp-hl11`, "
        '"Cogitated for 23s", inbox empty, no warrants. Healthy. Let me verify current wisp state and exit.'
    )
    assert rows[2]["text"] == (
        '{"caller":{"type":"direct"},"id":"tool-0056","input":{"command":"gc bd list '
        '--assignee=hypcity-overrides.deacon --status=in_progress --json --limit=5 2>&1 | tail -30",'
        '"description":"Confirm deacon\'s current in-progress wisp"},"name":"Bash","type":"tool_use"}'
    )


def test_tool_result_part_is_sorted_json() -> None:
    [row] = transcript_format.materialize(_line("user_tool_result_str.jsonl", 1))
    assert row["kind"] == "tool_result"
    assert row["role"] == "user"
    assert row["part_id"] == "uuid-0071:0"
    assert row["text"] == (
        '{"content":"Exit code 1\\ngc agent: unknown subcommand \\"peek\\"",'
        '"is_error":true,"tool_use_id":"tool-0029","type":"tool_result"}'
    )


def test_string_content_is_one_text_part() -> None:
    [row] = transcript_format.materialize(_line("user_string.jsonl", 2))
    assert row["part_id"] == "uuid-0064:0"
    assert row["kind"] == "text"
    assert row["part_index"] == 0
    assert row["session_id"] == "sess-fixture-002"
    assert row["ts"] == "2026-05-14T02:09:21.079Z"
    assert row["text"].startswith("[hyptown] hypcity-overrides.boot \u2022 2026-05-14T02:09:19\n\n# Boot Context")
    assert len(row["text"]) == 11953


def test_sample_transcript() -> None:
    lines = _lines(FIXTURES / "transcript.jsonl", "transcript")
    assert [sl.error for sl in lines] == [None] * 7
    rows = [r for sl in lines for r in sl.rows]
    assert [(r["part_id"], r["kind"], r["role"], r["text"]) for r in rows] == [
        ("u-1:0", "text", "user", "List the files, please."),
        ("a-1:0", "thinking", "assistant", "The user wants a listing; run ls."),
        ("a-1:1", "text", "assistant", "Listing them now."),
        (
            "a-1:2",
            "tool_use",
            "assistant",
            '{"id":"toolu-1","input":{"command":"ls","description":"List files"},"name":"Bash","type":"tool_use"}',
        ),
        (
            "u-2:0",
            "tool_result",
            "user",
            '{"content":"README.md\\nsrc","is_error":false,"tool_use_id":"toolu-1","type":"tool_result"}',
        ),
        ("a-2:0", "text", "assistant", "Two entries: README.md and src."),
    ]
    assert {r["session_id"] for r in rows} == {"sess-sample"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"type": "user", "message": {"role": "user", "content": "hi"}}', "no usable key"),
        (b'{"type": "user", "uuid": "", "message": {"role": "user", "content": "hi"}}', "no usable key"),
        (b'{"type": "assistant", "uuid": "x", "message": {"role": "assistant"}}', "neither a string nor a list"),
        (b'{"type": "user", "uuid": "x", "message": {"content": {"a": 1}}}', "neither a string nor a list"),
        (b'{"type": "user", "uuid": "x"', "not valid JSON"),
        (b'"user"', "not a JSON object"),
    ],
)
def test_bad_transcript_lines_raise_source_line_error(line: bytes, message: str) -> None:
    with pytest.raises(SourceLineError, match=message):
        transcript_format.materialize(line)


def test_odd_transcript_parts_are_kept_not_dropped() -> None:
    line = json.dumps(
        {
            "type": "assistant",
            "uuid": "m",
            "message": {"content": ["bare", 7, {"text": "no type"}, {"type": "image", "source": {"b": 1}}]},
        }
    ).encode()
    rows = transcript_format.materialize(line)
    assert [(r["kind"], r["text"]) for r in rows] == [
        ("text", "bare"),
        ("unknown", "7"),
        ("unknown", '{"text":"no type"}'),
        ("image", '{"source":{"b":1},"type":"image"}'),
    ]
    # role falls back to the line's type; absent sessionId/timestamp are null.
    assert {(r["role"], r["session_id"], r["ts"]) for r in rows} == {("assistant", None, None)}


def test_message_type_without_message_object_yields_nothing() -> None:
    assert transcript_format.materialize(b'{"type": "user", "uuid": "x", "toolUseResult": "ok"}') == []
    assert transcript_format.materialize(b'{"type": "assistant", "uuid": "x", "message": "hi"}') == []
    assert transcript_format.materialize(b'{"type": "user", "uuid": "x", "message": {"content": []}}') == []


# --- jsonl --------------------------------------------------------------------------------------


def test_jsonl_line_is_one_row_kept_as_parsed() -> None:
    lines = _lines(FIXTURES / "sample.jsonl", "jsonl")
    assert [sl.error for sl in lines] == [None] * 4
    rows = [r for sl in lines for r in sl.rows]
    assert rows[1] == {
        "part_id": "evt-2:0",
        "ts": "2026-01-01T00:00:01+02:00",
        "text": "caf\u00e9 \u2603",
        "n": 2,
        "ok": True,
    }
    assert rows[2] == {"message_id": "evt-3", "part_index": 0, "ts": "2026-01-01T00:00:02Z", "text": None}
    assert rows[3]["meta"] == {"tags": ["a", "b"]}
    assert jsonl_format.materialize(b'{"a": 1}\r') == [{"a": 1}]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_bad_jsonl_lines_raise_source_line_error(line: bytes, message: str) -> None:
    with pytest.raises(SourceLineError, match=message):
        jsonl_format.materialize(line)


def test_materializer_lookup() -> None:
    assert FORMATS == ("jsonl", "transcript")
    assert materializer("jsonl") is jsonl_format.materialize
    assert materializer("transcript") is transcript_format.materialize
    with pytest.raises(ValueError, match="jsonl, transcript"):
        materializer("csv")
    with pytest.raises(ValueError, match="jsonl, transcript"):
        read_lines(FIXTURES / "sample.jsonl", "csv")


# --- read_lines ---------------------------------------------------------------------------------


def test_invalid_lines_are_reported_by_number_and_reading_goes_on() -> None:
    path = FIXTURES / "invalid.jsonl"
    lines = _lines(path, "jsonl")
    errors = {sl.lineno: sl.error for sl in lines if sl.error}
    assert sorted(errors) == [2, 4, 6, 10]  # line 3 is blank: skipped, but counted
    assert errors[2].startswith("not valid JSON")
    assert errors[4] == "not a JSON object (got an array)"
    assert errors[6].startswith("not valid JSON")
    assert "UTF-8" in errors[10]
    assert [sl.lineno for sl in lines] == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert all(sl.rows == [] for sl in lines if sl.error)
    assert [r["part_id"] for sl in lines for r in sl.rows if "part_id" in r] == ["ok-1:0", "ok-2:0", "ok-3:0", "ok-4:0"]

    t_errors = {sl.lineno: sl.error for sl in _lines(path, "transcript") if sl.error}
    assert sorted(t_errors) == [2, 4, 6, 7, 8, 10]
    assert t_errors[7] is not None and "no usable key" in t_errors[7]


def test_offsets_resume_exactly_at_the_next_line(tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    body = (FIXTURES / "transcript.jsonl").read_bytes() + b"\n  \n" + (FIXTURES / "invalid.jsonl").read_bytes()
    src.write_bytes(body + (LOCAL_CC / "assistant_multi.jsonl").read_bytes())
    everything = _lines(src, "transcript")
    data = src.read_bytes()
    for sl in everything:
        assert data[sl.start : sl.end].endswith(b"\n")
        assert data[sl.start : sl.end].count(b"\n") == 1
    for k, sl in enumerate(everything):
        assert _lines(src, "transcript", offset=sl.end, lineno=sl.lineno + 1) == everything[k + 1 :]
    assert everything[-1].end == len(data)


def test_lines_spanning_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "s.jsonl"
    src.write_bytes(b"".join(p.read_bytes() for p in sorted(LOCAL_CC.glob("*.jsonl"))) + b"\n\n{}\n")
    expected = _lines(src, "transcript")
    for block in (1, 7, 4096):
        monkeypatch.setattr(reader, "_BLOCK", block)
        assert _lines(src, "transcript") == expected
        assert _lines(src, "transcript", offset=expected[2].end, lineno=expected[2].lineno + 1) == expected[3:]


def test_partial_last_line_is_withheld_unless_asked(tmp_path: Path) -> None:
    src = tmp_path / "live.jsonl"
    src.write_bytes(b'{"part_id": "a:0"}\n{"part_id": "b:')
    [first] = _lines(src, "jsonl")
    assert first.rows == [{"part_id": "a:0"}]
    assert first.end == len(b'{"part_id": "a:0"}\n')
    [_, partial] = _lines(src, "jsonl", include_partial=True)
    assert partial.lineno == 2 and partial.end == src.stat().st_size
    assert partial.error is not None and partial.error.startswith("not valid JSON")
    # The writer finishes the line: a tailer resuming from `first.end` now gets it whole.
    with src.open("ab") as f:
        f.write(b'0"}\n')
    [done] = _lines(src, "jsonl", offset=first.end, lineno=2)
    assert (done.lineno, done.start, done.rows, done.error) == (2, first.end, [{"part_id": "b:0"}], None)
    assert _lines(src, "jsonl", offset=done.end, lineno=3, include_partial=True) == []


def test_complete_partial_line_and_blank_lines(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'\n   \n{"x": 1}\r\n\n{"x": 2}')
    got = [(sl.lineno, sl.rows) for sl in _lines(src, "jsonl", include_partial=True)]
    assert got == [(3, [{"x": 1}]), (5, [{"x": 2}])]
    assert _lines(src, "jsonl", offset=src.stat().st_size, include_partial=True) == []
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert _lines(tmp_path / "empty.jsonl", "jsonl", include_partial=True) == []


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _lines(tmp_path / "nope.jsonl", "jsonl")


# --- expand_sources -----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ("a/one.jsonl", "a/b/two.jsonl", "a/b/c/three.jsonl", "a/notes.txt", "z.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    return tmp_path


def test_expand_file_dir_and_glob(tree: Path) -> None:
    assert expand_sources([str(tree / "a/notes.txt")]) == [tree / "a/notes.txt"]
    deep = [tree / "a/b/c/three.jsonl", tree / "a/b/two.jsonl", tree / "a/one.jsonl"]
    assert expand_sources([str(tree / "a")]) == sorted(deep)
    assert expand_sources([str(tree / "**/*.jsonl")]) == sorted([*deep, tree / "z.jsonl"])
    assert expand_sources([str(tree / "a/*")]) == sorted([tree / "a/notes.txt", *deep])


def test_expand_sorts_and_deduplicates(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    got = expand_sources(["z.jsonl", str(tree / "a"), "a/b/two.jsonl", str(tree / "z.jsonl")])
    assert got == sorted(got)
    assert len(got) == len(set(got)) == 4
    assert all(p.is_absolute() for p in got)


def test_expand_user_home(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree))
    assert expand_sources(["~/a/b/**/*.jsonl"]) == [tree / "a/b/c/three.jsonl", tree / "a/b/two.jsonl"]


@pytest.mark.parametrize("pattern", ["missing.jsonl", "missing/**/*.jsonl", "empty-dir"])
def test_expand_pattern_matching_nothing_names_it(tree: Path, pattern: str) -> None:
    (tree / "empty-dir").mkdir()
    full = str(tree / pattern)
    with pytest.raises(FileNotFoundError, match="matches no files") as info:
        expand_sources([str(tree / "z.jsonl"), full])
    assert full in str(info.value)


# -- --format auto ---------------------------------------------------------------------------------


def _spec(key: str = "part_id") -> Any:
    from spoold.config import TableSpec

    return TableSpec("t.x", key=key)


@pytest.mark.parametrize("path", _transcript_files(), ids=lambda p: p.name)
def test_every_real_transcript_is_recognized_by_its_first_line(path: Path) -> None:
    import os

    from spoold.sources.detect import first_line, sniff

    fd = os.open(path, os.O_RDONLY)
    try:
        assert sniff(first_line(fd), _spec()) == "transcript"
    finally:
        os.close(fd)


@pytest.mark.parametrize(("line", "fmt"), [
    (b'{"part_id": "a:0", "ts": "2026-01-01T00:00:00Z"}', "jsonl"),
    (b'{"type": "user", "sessionId": "s", "part_id": "a:0"}', "jsonl"),  # has the key column: rows, not messages
    (b'{"type": "user", "sessionId": "s", "message_id": "m", "part_index": 0}', "jsonl"),  # the legacy key
    (b'{"type": "click", "user": "u"}', "jsonl"),  # a type, but nothing Claude Code writes
    (b'{"type": "summary", "summary": "x", "leafUuid": "u"}', "transcript"),
    (b'{"type": "file-history-snapshot", "messageId": "m", "snapshot": {}}', "transcript"),
    (b'{"type": "user", "message": {"role": "user", "content": "hi"}, "uuid": "u"}', "transcript"),
    (b"not json", "jsonl"),
    (b"[1, 2]", "jsonl"),
    (b"", "jsonl"),
])
def test_sniff_rule(line: bytes, fmt: str) -> None:
    from spoold.sources.detect import sniff

    assert sniff(line, _spec()) == fmt


def test_first_line_skips_blank_lines_and_reads_long_ones(tmp_path: Path) -> None:
    import os

    from spoold.sources.detect import first_line

    long = b'{"text": "' + b"x" * 300_000 + b'"}'
    for content, expected in [(b"\n  \n" + long + b"\nnext\n", long), (b"only, unterminated", b"only, unterminated"),
                              (b"\n\n", b"")]:
        p = tmp_path / "f.jsonl"
        p.write_bytes(content)
        fd = os.open(p, os.O_RDONLY)
        try:
            assert first_line(fd) == expected
        finally:
            os.close(fd)

"""Request bodies → rows: the one-call fast path reads exactly what the line-by-line jsonl rule reads."""

from __future__ import annotations

import gzip

import pytest

from spoold.ingest.ndjson import INFLATE_STEP, BadBody, Inflater, parse_rows
from spoold.sources import SourceLineError
from spoold.sources.jsonl import parse_object

LINES = [b'{"a": 1, "b": "x"}', b'{"a": null, "c": true}', b"", b"  ", b'{"a": 1.5}', b'{"a": {"b": [1]}}',
         b'{"a": 1}, {"a": 2}', b"[]", b"{}", b'{"": 1}', b"nope", b'{"n": 123456789012345678901234567890}',
         b'{"a": "]"}', b'{"k": "v"}\r']


def line_by_line(body: bytes) -> tuple[list[dict[str, object]], list[str]] | str:
    rows, names = [], []
    for n, line in enumerate(body.split(b"\n"), 1):
        if line.strip():
            try:
                rows.append(parse_object(line))
            except SourceLineError as e:
                return f"line {n}: {e}"
            names.append(f"line {n}")
    return rows, names


@pytest.mark.parametrize("i", range(len(LINES)))
@pytest.mark.parametrize("j", range(len(LINES)))
def test_every_pair_of_lines_reads_as_the_jsonl_rule_reads_it(i: int, j: int) -> None:
    body = LINES[i] + b"\n" + LINES[j] + b"\n"
    want = line_by_line(body)
    try:
        got: object = parse_rows(body, False)
    except BadBody as e:
        got = str(e)
    assert got == want


def inflate(body: bytes, chunk: int = 7) -> bytes:
    """``body`` fed to an Inflater a few bytes at a time, as it arrives over a socket."""
    inflater = Inflater()
    out = b"".join(piece for i in range(0, len(body), chunk) for piece in inflater.feed(body[i:i + chunk]))
    inflater.end()
    return out


def test_gzip_is_inflated_as_it_arrives_in_bounded_pieces_and_checked() -> None:
    assert inflate(gzip.compress(b"x" * 100)) == b"x" * 100
    assert inflate(gzip.compress(b"x" * 50) + gzip.compress(b"y" * 50)) == b"x" * 50 + b"y" * 50  # every member
    bomb = Inflater().feed(gzip.compress(bytes(64 << 20)))  # 64 MiB of zeros in ~64 KiB
    assert len(next(bomb)) <= INFLATE_STEP  # a piece at a time: the caller counts and stops before the rest
    with pytest.raises(BadBody, match="truncated"):
        inflate(gzip.compress(b"x" * 100)[:-10])
    with pytest.raises(BadBody, match="truncated"):
        inflate(b"")
    with pytest.raises(BadBody, match="not valid gzip"):
        inflate(b"plain text")

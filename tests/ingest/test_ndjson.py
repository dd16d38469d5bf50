"""Request bodies → rows: the one-call fast path reads exactly what the line-by-line jsonl rule reads."""

from __future__ import annotations

import gzip

import pytest

from spoold.ingest.ndjson import BadBody, TooLarge, gunzip, parse_rows
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


def test_gzip_is_bounded_and_checked() -> None:
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    assert gunzip(gzip.compress(b"x" * 50) + gzip.compress(b"y" * 50), 100) == b"x" * 50 + b"y" * 50
    with pytest.raises(TooLarge):  # every member counts toward the limit
        gunzip(gzip.compress(b"x" * 60) * 2, 100)
    with pytest.raises(TooLarge):
        gunzip(gzip.compress(b"x" * 101), 100)
    with pytest.raises(TooLarge):  # a bomb: 64 MiB of zeros in ~64 KiB, refused after 1 KiB of output
        gunzip(gzip.compress(bytes(64 << 20)), 1024)
    with pytest.raises(BadBody, match="truncated"):
        gunzip(gzip.compress(b"x" * 100)[:-10], 1000)
    with pytest.raises(BadBody, match="not valid gzip"):
        gunzip(b"plain text", 1000)

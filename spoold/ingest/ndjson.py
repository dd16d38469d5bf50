"""Request bodies → envelope lines: JSON lines or a JSON array of row objects, checked with THE rules.

The same checks as ``spoold append`` (one object a row, the jsonl source
format's rule; the table's row-level rules, column by column), over a body
already in memory (bounded by ``[ingest] max_body_bytes``). Nothing here
writes: a bad row raises :class:`BadBody` naming its 1-based line (or, in a
JSON array, its 1-based row) before anything is handed to the spool.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import orjson

from spoold.config import TableSpec
from spoold.envelope import MAX_ENVELOPE_ROWS, Validator, columnize, envelopes
from spoold.errors import InputError
from spoold.sources import SourceLineError
from spoold.sources.jsonl import parse_object


class BadBody(InputError):
    """The request's body is refused whole (400); the message names the line and the reason."""


class TooLarge(InputError):
    """The body, once gunzipped, is larger than ``[ingest] max_body_bytes`` (413)."""


MAX_ROWS = 100_000  # rows (lines) or OTLP log records in one request: each costs far more as Python objects
INFLATE_STEP = 256 << 10  # gzip is inflated this much at a time, so a body's size is checked as it grows


class Inflater:
    """``Content-Encoding: gzip`` inflated as the body arrives, in pieces of at most ``INFLATE_STEP`` bytes.

    Every member counts: a gzip stream may be several members one after another (RFC 1952, 2.2; what
    ``cat a.gz b.gz`` makes), each its own deflate stream. A corrupt or truncated one is BadBody.
    """

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False  # the current member has had input
        self._members = 0  # whole ones

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                self._started = self._started or bool(data)
                out = self._d.decompress(data, INFLATE_STEP)
                if out:
                    yield out
                if self._d.eof:  # this member is whole; what follows it is the next one
                    data = self._d.unused_data
                    self._d, self._started = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                    self._members += 1
                    if not data:
                        return
                    continue
                data = self._d.unconsumed_tail
                if not data and len(out) < INFLATE_STEP:  # all in, nothing pending
                    return
        except zlib.error as e:
            raise BadBody(f"body is not valid gzip: {e}") from None

    def end(self) -> None:
        """BadBody when the body ended inside a member, or held none."""
        if self._started or not self._members:
            raise BadBody("body is not valid gzip: truncated")


def parse_rows(body: bytes, array: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Row objects and how each is named in an error ("line 3", "row 3"); BadBody for the first bad one."""
    if array:
        return _array_rows(body)
    if body.count(b"\n") + (not body.endswith(b"\n")) > MAX_ROWS:  # before splitting: each line costs an object
        raise TooLarge(f"more than {MAX_ROWS} lines in one request")
    numbered = [(n, line) for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    fast = _flat_rows([line for _, line in numbered])
    if fast is not None:
        return fast, [f"line {n}" for n, _ in numbered]
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    for lineno, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue  # blank lines (a trailing newline, \r\n framing) carry no row
        try:
            rows.append(parse_object(line))
        except SourceLineError as e:
            raise BadBody(f"line {lineno}: {e}") from None
        names.append(f"line {lineno}")
    return rows, names


def _flat_rows(lines: list[bytes]) -> list[dict[str, Any]] | None:
    """The usual body at C speed: every line one flat object of strings, integers, booleans and nulls, parsed in
    one orjson call. None: anything else (a bad line, a float, a nested value), which the line-by-line path
    reads with the jsonl rule itself, and so names the first bad line exactly as ``spoold append`` would."""
    if not lines:
        return []
    try:
        rows = orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        return None
    # one row a line (a line holding "{...}, {...}" would make two), each a flat, non-empty object
    if len(rows) != len(lines) or set(map(type, rows)) != {dict} or not all(rows):
        return None
    if not set(map(type, (v for r in rows for v in r.values()))) <= _EXACT or any("" in r for r in rows):
        return None
    return rows


_EXACT = frozenset({str, int, bool, type(None)})  # what needs no look for depth or 64-bit overflow


def _array_rows(body: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadBody(f"not valid JSON: {e}") from None
    if type(doc) is not list:
        raise BadBody("expected a JSON array of row objects (Content-Type: application/json)")
    if len(doc) > MAX_ROWS:
        raise TooLarge(f"more than {MAX_ROWS} rows in one request")
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(doc, 1):
        try:  # each element goes through the one-object-a-row rule, exactly as a line would
            rows.append(parse_object(orjson.dumps(item)))
        except (SourceLineError, orjson.JSONEncodeError) as e:
            raise BadBody(f"row {i}: {e}") from None
    return rows, [f"row {i}" for i in range(1, len(rows) + 1)]


def envelope_lines(spec: TableSpec, rows: list[dict[str, Any]], names: list[str],
                   max_line: int) -> list[tuple[bytes, int]]:
    """The rows as spool envelope lines, after the table's row-level rules; BadBody for the first rejected row."""
    validator = Validator(spec, cast=False)
    out: list[tuple[bytes, int]] = []
    for start in range(0, len(rows), MAX_ENVELOPE_ROWS):
        batch = rows[start : start + MAX_ENVELOPE_ROWS]
        cols, matrix = columnize(batch)
        verdict = validator.rows(cols, matrix)
        if verdict.rejects:
            first = min(verdict.rejects, key=lambda r: r.index)
            raise BadBody(f"{names[start + first.index]}: {first.reason}")
        try:
            out.extend(envelopes(batch, max_line))
        except InputError as e:  # one row longer than max_line_bytes once enveloped: find and name it
            for i, row in enumerate(batch):
                try:
                    list(envelopes([row], max_line))
                except InputError:
                    raise BadBody(f"{names[start + i]}: {e}") from None
            raise BadBody(str(e)) from None
    return out

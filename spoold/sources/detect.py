"""``--format auto``: which format a source file is in.

The table's ``[[sources]]`` entries decide first: their format if they all
agree, else the format of the entry whose glob matches the file. Otherwise
the file's first non-blank line decides: a JSON object with a string
``type``, one of the fields Claude Code writes on every line (``message``,
``uuid``, ``sessionId``, ``parentUuid``, ``leafUuid``, ``messageId``) and
not the table's key column is a ``transcript``; anything else is ``jsonl``.
The key check keeps an event table whose rows happen to carry ``type`` and
``sessionId`` columns in ``jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import orjson

from spoold.config import Config, TableSpec
from spoold.sources import transcript
from spoold.sources.globs import source_glob

TRANSCRIPT_FIELDS = ("message", "uuid", "sessionId", "parentUuid", "leafUuid", "messageId")
_SNIFF_BYTES = 16 << 20  # a first line longer than this is not parsed: it counts as jsonl
_BLOCK = 1 << 16

RULE = ("auto (the default): the format of the table's [[sources]] entry; else, per file, its first non-blank "
        "line: a JSON object with a string \"type\", one of " + ", ".join(f'"{f}"' for f in TRANSCRIPT_FIELDS)
        + " and not the table's key column is a transcript, anything else jsonl")


def format_chooser(config: Config, table: str, fmt: str) -> Callable[[str, int], str]:
    """``choose(path, fd)`` → the format to read ``path`` (open as ``fd``) in, for ``--format fmt``."""
    if fmt != "auto":
        return lambda path, fd: fmt
    spec = config.table(table)
    sources = [source_glob(s) for s in config.sources if s.table == table]
    formats = {g.spec.format for g in sources}
    if len(formats) == 1:
        only = formats.pop()
        return lambda path, fd: only

    def choose(path: str, fd: int) -> str:
        for g in sources:
            if g.matches(path):
                return g.spec.format
        return sniff(first_line(fd), spec)

    return choose


def format_types(fmt: str) -> dict[str, str]:
    """The column types a source format knows its rows by (transcript); {} for jsonl, whose rows say nothing."""
    return dict(transcript.TYPES) if fmt == "transcript" else {}


def source_types(config: Config, table: str) -> dict[str, str]:
    """The column types the formats of ``table``'s ``[[sources]]`` know: what its new columns are created as
    (by flush, backfill, replay and append alike) where neither the config nor the table types them."""
    out: dict[str, str] = {}
    for s in config.sources:
        if s.table == table:
            out.update(format_types(s.format))
    return out


def sniff(line: bytes, spec: TableSpec) -> str:
    """``transcript`` or ``jsonl``, from a file's first non-blank line (see the module's rule)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "jsonl"
    if type(obj) is not dict or type(obj.get("type")) is not str or spec.key in obj:
        return "jsonl"
    if spec.legacy_key and all(c in obj for c in spec.legacy_key):
        return "jsonl"
    return "transcript" if any(f in obj for f in TRANSCRIPT_FIELDS) else "jsonl"


def first_line(fd: int) -> bytes:
    """The first non-blank line of the open file ``fd`` (read with pread: its offset is left alone)."""
    pos, pieces = 0, []
    while pos < _SNIFF_BYTES:
        block = os.pread(fd, _BLOCK, pos)
        if not block:
            return b"".join(pieces).strip()  # an unterminated only line
        pos += len(block)
        while (nl := block.find(b"\n")) >= 0:
            line, pieces, block = b"".join([*pieces, block[:nl]]), [], block[nl + 1 :]
            if line.strip():
                return line
        pieces.append(block)
    return b""


__all__ = ["RULE", "TRANSCRIPT_FIELDS", "first_line", "format_chooser", "format_types", "sniff", "source_types"]

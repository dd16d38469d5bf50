"""The ``jsonl`` source format: each line is one JSON object, which is one row.

The object's keys are column names and its values are kept exactly as
parsed; checking them against the table is the envelope rules' job.
"""

from __future__ import annotations

import orjson

from spoold.casts import MAX_DEPTH, too_deep, wide_integer
from spoold.sources.line import SourceLineError


def parse_object(line: bytes) -> dict[str, object]:
    """Parse ``line`` as one JSON object, or raise SourceLineError saying why not."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise SourceLineError(f"not valid JSON: {e}") from e
    if type(obj) is not dict:
        raise SourceLineError(f"not a JSON object (got {_json_type(obj)})")
    if not obj:
        raise SourceLineError("empty object: a row needs at least one column")
    if "" in obj:  # no envelope can carry it: the rules reject an empty column name
        raise SourceLineError("empty column name")
    kinds = set(map(type, obj.values()))
    if kinds <= _EXACT:  # the usual row: flat, and no number orjson could have read as a double
        return obj
    # the object itself is one level: its values may have MAX_DEPTH. Nesting that deep needs as many
    # brackets, which the text is counted for first (at C speed: most rows have a few).
    if line.count(b"{") + line.count(b"[") > MAX_DEPTH and too_deep(obj, MAX_DEPTH + 1):
        raise SourceLineError(f"a value is nested too deeply (over {MAX_DEPTH} levels)")
    if (wide := wide_integer(line)) is not None:  # orjson read it as a double: refused, never stored rounded
        raise SourceLineError(wide)
    return obj


# Values that need no further look: an integer beyond 64 bits comes out of orjson as a float (so a float, or a
# container that may hold one, is looked at), and only containers can nest.
_EXACT = frozenset({str, int, bool, type(None)})


def materialize(line: bytes) -> list[dict[str, object]]:
    """Return the single row held by ``line``; raise SourceLineError for a bad line."""
    return [parse_object(line)]


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"

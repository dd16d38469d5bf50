"""The rows of one commit, gathered column-wise as Arrow: keys as strings, values as typed columns.

Pure data (pyarrow, no pyiceberg): flush and backfill fill a :class:`Batch`,
the Iceberg seam shapes its columns to the table's schema
(:func:`spoold.iceberg.schema.to_arrow`) and commits them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from spoold.coltypes import ListOf, Struct, Type, nested
from spoold.envelope import LineResult

# The Arrow type each spoold type is written as: what pyiceberg's schema_to_pyarrow gives for the
# matching Iceberg type (a test checks they agree), so the seam's to_arrow never has to cast.
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.large_string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "json": pa.large_string(),
}


def arrow_of(typ: str) -> pa.DataType | None:
    """The Arrow type of spoold type text ``typ``, nested ones included (None: a type spoold doesn't write)."""
    found = ARROW_TYPES.get(typ) or _NESTED_ARROW.get(typ)
    if found is None and (tree := nested(typ)) is not None:
        found = _NESTED_ARROW[typ] = _arrow(tree)
    return found


_NESTED_ARROW: dict[str, pa.DataType] = {}


def _arrow(t: Type) -> pa.DataType:
    if isinstance(t, str):
        return ARROW_TYPES[t]
    if isinstance(t, Struct):
        return pa.struct([pa.field(f.name, _arrow(f.type), nullable=not f.required) for f in t.fields])
    if isinstance(t, ListOf):
        return pa.large_list(pa.field("element", _arrow(t.element), nullable=not t.required))
    return pa.map_(pa.large_string(), pa.field("value", _arrow(t.value), nullable=not t.required))


class Batch:
    """Validated rows of one commit: keys as Python strings, values as Arrow columns.

    Rows are gathered column-wise in Python lists and turned into Arrow every
    ``SEGMENT_ROWS`` rows, while their objects are still hot in the CPU cache;
    then those objects are freed. Converting a whole 100k-row chunk at commit
    time instead made reading, validating and converting it ~40% slower
    (cache misses, fresh pages) and held every row's Python objects until
    then. ``types`` is the validator's live ``{column: type}`` map: a column's
    values convert to its type, which never changes once set.
    """

    SEGMENT_ROWS = 4096

    def __init__(self, types: Mapping[str, str]) -> None:
        self.keys: list[str] = []
        self.types = types
        self._start = 0  # row number of the segment's first row
        self._segment: dict[str, list[Any]] = {}  # Python values of rows _start.. (a column absent: null)
        self._chunks: dict[str, list[tuple[int, pa.Array]]] = {}  # sealed segments: (first row, values)

    def __len__(self) -> int:
        return len(self.keys)

    def columns(self) -> list[str]:
        """Every column some row of the batch has, in the order they first appeared."""
        return list(dict.fromkeys([*self._chunks, *self._segment]))

    def present_columns(self) -> set[str]:
        """Columns that hold at least one non-null value in this batch."""
        self._seal()
        return {name for name, chunks in self._chunks.items() if any(a.null_count < len(a) for _, a in chunks)}

    def part(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as a batch of their own (zero-copy Arrow slices)."""
        self._seal()
        sub = Batch(self.types)
        sub.keys = self.keys[start:stop]
        for name, chunks in self._chunks.items():
            for first, arr in chunks:
                lo, hi = max(start, first), min(stop, first + len(arr))
                if lo < hi:
                    sub._chunks.setdefault(name, []).append((lo - start, arr.slice(lo - first, hi - lo)))
        sub._start = len(sub.keys)
        return sub

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as JSON values again (timestamps and dates as ISO-8601): what quarantine keeps."""
        self._seal()
        out: dict[str, Any] = {}
        for name, chunks in self._chunks.items():
            for first, arr in chunks:
                if first <= i < first + len(arr):
                    value = arr[i - first].as_py(maps_as_pydicts="strict")  # a map as the object it came as
                    out[name] = value.isoformat() if hasattr(value, "isoformat") else value
                    break
        return out

    def add(self, result: LineResult) -> None:
        """Append one validated envelope's rows."""
        m = len(result.keys)
        if not m:
            return
        n = len(self.keys) - self._start
        for name in result.values:
            if name not in self._segment:
                self._segment[name] = [None] * n
        for name, col in self._segment.items():
            vals = result.values.get(name)
            col.extend(vals if vals is not None else [None] * m)
        self.keys.extend(result.keys)
        if len(self.keys) - self._start >= self.SEGMENT_ROWS:
            self._seal()

    def add_rows(self, keys: Sequence[str], values: dict[str, list[Any]]) -> None:
        """Append already-aligned columns (``values[c][i]`` belongs to ``keys[i]``)."""
        self.add(LineResult(columns=list(values), keys=list(keys), values=values))

    def _seal(self) -> None:
        for name, vals in self._segment.items():
            typ = arrow_of(self.types[name])  # a type spoold doesn't write: the validator let only nulls by
            arr = pa.array(vals, type=typ) if typ is not None else pa.nulls(len(vals))
            self._chunks.setdefault(name, []).append((self._start, arr))
        self._segment, self._start = {}, len(self.keys)

    def arrays(self) -> dict[str, pa.ChunkedArray]:
        """Every column as one array of ``len(self)`` values (callable again: a retry rebuilds its data).

        Columns are chunked arrays of the sealed segments (no copy: concatenating a
        100k-row chunk's strings cost as much as converting them).
        """
        self._seal()
        n, columns = len(self.keys), {}
        for name, chunks in self._chunks.items():
            pieces, at = [], 0
            typ = chunks[-1][1].type  # a column's type only grows: a struct may gain fields (never widened)
            for start, arr in chunks:
                if arr.type != typ:  # a segment sealed before its struct gained a field: the field is null there
                    arr = pa.array(arr.to_pylist(), type=typ)
                if start > at:
                    pieces.append(pa.nulls(start - at, typ))
                pieces.append(arr)
                at = start + len(arr)
            if at < n:
                pieces.append(pa.nulls(n - at, typ))
            columns[name] = pa.chunked_array(pieces, typ)
        return columns


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while a batch of ~a million small row lists and dicts is built.

    Each collection would walk every live row; with the collector on, parsing
    takes two to three times as long. Rows hold no reference cycles; whatever
    cyclic garbage the catalog stack leaves meanwhile is collected afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

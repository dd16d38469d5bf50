"""Settling: gather validated rows column-wise (as Arrow); keep each key once, and only if unseen."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spoold.envelope import LineResult
from spoold.iceberg.schema import arrow_type, to_arrow

if TYPE_CHECKING:
    from pyiceberg.schema import Schema


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
                    value = arr[i - first].as_py()
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
            typ = arrow_type(self.types[name])  # a type spoold doesn't write: the validator let only nulls by
            arr = pa.array(vals, type=typ) if typ is not None else pa.nulls(len(vals))
            self._chunks.setdefault(name, []).append((self._start, arr))
        self._segment, self._start = {}, len(self.keys)

    def to_arrow(self, schema: Schema) -> pa.Table:
        """The rows as an Arrow table shaped exactly like ``schema`` (callable again: a retry rebuilds it).

        Columns are chunked arrays of the sealed segments (no copy: concatenating a
        100k-row chunk's strings cost as much as converting them).
        """
        self._seal()
        n, columns = len(self.keys), {}
        for name, chunks in self._chunks.items():
            pieces, at = [], 0
            typ = chunks[0][1].type  # a column's type never changes (inferred ones are never widened)
            for start, arr in chunks:
                if start > at:
                    pieces.append(pa.nulls(start - at, typ))
                pieces.append(arr)
                at = start + len(arr)
            if at < n:
                pieces.append(pa.nulls(n - at, typ))
            columns[name] = pa.chunked_array(pieces, typ)
        return to_arrow(columns, n, schema)


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


def settle(
    keys: Sequence[str], seen: Sequence[bool] | np.ndarray, fp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> list[int]:
    """Positions to commit: the first occurrence of each key whose ``seen`` flag is false.

    ``seen[i]`` says whether ``keys[i]`` is already committed (flush) or already
    committed or spooled (backfill). Flush must pass committed keys only: its
    batch *is* the spool, so spooled keys would match every row and drop it.
    With ``fp``, the keys' 128-bit fingerprints (what the committed-key index
    compares) and the stable argsort of their high halves, repeats are found
    in that order instead of by hashing strings.
    """
    seen = np.asarray(seen, dtype=bool)
    if fp is not None:
        return np.flatnonzero(~(seen | _repeats(*fp))).tolist()
    unseen = np.flatnonzero(~seen).tolist()
    everyone = len(unseen) == len(keys)
    cand = keys if everyone else [keys[i] for i in unseen]
    m = len(cand)
    # Built from the back, so each key ends up mapped to its first position (C speed, no Python loop).
    first = dict(zip(reversed(cand), range(m - 1, -1, -1)))
    pos = range(m) if len(first) == m else sorted(first.values())
    return list(pos) if everyone else [unseen[p] for p in pos]


def _repeats(hi: np.ndarray, lo: np.ndarray, order: np.ndarray) -> np.ndarray:
    """True where a fingerprint occurred at a smaller position already (``order``: hi's stable argsort)."""
    sh = hi[order]  # equal fingerprints stay in position order
    same_hi = sh[1:] == sh[:-1]
    rep = np.zeros(len(hi), dtype=bool)
    if not same_hi.any():
        return rep
    sl = lo[order]
    if (same_hi & (sl[1:] != sl[:-1])).any():  # two keys share a high half: sort on both (rare, slower)
        order = np.lexsort((lo, hi))
        sh, sl = hi[order], lo[order]
        same_hi = sh[1:] == sh[:-1]
    rep[order[1:]] = same_hi & (sl[1:] == sl[:-1])
    return rep

"""THE envelope rules: encode, decode and validate one spool line (pure, no I/O).

Flush, backfill and status all read the spool through :class:`Validator`, so a
line that flush would quarantine is never counted as "already captured" by
backfill. Validation is column-wise: each column is cast by :mod:`spoold.casts`
(a fast pass at C speed for a column of the expected JSON type, value by value
only for a column with an odd value, to find the rows to reject).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from math import isfinite
from operator import itemgetter
from typing import Any

import orjson

from spoold.casts import CASTERS, CHECKERS, INFERRED, cast_column, refusal, too_deep, wide_integer, zoned_timestamps
from spoold.coltypes import count_fields, nested, render
from spoold.config import TableSpec
from spoold.errors import InputError, SpoolError
from spoold.nested import cast_nested, cast_values, infer_column

VERSION = 1
_PER_VALUE_BELOW = 8  # a nested column of fewer values is cast value by value
_LIST = {list}
_STR = {str}
_PLAIN = frozenset({str, bool, type(None)})  # values that need no check before encoding
_NUMERIC = _PLAIN | {int, float}
MAX_ENVELOPE_ROWS = 1000
MAX_ENVELOPE_BYTES = 1 << 20  # an envelope is split below this, unless one row is larger
MAX_COLUMN_NAME_BYTES = 255  # an inferred column's name, in UTF-8

def encode(columns: Sequence[str], rows: Iterable[Sequence[Any]], **extra: Any) -> bytes:
    """One envelope line, ``\\n``-terminated; ``extra`` keys ride along (readers ignore them)."""
    return orjson.dumps({"version": VERSION, "columns": list(columns), "rows": list(rows), **extra}) + b"\n"


def columnize(rows: Sequence[Mapping[str, Any]], *, lists: bool = True) -> tuple[list[str], list[Any]]:
    """Row objects → an envelope's ``columns`` and ``rows`` (a column absent from a row is null).

    Columns are the union of the rows' keys in first-seen order. ``lists=False``
    may give tuples (fine for encoding, cheaper; the validator wants lists).
    """
    first = rows[0]
    cols = list(first)
    n = len(cols)
    if n > 1 and set(map(len, rows)) == {n}:
        try:  # the usual case, rows of one shape: C-speed tuples, no union of keys needed
            values = map(itemgetter(*cols), rows)
            return cols, list(map(list, values)) if lists else list(values)
        except KeyError:
            pass
    union = list(dict.fromkeys(c for r in rows for c in r))
    return union, [[r.get(c) for c in union] for r in rows]


def envelopes(rows: Iterable[Mapping[str, Any]], max_line: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Group row objects into envelopes of at most MAX_ENVELOPE_ROWS rows / ~1 MiB.

    An envelope's columns are the union of its rows' keys (first-seen order);
    a row without a column gets null there, which the rules read as absent.
    ``max_line`` (``[spool] max_line_bytes``): envelopes are split below it too,
    and a single row whose envelope is longer is refused (InputError): flush
    would quarantine such a line unread.
    """
    bound = MAX_ENVELOPE_BYTES if max_line is None else min(MAX_ENVELOPE_BYTES, max_line)
    if type(rows) is list and set(map(type, rows)) <= {dict}:  # the usual call: slice, no per-row loop
        for i in range(0, len(rows), MAX_ENVELOPE_ROWS):
            yield from _encode_bounded(rows[i : i + MAX_ENVELOPE_ROWS], bound, max_line)
        return
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        if type(row) is not dict and not isinstance(row, Mapping):  # the ABC check is slow; dicts skip it
            raise SpoolError(f"a row must be a mapping of column to value, got {type(row).__name__}")
        batch.append(row)
        if len(batch) >= MAX_ENVELOPE_ROWS:
            yield from _encode_bounded(batch, bound, max_line)
            batch = []
    if batch:
        yield from _encode_bounded(batch, bound, max_line)


def _encode_bounded(batch: list[Mapping[str, Any]], bound: int, max_line: int | None) -> Iterator[tuple[bytes, int]]:
    # Measuring the encoded line beats estimating every value's size up front
    # (append's hot path); an oversized envelope is split in halves. A single
    # row larger than the bound still goes as one envelope: rows are never cut.
    line = _encode_batch(batch)
    if len(line) <= bound or len(batch) == 1:
        if max_line is not None and len(line) > max_line:
            raise InputError(f"a row is {len(line)} bytes once encoded, longer than max_line_bytes ({max_line})")
        yield line, len(batch)
        return
    mid = len(batch) // 2
    yield from _encode_bounded(batch[:mid], bound, max_line)
    yield from _encode_bounded(batch[mid:], bound, max_line)


def _encode_batch(batch: list[Mapping[str, Any]]) -> bytes:
    names, values = columnize(batch, lists=False)
    if not names:
        raise SpoolError("a row must have at least one column, got only empty rows")
    if not all(type(c) is str and c for c in names):  # flush would reject the whole envelope, good rows too
        bad = next(c for c in names if type(c) is not str or not c)
        raise SpoolError(f"column names must be non-empty strings, got {bad!r}")
    _check_values(names, values)
    return encode(names, values, at=round(time.time(), 3))


def _check_values(names: list[str], values: list[Any]) -> None:
    """InputError for a value no envelope may carry, before the encoder sees it (it may crash on some)."""
    kinds = set(map(type, chain.from_iterable(values)))
    if kinds <= _PLAIN:  # the usual rows: one pass at C speed
        return
    if kinds <= _NUMERIC:  # numbers too: checked a column-wide pass at a time, still without a per-value loop
        flat = list(chain.from_iterable(values))
        ints = [v for v in flat if type(v) is int] if int in kinds else ()
        floats = [v for v in flat if type(v) is float] if float in kinds else ()
        if (not ints or refusal(min(ints)) is refusal(max(ints)) is None) and all(map(isfinite, floats)):
            return
    for row in values:
        for name, v in zip(names, row, strict=False):
            if type(v) not in _PLAIN and (why := refusal(v)) is not None:
                raise InputError(f"column {name!r}: cannot spool {why}")


@dataclass(frozen=True, slots=True)
class RowReject:
    index: int  # position of the row in the envelope's "rows"
    reason: str
    row: Any
    key: str | None = None  # the row's key, when it has a usable one (so quarantine can be searched by key)


@dataclass(slots=True)
class LineResult:
    """Verdict on one spool line: a line-level ``error``, or valid rows plus row rejects."""

    error: str | None = None
    columns: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)  # cast, aligned with keys
    rejects: list[RowReject] = field(default_factory=list)


def parse_envelope(raw: bytes, terminated: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """Line-level rules only: returns ``(envelope, None)`` or ``(None, reason)``."""
    if not terminated:
        return None, "torn write: last line of a rotated file has no trailing newline"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return None, f"not valid UTF-8 JSON: {e}"
    if type(obj) is not dict:
        return None, f"not a JSON object (got {type(obj).__name__})"
    if (wide := wide_integer(raw)) is not None:  # orjson read it as a double: refused, never stored rounded
        return None, wide
    version = obj.get("version")
    if type(version) is not int or version != VERSION:  # True == 1 in Python: check the type
        shown = f"a nested {type(version).__name__}" if too_deep(version) else orjson.dumps(version).decode()
        return None, f"version must be the integer 1 (got {shown})"
    cols = obj.get("columns")
    if (
        type(cols) is not list
        or not cols
        or not all(type(c) is str and c for c in cols)
        or len(set(cols)) != len(cols)
    ):
        return None, "columns must be a non-empty list of unique non-empty strings"
    if type(obj.get("rows")) is not list:
        return None, "rows must be a list"
    return obj, None


class Validator:
    """Validates envelopes for one table; remembers types it infers for new columns.

    ``table_types`` are the column types the Iceberg table already has (they
    are pinned, like declared columns); a column neither declared nor in the
    table gets the type of its first non-null value (in spool order, the same
    for flush and backfill), and later values must cast to it: ``1`` then
    ``1.5`` makes a ``long`` column and rejects the second row, whatever the
    chunking. Strings that are all timestamps with a zone in the envelope that
    creates the column make it ``timestamptz``; ``hints`` go before both.
    Table columns of types spoold does not write (lists, structs, decimals...)
    accept only null.

    A new column is refused, with the rows that bring a value for it, when its
    name is not printable, longer than ``MAX_COLUMN_NAME_BYTES``, equal to an
    existing column's but for case, or when the table would get more than
    ``[tables] max_columns`` columns (declared and existing ones count too).
    """

    def __init__(
        self,
        spec: TableSpec,
        table_types: Mapping[str, str] | None = None,
        table_required: frozenset[str] = frozenset(),
        *,
        cast: bool = True,
        hints: Mapping[str, str] | None = None,
        infer_timestamps: bool = True,
    ) -> None:
        """``cast=False``: only the verdicts are wanted (``spoold append``): values are checked with the
        same rules but not converted, and pyarrow is never imported. ``hints``: the types a source format
        knows its columns by (transcript), given to such columns when neither config nor table has them.
        ``infer_timestamps=False``: zoned timestamp strings make a ``string`` column, as any string does."""
        self.spec = spec
        self.hints: dict[str, str] = dict(hints or {})
        self._timestamps = infer_timestamps
        self._casters = CASTERS if cast else CHECKERS
        self._vector = cast
        self.types: dict[str, str] = {**(table_types or {}), **spec.column_types()}
        self.pinned = frozenset(self.types)
        self._declared = frozenset(spec.column_types())  # their struct types are closed: no field is inferred
        self.grown: set[str] = set()  # pinned columns whose struct types gained fields here
        self.types.setdefault(spec.key, "string")  # keys are strings, never inferred as numbers
        self.required = (spec.required() | table_required) - {spec.key}  # the key has its own rule
        self._folded: dict[str, str] | None = None  # casefolded name → column, made at the first new column

    def inferred(self) -> dict[str, str]:
        """Columns this validator has seen that the table does not have yet (or with struct fields it lacks)."""
        return {c: t for c, t in self.types.items() if c not in self.pinned or c in self.grown}

    def pin(self) -> None:
        """The table now has every column and field this validator has seen (they were committed)."""
        self.pinned = frozenset(self.types)
        self.grown.clear()

    def line(self, raw: bytes, terminated: bool = True) -> LineResult:
        """Apply every line-level and row-level rule to one spool line."""
        env, error = parse_envelope(raw, terminated)
        if env is None:
            return LineResult(error=error)
        return self.rows(env["columns"], env["rows"])

    def rows(self, columns: list[str], rows: list[Any]) -> LineResult:
        """Row-level rules for an envelope that passed the line-level ones."""
        ncols = len(columns)
        rejects: list[RowReject] = []
        # the usual envelope, checked at C speed: every row a list of ncols values
        if not rows or (set(map(type, rows)) == _LIST and set(map(len, rows)) == {ncols}):
            shaped, index = rows, None
        else:
            shaped, index = [], []
            for i, r in enumerate(rows):
                if type(r) is not list:
                    rejects.append(RowReject(i, f"row is not a list (got {type(r).__name__})", r))
                elif len(r) != ncols:
                    rejects.append(RowReject(i, f"row has {len(r)} values for {ncols} columns", r))
                else:
                    shaped.append(r)
                    index.append(i)
        n = len(shaped)
        cols: dict[str, list[Any]] = dict(zip(columns, map(list, zip(*shaped)))) if n else {}
        out: dict[str, list[Any]] = {}
        row_bad: dict[int, str] = {}
        for name, vals in cols.items():
            cast = self._cast(name, vals, row_bad)
            if cast is not None:
                out[name] = cast
        keys = self._keys(cols, out, n, row_bad)
        for name in self.required:
            vals = out.get(name)
            if vals is None:
                for pos in range(n):
                    row_bad.setdefault(pos, f"required column {name!r} is missing")
            elif None in vals:
                for pos, v in enumerate(vals):
                    if v is None:
                        row_bad.setdefault(pos, f"required column {name!r} is null")
        if row_bad:
            for pos, reason in sorted(row_bad.items()):
                orig = index[pos] if index is not None else pos
                rejects.append(RowReject(orig, reason, rows[orig], keys[pos] or None))
            keep = [p for p in range(n) if p not in row_bad]
            keys = [keys[p] for p in keep]
            out = {c: [v[p] for p in keep] for c, v in out.items()}
        rejects.sort(key=lambda r: r.index)
        return LineResult(columns=list(out), keys=keys, values=out, rejects=rejects)

    def _cast(self, name: str, vals: list[Any], row_bad: dict[int, str]) -> list[Any] | None:
        typ = self.types.get(name)
        if typ is None:
            first = next((v for v in vals if v is not None), None)
            if first is None:
                return None  # all null and untyped: nothing to store
            refused = self._refuse(name)
            if refused is not None:
                for pos, v in enumerate(vals):
                    if v is not None:
                        row_bad.setdefault(pos, refused)
                return None
            if type(first) in (dict, list) and name not in self.hints:
                shape = self._infer(name, None, vals)
                if shape is None:
                    if not any(map(too_deep, vals)):
                        return None  # only empty arrays or objects of nulls: the type waits for a value that shows it
                    shape = "json"  # which rejects the value too deep to store (never dropped as if null)
                if (over := self._too_wide(1 + count_fields(shape))) is not None:
                    for pos, v in enumerate(vals):
                        if v is not None:
                            row_bad.setdefault(pos, f"column {name}: {over}")
                    return None
                typ = render(shape)
            else:
                typ = self._typed(name, INFERRED[type(first)], vals)
            self.types[name] = typ
            self._names()[name.casefold()] = name
        tree = nested(typ)
        if tree is None:
            return cast_column(name, typ, vals, row_bad, self._casters, vector=self._vector)
        bad: dict[int, str] = {}
        out = self._nested(name, tree, vals, bad)
        if bad and name not in self._declared and any("unexpected field" in r for r in bad.values()):
            grown = self._infer(name, tree, vals)  # the table's (or an inferred) struct evolves by new fields
            if grown is not None and grown != tree and self._too_wide(count_fields(grown) - count_fields(tree)) is None:
                self.types[name] = render(grown)
                self.grown.add(name)
                bad = {}
                out = self._nested(name, grown, vals, bad)
        for pos in sorted(bad):
            row_bad.setdefault(pos, bad[pos])
        return out

    def _too_wide(self, more: int) -> str | None:
        """Why ``more`` struct fields may not be added to the table (None: they may): nested fields count
        against ``[tables] max_columns`` like columns."""
        have = len(self.types) + sum(count_fields(t) for t in map(nested, self.types.values()) if t is not None)
        if have + more <= self.spec.max_columns:
            return None
        return f"its fields would take the table to {have + more} columns and fields: beyond [tables] max_columns = " \
               f"{self.spec.max_columns}"

    def _nested(self, name: str, tree: Any, vals: list[Any], bad: dict[int, str]) -> list[Any]:
        if len(vals) < _PER_VALUE_BELOW:  # a few values: cheaper one by one than as child columns
            return cast_values(name, tree, vals, bad, self._casters)
        return cast_nested(name, tree, vals, bad, self._leaf)

    def _leaf(self, name: str, typ: str, vals: list[Any], bad: dict[int, str]) -> list[Any]:
        return cast_column(name, typ, vals, bad, self._casters, vector=self._vector)

    def _infer(self, name: str, known: Any, vals: list[Any]) -> Any:
        return infer_column(self.spec.identifier, name, known, vals)

    def _typed(self, name: str, inferred: str, vals: list[Any]) -> str:
        """A new column's type: the one its source format knows (``hints``), else the inferred one, made
        ``timestamptz`` when the strings that create the column are all timestamps with a zone."""
        hint = self.hints.get(name)
        if hint is not None:
            return hint
        return "timestamptz" if inferred == "string" and self._timestamps and zoned_timestamps(vals) else inferred

    def _names(self) -> dict[str, str]:
        """The columns by casefolded name (made at the first new column: most validators never need it)."""
        if self._folded is None:
            self._folded = {c.casefold(): c for c in self.types}
        return self._folded

    def _refuse(self, name: str) -> str | None:
        """Why a new column ``name`` may not be added to the table, or None."""
        shown = repr(name if len(name) <= 64 else name[:64] + "...")
        if not name.isprintable():
            return f"column name {shown} is not printable (control characters are not allowed)"
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_COLUMN_NAME_BYTES:
            return f"column name {shown} is {size} bytes long (at most {MAX_COLUMN_NAME_BYTES} in UTF-8)"
        other = self._names().get(name.casefold())
        if other is not None:
            return f"column {shown} differs from column {other!r} only in case"
        if len(self.types) >= self.spec.max_columns:
            return (f"column {shown} would be the table's column {len(self.types) + 1}: "
                    f"beyond [tables] max_columns = {self.spec.max_columns}")
        return None

    def _keys(
        self, raw: dict[str, list[Any]], out: dict[str, list[Any]], n: int, row_bad: dict[int, str]
    ) -> list[str]:
        """Keys from the raw JSON values: a key is a string, never an object's JSON text."""
        key = self.spec.key
        kv = raw.get(key)
        if kv is not None and (not kv or set(map(type, kv)) == _STR) and "" not in kv:  # the usual case, at C speed
            return kv
        legacy = [raw.get(c) for c in self.spec.legacy_key]
        keys: list[str] = []
        for pos in range(n):
            k = kv[pos] if kv is not None else None
            if k is None and legacy and all(col is not None for col in legacy):
                parts = [col[pos] for col in legacy]  # type: ignore[index]
                if all((type(p) is str and p) or type(p) is int for p in parts):
                    k = ":".join(map(str, parts))
            if type(k) is str and k:
                keys.append(k)
            else:
                keys.append("")
                row_bad.setdefault(pos, f"no usable key: {key!r} is not a non-empty string")
        out[key] = keys
        return keys

"""THE envelope rules: encode, decode and validate one spool line (pure, no I/O).

Flush, backfill and status all read the spool through :class:`Validator`, so a
line that flush would quarantine is never counted as "already captured" by
backfill. Validation is column-wise with fast paths: a column whose values are
all of the expected JSON type is accepted in one pass at C speed; only a column
with an odd value is walked value by value to find the rows to reject.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson

from spoold.config import TableSpec
from spoold.errors import SpoolError

VERSION = 1
MAX_ENVELOPE_ROWS = 1000
MAX_ENVELOPE_BYTES = 1 << 20  # an envelope is split below this, unless one row is larger
MAX_DEPTH = 253  # nesting levels orjson can write back (it reads 1,024): a deeper value is rejected
_NONE = type(None)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_US = timedelta(microseconds=1)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_FAST_TYPES: dict[str, frozenset[type]] = {
    "string": frozenset({str, _NONE}),
    "int": frozenset({int, _NONE}),
    "long": frozenset({int, _NONE}),
    "double": frozenset({float, int, _NONE}),
    "boolean": frozenset({bool, _NONE}),
}
_INFERRED = {str: "string", bool: "boolean", int: "long", float: "double", dict: "string", list: "string"}


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


def envelopes(rows: Iterable[Mapping[str, Any]]) -> Iterator[tuple[bytes, int]]:
    """Group row objects into envelopes of at most MAX_ENVELOPE_ROWS rows / ~1 MiB.

    An envelope's columns are the union of its rows' keys (first-seen order);
    a row without a column gets null there, which the rules read as absent.
    """
    if type(rows) is list and set(map(type, rows)) <= {dict}:  # the usual call: slice, no per-row loop
        for i in range(0, len(rows), MAX_ENVELOPE_ROWS):
            yield from _encode_bounded(rows[i : i + MAX_ENVELOPE_ROWS])
        return
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        if type(row) is not dict and not isinstance(row, Mapping):  # the ABC check is slow; dicts skip it
            raise SpoolError(f"a row must be a mapping of column to value, got {type(row).__name__}")
        batch.append(row)
        if len(batch) >= MAX_ENVELOPE_ROWS:
            yield from _encode_bounded(batch)
            batch = []
    if batch:
        yield from _encode_bounded(batch)


def _encode_bounded(batch: list[Mapping[str, Any]]) -> Iterator[tuple[bytes, int]]:
    # Measuring the encoded line beats estimating every value's size up front
    # (append's hot path); an oversized envelope is split in halves. A single
    # row larger than the bound still goes as one envelope: rows are never cut.
    line = _encode_batch(batch)
    if len(line) <= MAX_ENVELOPE_BYTES or len(batch) == 1:
        yield line, len(batch)
        return
    mid = len(batch) // 2
    yield from _encode_bounded(batch[:mid])
    yield from _encode_bounded(batch[mid:])


def _encode_batch(batch: list[Mapping[str, Any]]) -> bytes:
    names, values = columnize(batch, lists=False)
    if not names:
        raise SpoolError("a row must have at least one column, got only empty rows")
    if not all(type(c) is str and c for c in names):  # flush would reject the whole envelope, good rows too
        bad = next(c for c in names if type(c) is not str or not c)
        raise SpoolError(f"column names must be non-empty strings, got {bad!r}")
    return encode(names, values, at=round(time.time(), 3))


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
    version = obj.get("version")
    if type(version) is not int or version != VERSION:  # True == 1 in Python: check the type
        return None, f"version must be the integer 1 (got {orjson.dumps(version).decode()})"
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
    chunking. Table columns of types spoold does not write (lists, structs,
    decimals...) accept only null.
    """

    def __init__(
        self,
        spec: TableSpec,
        table_types: Mapping[str, str] | None = None,
        table_required: frozenset[str] = frozenset(),
        *,
        cast: bool = True,
    ) -> None:
        """``cast=False``: only the verdicts are wanted (``spoold append``): values are checked with the
        same rules but not converted, and pyarrow is never imported."""
        self.spec = spec
        self._casters = _CASTERS if cast else _CHECKERS
        self._vector = cast
        self.types: dict[str, str] = {**(table_types or {}), **spec.column_types()}
        self.pinned = frozenset(self.types)
        self.types.setdefault(spec.key, "string")  # keys are strings, never inferred as numbers
        self.required = (spec.required() | table_required) - {spec.key}  # the key has its own rule

    def inferred(self) -> dict[str, str]:
        """Columns this validator has seen that the table does not have yet."""
        return {c: t for c, t in self.types.items() if c not in self.pinned}

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
        if all(type(r) is list and len(r) == ncols for r in rows):
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
        seen = set(map(type, vals))
        if typ is None:
            first = next((v for v in vals if v is not None), None)
            if first is None:
                return None  # all null and untyped: nothing to store
            typ = self.types[name] = _INFERRED[type(first)]
        fast = _FAST_TYPES.get(typ)
        if fast is not None and seen <= fast:
            if typ in _INT_RANGE and seen != {_NONE}:
                lo, hi = _INT_RANGE[typ]
                ints = [v for v in vals if v is not None] if _NONE in seen else vals
                if lo <= min(ints) and max(ints) <= hi:
                    return vals
            elif typ == "double" and int in seen:
                # Arrow refuses ints a double cannot hold exactly; the caster turns those into floats
                ints = [v for v in vals if type(v) is int]
                if -(2**53) <= min(ints) and max(ints) <= 2**53:
                    return vals
            else:
                return vals
        if self._vector and typ == "timestamptz" and len(vals) >= _VECTOR_MIN and str in seen and seen <= _STR_OR_NONE:
            parsed = _timestamps_vectorized(vals)
            if parsed is not None:
                return parsed
        caster = self._casters.get(typ, _unsupported)  # a table column of a type spoold does not write
        out: list[Any] = []
        for pos, v in enumerate(vals):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(caster(v))
            except _TooDeep:
                row_bad.setdefault(pos, f"column {name!r}: value nested too deeply to store (over {MAX_DEPTH} levels)")
                out.append(None)
            except (TypeError, ValueError, OverflowError):
                row_bad.setdefault(pos, f"column {name!r}: cannot cast {_show(v)} to {typ}")
                out.append(None)
        return out

    def _keys(
        self, raw: dict[str, list[Any]], out: dict[str, list[Any]], n: int, row_bad: dict[int, str]
    ) -> list[str]:
        """Keys from the raw JSON values: a key is a string, never an object's JSON text."""
        key = self.spec.key
        kv = raw.get(key)
        if kv is not None and all(type(k) is str and k for k in kv):
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


class _TooDeep(Exception):
    """An object or array nested deeper than orjson can write (it reads 1,024 levels, writes 254)."""


def _show(v: Any) -> str:
    try:
        text = orjson.dumps(v).decode()
    except TypeError:  # nested too deeply to write back: show its start
        text = repr(v)[:57] if type(v) in (dict, list) else type(v).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _to_string(v: Any) -> str:
    if type(v) is str:
        return v
    if type(v) in (dict, list):
        try:
            return orjson.dumps(v).decode()  # objects and arrays are stored as their JSON text
        except TypeError:
            raise _TooDeep from None
    raise TypeError


def _to_int(lo: int, hi: int) -> Any:
    def cast(v: Any) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise TypeError
        return v

    return cast


def _to_double(v: Any) -> float:
    if type(v) not in (int, float):
        raise TypeError
    return float(v)


def _to_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise TypeError
    return v


def _unsupported(v: Any) -> Any:
    raise TypeError  # list, map, struct, decimal...: no JSON value is cast into them


def _to_timestamptz(v: Any) -> int:
    """ISO-8601 string → microseconds since the epoch, UTC (no offset means UTC)."""
    if type(v) is not str:
        raise TypeError
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US


# Canonical ISO-8601 (years 1000-9999, `T`, seconds, up to 6 fraction digits, `Z` or
# +hh:mm, or no offset). On strings of this shape Arrow's parser and
# datetime.fromisoformat agree exactly; Arrow fails a calendar-invalid date
# (Feb 30), which sends the column to the per-value caster for its rejects.
_TS_BODY = r"[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
_TS_ZONED = rf"^{_TS_BODY}(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
_TS_NAIVE = rf"^{_TS_BODY}$"
_VECTOR_MIN = 64  # below this Arrow's fixed cost outweighs it
_STR_OR_NONE = frozenset({str, _NONE})


def _timestamps_vectorized(vals: list[Any]) -> list[Any] | None:
    """A column of canonical timestamps → epoch microseconds at C speed, or None: take the per-value path.

    Exactly what :func:`_to_timestamptz` gives value by value (no offset means
    UTC), only faster: a flush spends most of its validation time here.
    """
    import pyarrow as pa  # only here: importing it costs `spoold append` start-up time
    import pyarrow.compute as pc

    arr = pa.array(vals, type=pa.string())
    for pattern, unit in ((_TS_ZONED, pa.timestamp("us", tz="UTC")), (_TS_NAIVE, pa.timestamp("us"))):
        if pc.all(pc.match_substring_regex(arr, pattern)).as_py():
            try:
                return arr.cast(unit).cast(pa.int64()).to_pylist()
            except pa.ArrowInvalid:
                return None
    return None


def _to_date(v: Any) -> int:
    """``YYYY-MM-DD`` → days since the epoch."""
    if type(v) is not str or len(v) != 10 or v[4] != "-" or v[7] != "-":
        raise TypeError
    return date.fromisoformat(v).toordinal() - _EPOCH_DAY


_CASTERS = {
    "string": _to_string,
    "int": _to_int(*_INT_RANGE["int"]),
    "long": _to_int(*_INT_RANGE["long"]),
    "double": _to_double,
    "boolean": _to_bool,
    "timestamptz": _to_timestamptz,
    "date": _to_date,
}


def _check_timestamptz(v: Any) -> Any:
    """The verdict of :func:`_to_timestamptz` without its conversion (a third of the cost)."""
    if type(v) is not str:
        raise TypeError
    datetime.fromisoformat(v)
    return v


# The same rules, for callers that only want verdicts (``Validator(cast=False)``).
_CHECKERS = {**_CASTERS, "timestamptz": _check_timestamptz}

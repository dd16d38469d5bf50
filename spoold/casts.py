"""How a JSON value becomes a column value: strict casts per Iceberg type (pure, no I/O).

The envelope rules (:mod:`spoold.envelope`) judge a column at a time:
:func:`cast_column` accepts a column whose values all have the expected JSON
type in one pass at C speed, and walks only a column with an odd value, value
by value, to find the rows to reject and say why. Casting is strict: ``int``
and ``long`` take JSON integers (not booleans, floats or strings), ``double``
numbers, ``boolean`` true/false, ``timestamptz`` ISO-8601 strings (no offset
means UTC), ``date`` ``YYYY-MM-DD``, ``string`` strings; an object or array
goes into a ``string`` column as its JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

# orjson reads 1,024 nesting levels but writes at most 254; an envelope wraps a value in three
# (object, rows, row), so a value nested deeper than this could never be spooled: it is rejected.
MAX_DEPTH = 250
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
INFERRED = {str: "string", bool: "boolean", int: "long", float: "double", dict: "string", list: "string"}


def cast_column(name: str, typ: str, vals: list[Any], row_bad: dict[int, str],
                casters: Mapping[str, Any], *, vector: bool) -> list[Any]:
    """Column ``name``'s values cast to ``typ`` (rejected ones become None and are named in ``row_bad``).

    ``casters``: :data:`CASTERS` (convert) or :data:`CHECKERS` (verdicts only);
    ``vector``: timestamps may be parsed by Arrow a column at a time.
    """
    seen = set(map(type, vals))
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
    if vector and typ == "timestamptz" and len(vals) >= _VECTOR_MIN and str in seen and seen <= _STR_OR_NONE:
        parsed = _timestamps_vectorized(vals)
        if parsed is not None:
            return parsed
    caster = casters.get(typ, _unsupported)  # a table column of a type spoold does not write
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
        try:  # objects and arrays are stored as their JSON text, if an envelope could carry them
            return orjson.dumps([[[v]]])[3:-3].decode()  # (the three levels an envelope adds, in one encode)
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


CASTERS = {
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
CHECKERS = {**CASTERS, "timestamptz": _check_timestamptz}

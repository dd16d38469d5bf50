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

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from math import isfinite
from typing import Any

import orjson

# A value nested deeper than this is refused (a row or line rejection with a reason) before any encoder
# sees it. orjson reads 1,024 levels and writes at most 254, but 3.12.0/3.13.0 corrupt the heap (SIGABRT)
# writing values ~140 levels deep whose output nears 4 KiB: 64 (plus the three levels an envelope or a
# quarantine record adds) stays far inside what every orjson release encodes safely (docs/spool-layout.md).
MAX_DEPTH = 64
_NESTS = (dict, list, tuple)  # what orjson writes as an object or array (subclasses too)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NONE = type(None)
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # what JSON readers (orjson) keep as integers
# The only integer texts that may lie outside them have 19 digits or more: found with a C-speed translate and
# find (a regex tried at every byte of a 500-byte row cost ~8 µs, most of `spoold append`'s time).
# A run after a '.' is a float's fraction (a double by its syntax, nothing to lose): only a run after another
# byte can be an integer, so full-precision doubles (0.12345678901234567891) cost no second read.
_DIGIT_RUNS = bytes(0x39 if 0x30 <= b <= 0x39 else 0x2E if b == 0x2E else 0x20 for b in range(256))
_LONG_RUN = b" " + b"9" * 19
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
    "json": frozenset({str, _NONE}),
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
    """An object or array nested deeper than :data:`MAX_DEPTH` (never handed to the encoder)."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``value`` has objects/arrays nested more than ``limit`` levels (a scalar has none).

    Iterative (no recursion limit) and at C speed for a container of scalars; it
    stops at the first level past ``limit``, so a hostile value costs little.
    """
    if not isinstance(value, _NESTS):
        return False
    level = [value]
    for _ in range(limit):
        nxt: list[Any] = []
        for v in level:
            items = v.values() if isinstance(v, dict) else v
            if not set(map(type, items)) <= _SCALARS:  # the usual container of scalars is skipped at C speed
                nxt += [x for x in items if isinstance(x, _NESTS)]
        if not nxt:
            return False
        level = nxt
    return True


def refusal(value: Any) -> str | None:
    """Why a value handed to the Python API cannot be spooled as JSON (None: it can).

    Refused, never written: nesting past :data:`MAX_DEPTH`, NaN and infinities
    (orjson would write them as null, silently), integers beyond 64 bits.
    """
    kind = type(value)
    if kind is float:
        return None if isfinite(value) else f"{value!r} (not a JSON number)"
    if kind is int:
        return None if _MIN_INT <= value <= _MAX_INT else "an integer beyond 64 bits"
    if not isinstance(value, _NESTS):
        return None
    if too_deep(value):
        return f"a value nested too deeply (over {MAX_DEPTH} levels)"
    stack = [value]
    while stack:
        v = stack.pop()
        items = v.values() if isinstance(v, dict) else v
        for x in items:
            if isinstance(x, _NESTS):
                stack.append(x)
            elif type(x) in (float, int) and (why := refusal(x)) is not None:
                return why
    return None


class _Wide(Exception):
    pass


def _narrow(text: str) -> int:
    v = int(text) if len(text) <= 21 else None  # (int() of thousands of digits is itself refused)
    if v is None or not _MIN_INT <= v <= _MAX_INT:
        raise _Wide(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is beyond 64 bits")
    return v


def wide_integer(raw: bytes) -> str | None:
    """Why JSON text ``raw`` cannot be read exactly: an integer beyond 64 bits, which orjson would
    silently read as a double (None: no such integer). Costs one regex scan unless a long digit run is
    there; then the line is read once more, by the stdlib, only to look at its integers."""
    if raw.translate(_DIGIT_RUNS).find(_LONG_RUN) < 0:
        return None
    try:
        json.loads(raw, parse_int=_narrow)
    except _Wide as e:
        return str(e)
    except (ValueError, RecursionError):  # the stdlib's own limits: orjson's verdict stands
        return None
    return None


def _show(v: Any) -> str:
    if too_deep(v):  # never handed to the encoder: show its type
        return f"a {type(v).__name__} nested over {MAX_DEPTH} levels"
    try:
        text = orjson.dumps(v).decode()
    except TypeError:  # not JSON (e.g. an integer beyond 64 bits from the Python API)
        text = repr(v)[:57]
    return text if len(text) <= 60 else text[:57] + "..."


def _to_string(v: Any) -> str:
    if type(v) is str:
        return v
    if type(v) in (dict, list):
        if too_deep(v):  # checked first: the encoder itself may crash on such a value (orjson 3.12/3.13)
            raise _TooDeep
        return orjson.dumps(v).decode()  # objects and arrays are stored as their JSON text
    raise TypeError


def _to_json(v: Any) -> str:
    """A ``json`` column: a string as itself (text a producer encoded already), anything else as its JSON text."""
    if type(v) in (bool, int, float):
        if (why := refusal(v)) is not None:
            raise ValueError(why)
        return orjson.dumps(v).decode()
    return _to_string(v)


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


_FLOAT_MAX = 3.4028234663852886e38  # the largest finite 32-bit float: past it a value would become infinity


def _to_float(v: Any) -> float:
    """A number a 32-bit float holds without overflowing (rounded to its precision when written)."""
    if type(v) not in (int, float) or not -_FLOAT_MAX <= v <= _FLOAT_MAX:
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


_ZONED = re.compile(_TS_ZONED)


def zoned_timestamps(vals: list[Any]) -> bool:
    """True when every non-null value is an RFC 3339 timestamp with a zone (``Z`` or ``+hh:mm``) that
    :func:`_to_timestamptz` takes: an undeclared column such strings create is typed ``timestamptz``."""
    match = _ZONED.match
    try:
        return all(v is None or (type(v) is str and match(v) and _to_timestamptz(v) is not None) for v in vals)
    except ValueError:  # the right shape, not a calendar date (Feb 30)
        return False


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
    "float": _to_float,
    "double": _to_double,
    "boolean": _to_bool,
    "timestamptz": _to_timestamptz,
    "date": _to_date,
    "json": _to_json,
}


def _check_timestamptz(v: Any) -> Any:
    """The verdict of :func:`_to_timestamptz` without its conversion (a third of the cost)."""
    if type(v) is not str:
        raise TypeError
    datetime.fromisoformat(v)
    return v


# The same rules, for callers that only want verdicts (``Validator(cast=False)``).
CHECKERS = {**CASTERS, "timestamptz": _check_timestamptz}

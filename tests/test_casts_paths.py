"""The validator's column-at-a-time paths give exactly the verdicts and values of its per-value path.

:func:`spoold.casts.cast_column` accepts a column whose values all have the
expected JSON type in one C-speed pass (and parses canonical timestamps with
Arrow); only a column with an odd value is walked value by value. Here every
column hypothesis draws is judged both ways: the same rows rejected with the
same reasons, the same values kept (as Arrow stores them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spoold.casts import CASTERS, CHECKERS, cast_column

TYPES = ["string", "int", "long", "double", "boolean", "timestamptz", "date"]
ARROW = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "double": pa.float64(),
         "boolean": pa.bool_(), "timestamptz": pa.int64(), "date": pa.int32()}

_moments = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31),
                        timezones=st.sampled_from([None, UTC]))


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """ISO-8601 text as producers write it: canonical mostly, sometimes odd (space, offset, no seconds)."""
    dt = draw(_moments)
    if draw(st.booleans()):
        dt = dt.replace(microsecond=0)
    text = dt.isoformat()
    form = draw(st.sampled_from(["plain"] * 6 + ["z", "offset", "space", "minutes", "feb30"]))
    if form == "z" and text.endswith("+00:00"):
        return text[:-6] + "Z"
    if form == "offset":
        return dt.replace(tzinfo=UTC).astimezone(UTC).replace(tzinfo=None).isoformat() + draw(
            st.sampled_from(["+05:30", "-08:00", "+14:00"]))
    if form == "space":
        return text.replace("T", " ")
    if form == "minutes":
        return text[:16]
    if form == "feb30":
        return f"{dt.year:04d}-02-30T00:00:00"
    return text


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8), timestamps(), st.dates().map(lambda d: d.isoformat()),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                      max_leaves=6)
_TYPICAL = {
    "string": st.text(max_size=12), "int": st.integers(-(2**31), 2**31 - 1), "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53)),
    "boolean": st.booleans(), "timestamptz": timestamps(), "date": st.dates().map(lambda d: d.isoformat()),
}


@st.composite
def columns(draw: st.DrawFn) -> tuple[str, list[Any]]:
    """A column for a type: mostly values of that type (long enough for the vectorized path), a few odd ones."""
    typ = draw(st.sampled_from(TYPES))
    n = draw(st.sampled_from([1, 5, 64, 100]))
    typical = st.one_of(st.none(), _TYPICAL[typ]) if draw(st.booleans()) else _TYPICAL[typ]
    col = draw(st.lists(typical, min_size=n, max_size=n))
    for _ in range(draw(st.integers(0, 3))):  # odd values: mostly another JSON type's scalar, sometimes nested
        col[draw(st.integers(0, n - 1))] = draw(st.one_of(scalars, scalars, scalars, values))
    return typ, col


def _per_value(typ: str, vals: list[Any]) -> tuple[list[Any], set[int]]:
    out, bad = [], set()
    for pos, v in enumerate(vals):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(CASTERS[typ](v))
        except Exception:
            bad.add(pos)
            out.append(None)
    return out, bad


_T = "2026-01-02T03:04:05"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
@example(("long", [1, True, 3]))  # a bool is no integer
@example(("int", [False, None]))
@example(("int", [1, 2**31]))  # out of the type's range
@example(("long", [2**63]))
@example(("double", [1.5, 2**53 + 1]))  # an int a double cannot hold exactly
@example(("double", [True]))
@example(("string", ["a", {"b": [1]}, [2]]))  # objects and arrays as their JSON text
@example(("boolean", [1, 0]))
@example(("timestamptz", [_T + "Z"] * 63 + ["2026-02-30T00:00:00Z"]))  # Arrow fails the column: per value
@example(("timestamptz", [_T] * 63 + [_T + "+05:30"]))  # naive and zoned in one column
@example(("timestamptz", [_T + ".123456"] * 64 + [1]))
@example(("date", ["2026-01-02", "2026-1-2", 20260102]))
def test_a_column_is_judged_and_converted_alike_at_column_speed_and_value_by_value(column: tuple[str, list]) -> None:
    typ, vals = column
    expected, expected_bad = _per_value(typ, vals)
    row_bad: dict[int, str] = {}
    got = cast_column("c", typ, list(vals), row_bad, CASTERS, vector=True)
    assert set(row_bad) == expected_bad
    assert all(reason.startswith("column 'c': ") for reason in row_bad.values())
    assert pa.array(got, ARROW[typ]).equals(pa.array(expected, ARROW[typ]))
    checked: dict[int, str] = {}  # the verdicts-only path (spoold append) rejects the same rows, for the same reasons
    cast_column("c", typ, list(vals), checked, CHECKERS, vector=False)
    assert checked == row_bad


def test_the_column_paths_are_taken_on_typical_columns() -> None:
    """The property above compares something: typical columns do take the C-speed paths."""
    vals = list(range(100))
    assert cast_column("c", "long", vals, {}, CASTERS, vector=True) is vals  # accepted whole, not copied
    moments = [(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat() for i in range(100)]

    def per_value(v: Any) -> Any:
        raise AssertionError("the per-value caster was called")

    got = cast_column("c", "timestamptz", moments, {}, {**CASTERS, "timestamptz": per_value}, vector=True)
    assert got == [CASTERS["timestamptz"](m) for m in moments]

"""THE envelope rules (SPEC "Envelope"): one test per rule, plus properties.

The properties pin the two promises the rest of spoold stands on: the
validator never raises, whatever the bytes, and it never accepts a row that
flush could not turn into an Arrow table of the table's schema.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoold.config import Column, TableSpec
from spoold.envelope import LineResult, Validator, encode, parse_envelope

TYPED = TableSpec(
    "t.typed",
    columns=(
        Column("part_id", "string", True),
        Column("message_id", "string"),
        Column("part_index", "int"),
        Column("i", "int"),
        Column("l", "long"),
        Column("d", "double"),
        Column("b", "boolean"),
        Column("ts", "timestamptz"),
        Column("day", "date"),
        Column("s", "string"),
        Column("req", "string", True),
    ),
    declared=True,
)
UNDECLARED = TableSpec("t.free")


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def check(spec: TableSpec, columns: list[str], rows: list[Any]) -> LineResult:
    result = Validator(spec).line(encode(columns, rows)[:-1])
    assert result.error is None, result.error
    return result


def one(spec: TableSpec, row: dict[str, Any]) -> LineResult:
    return check(spec, list(row), [list(row.values())])


def cast_one(column: str, value: Any) -> Any:
    """The cast value of ``column`` in a typed row, or raise AssertionError with the reject reason."""
    r = one(TYPED, {"part_id": "k", "req": "x", column: value})
    assert not r.rejects, r.rejects[0].reason
    return r.values[column][0]


def rejected(column: str, value: Any) -> str:
    r = one(TYPED, {"part_id": "k", "req": "x", column: value})
    assert r.keys == [] and len(r.rejects) == 1, f"{column}={value!r} was accepted"
    return r.rejects[0].reason


# -- line level -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"version": 1, "columns": ["a"], "rows": []', "not valid UTF-8 JSON"),
        (b'{"version": 1, "columns": ["part_id"], "rows": [["\xff\xfe"]]}', "not valid UTF-8 JSON"),
        (b"", "not valid UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"version"', "not a JSON object"),
        (b"1", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"columns": ["part_id"], "rows": []}', "version must be the integer 1"),
        (b'{"version": 2, "columns": ["part_id"], "rows": []}', "version must be the integer 1"),
        (b'{"version": "1", "columns": ["part_id"], "rows": []}', "version must be the integer 1"),
        (b'{"version": true, "columns": ["part_id"], "rows": []}', "version must be the integer 1"),
        (b'{"version": 1.0, "columns": ["part_id"], "rows": []}', "version must be the integer 1"),
        (b'{"version": 1, "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": "part_id", "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": [], "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": ["part_id", 3], "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": ["part_id", ""], "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": ["part_id", "a", "a"], "rows": []}', "columns must be"),
        (b'{"version": 1, "columns": ["part_id"]}', "rows must be a list"),
        (b'{"version": 1, "columns": ["part_id"], "rows": {"a": 1}}', "rows must be a list"),
        (b'{"version": 1, "columns": ["part_id"], "rows": "x"}', "rows must be a list"),
    ],
)
def test_line_level_rules_reject_the_whole_line(raw: bytes, reason: str) -> None:
    result = Validator(UNDECLARED).line(raw)
    assert result.error is not None and result.error.startswith(reason), result.error
    assert result.keys == [] and result.values == {} and result.rejects == []
    env, err = parse_envelope(raw)
    assert env is None and err == result.error


def test_unterminated_line_of_rotated_file_is_a_torn_write() -> None:
    raw = encode(["part_id"], [["a"]])[:-1]
    assert Validator(UNDECLARED).line(raw, terminated=True).keys == ["a"]
    torn = Validator(UNDECLARED).line(raw, terminated=False)
    assert torn.error is not None and "torn write" in torn.error and torn.keys == []


def test_extra_top_level_keys_are_ignored() -> None:
    raw = line({"version": 1, "columns": ["part_id", "req"], "rows": [["a", "x"]], "at": 1.5, "host": {"n": 1}})
    result = Validator(TYPED).line(raw)
    assert result.error is None and result.keys == ["a"] and "at" not in result.values and "host" not in result.values


def test_encode_makes_one_terminated_line_that_round_trips() -> None:
    raw = encode(["part_id", "s"], [["a", "line\nbreak"], ["b", None]], at=3)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    env, err = parse_envelope(raw[:-1])
    assert err is None and env == {"version": 1, "columns": ["part_id", "s"], "rows": [["a", "line\nbreak"],
                                                                                         ["b", None]], "at": 3}


def test_empty_rows_is_a_valid_line_with_nothing_in_it() -> None:
    result = check(UNDECLARED, ["part_id"], [])
    assert result.keys == [] and result.rejects == []


# -- row level ----------------------------------------------------------------------

def test_row_that_is_not_a_list_is_rejected_and_siblings_kept() -> None:
    rows = [["a", "x"], {"part_id": "b"}, "c", None, 7, ["d", "y"]]
    result = check(TYPED, ["part_id", "req"], rows)
    assert result.keys == ["a", "d"] and result.values["req"] == ["x", "y"]
    assert [r.index for r in result.rejects] == [1, 2, 3, 4]
    assert all(r.reason.startswith("row is not a list") for r in result.rejects)
    assert result.rejects[0].row == {"part_id": "b"}


def test_row_of_wrong_length_is_rejected_and_siblings_kept() -> None:
    result = check(TYPED, ["part_id", "req"], [["a"], ["b", "x"], ["c", "x", "extra"], []])
    assert result.keys == ["b"]
    assert [(r.index, r.reason) for r in result.rejects] == [
        (0, "row has 1 values for 2 columns"),
        (2, "row has 3 values for 2 columns"),
        (3, "row has 0 values for 2 columns"),
    ]


@pytest.mark.parametrize("key", [None, "", 5, True, 1.5])
def test_row_without_a_usable_key_is_rejected(key: Any) -> None:
    spec = TableSpec("t.nolegacy", legacy_key=())
    result = check(spec, ["part_id", "v"], [[key, 1], ["ok", 2]])
    assert result.keys == ["ok"] and result.values["v"] == [2]
    assert len(result.rejects) == 1 and result.rejects[0].index == 0


def test_absent_key_column_rejects_every_row_without_legacy_columns() -> None:
    result = check(UNDECLARED, ["v"], [[1], [2]])
    assert result.keys == [] and [r.index for r in result.rejects] == [0, 1]
    assert all("no usable key" in r.reason for r in result.rejects)


def test_legacy_key_is_derived_and_written_to_the_key_column() -> None:
    result = check(UNDECLARED, ["message_id", "part_index", "text"], [["m1", 0, "a"], ["m1", 1, "b"]])
    assert result.keys == ["m1:0", "m1:1"] and result.values["part_id"] == ["m1:0", "m1:1"]
    assert result.rejects == []


def test_legacy_key_fills_null_keys_but_never_overrides_a_present_one() -> None:
    result = check(TYPED, ["part_id", "message_id", "part_index", "req"],
                   [[None, "m", 3, "x"], ["own", "m", 4, "x"]])
    assert result.keys == ["m:3", "own"] and result.values["part_id"] == ["m:3", "own"]


def test_legacy_key_needs_every_legacy_column() -> None:
    result = check(UNDECLARED, ["message_id", "part_index"], [["m", None], [None, 1], ["", 2], ["m", 2]])
    assert result.keys == ["m:2"] and [r.index for r in result.rejects] == [0, 1, 2]


def test_custom_key_and_legacy_key_from_the_table_spec() -> None:
    spec = TableSpec("t.custom", key="event_id", legacy_key=("session", "seq"))
    result = check(spec, ["event_id", "session", "seq"], [["e1", "s", 9], [None, "s", 10]])
    assert result.keys == ["e1", "s:10"] and result.values["event_id"] == ["e1", "s:10"]
    no_legacy = check(TableSpec("t.custom", key="event_id", legacy_key=()), ["session", "seq"], [["s", 1]])
    assert no_legacy.keys == [] and "'event_id'" in no_legacy.rejects[0].reason


def test_rejects_carry_index_reason_and_the_row() -> None:
    result = check(TYPED, ["part_id", "req", "i"], [["a", "x", 1], ["b", "x", "two"], ["c", "x", 3]])
    assert result.keys == ["a", "c"] and result.values["i"] == [1, 3]
    (rej,) = result.rejects
    assert rej.index == 1 and rej.row == ["b", "x", "two"]
    assert rej.reason == "column 'i': cannot cast \"two\" to int"


# -- strict casting ------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -(2**31), 2**31 - 1])
def test_int_takes_int32_integers(value: int) -> None:
    assert cast_one("i", value) == value


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "1", 2**31, -(2**31) - 1, [1], {"a": 1}])
def test_int_refuses_bools_floats_strings_and_out_of_range(value: Any) -> None:
    assert "to int" in rejected("i", value)


@pytest.mark.parametrize("value", [0, 2**31, -(2**63), 2**63 - 1])
def test_long_takes_int64_integers(value: int) -> None:
    assert cast_one("l", value) == value


@pytest.mark.parametrize("value", [True, 1.0, "1", 2**63, 2**64 - 1])
def test_long_refuses_bools_floats_strings_and_out_of_range(value: Any) -> None:
    assert "to long" in rejected("l", value)


@pytest.mark.parametrize("value", [1, 1.5, -0.0, 1e300, 2**53 + 1, 2**64 - 1, -(2**63)])
def test_double_takes_numbers(value: Any) -> None:
    assert cast_one("d", value) == float(value)


@pytest.mark.parametrize("value", [True, False, "1.5", [1.5]])
def test_double_refuses_bools_and_strings(value: Any) -> None:
    assert "to double" in rejected("d", value)


@pytest.mark.parametrize("value", [True, False])
def test_boolean_takes_true_false(value: bool) -> None:
    assert cast_one("b", value) is value


@pytest.mark.parametrize("value", [0, 1, "true", "false", 1.0])
def test_boolean_refuses_anything_else(value: Any) -> None:
    assert "to boolean" in rejected("b", value)


def _us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // datetime.resolution


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2025-12-31T19:00:00-05:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00", datetime(2026, 1, 1, tzinfo=UTC)),  # no offset means UTC
        ("2026-01-01T00:00:00.123456Z", datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_timestamptz_takes_iso8601_with_z_offset_or_none_as_utc(text: str, utc: datetime) -> None:
    assert cast_one("ts", text) == _us(utc)


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "", 1767225600, 1.5, True])
def test_timestamptz_refuses_non_iso_strings_and_numbers(value: Any) -> None:
    assert "to timestamptz" in rejected("ts", value)


def test_date_takes_yyyy_mm_dd() -> None:
    assert cast_one("day", "2026-03-04") == (date(2026, 3, 4) - date(1970, 1, 1)).days


@pytest.mark.parametrize("value", ["2026-3-4", "20260304", "2026-03-04T00:00:00", "2026-02-30", "2026/03/04",
                                   " 2026-03-0", 20260304, True])
def test_date_refuses_anything_but_yyyy_mm_dd(value: Any) -> None:
    assert "to date" in rejected("day", value)


def test_string_takes_strings_and_objects_or_arrays_as_json_text() -> None:
    assert cast_one("s", "héllo\n") == "héllo\n"
    assert orjson.loads(cast_one("s", {"a": [1, {"b": None}]})) == {"a": [1, {"b": None}]}
    assert orjson.loads(cast_one("s", [1, "x", True])) == [1, "x", True]


@pytest.mark.parametrize("value", [1, 1.5, True])
def test_string_refuses_numbers_and_bools(value: Any) -> None:
    assert "to string" in rejected("s", value)


def test_one_bad_value_rejects_only_its_row_in_a_mixed_column() -> None:
    result = check(TYPED, ["part_id", "req", "l"], [["a", "x", 1], ["b", "x", True], ["c", "x", None], ["d", "x", 2]])
    assert result.keys == ["a", "c", "d"] and result.values["l"] == [1, None, 2]


def test_null_in_required_column_rejects_the_row() -> None:
    result = check(TYPED, ["part_id", "req"], [["a", None], ["b", "x"]])
    assert result.keys == ["b"] and result.rejects[0].reason == "required column 'req' is null"


def test_required_column_absent_from_the_envelope_rejects_every_row() -> None:
    result = check(TYPED, ["part_id", "s"], [["a", "x"], ["b", "y"]])
    assert result.keys == [] and all(r.reason == "required column 'req' is missing" for r in result.rejects)


def test_required_from_the_committed_table_counts_too() -> None:
    v = Validator(UNDECLARED, {"part_id": "string", "n": "long"}, frozenset({"n"}))
    result = v.line(encode(["part_id", "n"], [["a", None], ["b", 1]])[:-1])
    assert result.keys == ["b"]


def test_absent_and_null_optional_columns_are_null() -> None:
    result = check(TYPED, ["part_id", "req", "s"], [["a", "x", None]])
    assert result.keys == ["a"] and result.values["s"] == [None]
    assert "i" not in result.values and "ts" not in result.values  # absent: null when written
    from spoold.iceberg.schema import new_schema, to_arrow

    v = Validator(TYPED)
    res = v.line(encode(["part_id", "req"], [["a", "x"]])[:-1])
    table = to_arrow(res.values, len(res.keys), new_schema(TYPED, v.types))
    assert table.num_rows == 1 and table.column("i").null_count == 1 and table.column("ts").null_count == 1


def test_undeclared_columns_are_inferred_from_their_first_value_and_then_strict() -> None:
    v = Validator(UNDECLARED)
    first = v.line(encode(["part_id", "n", "f", "b", "s", "o"], [["a", 1, 1.5, True, "x", {"k": 1}]])[:-1])
    assert first.rejects == []
    assert v.inferred() == {"part_id": "string", "n": "long", "f": "double", "b": "boolean", "s": "string",
                            "o": "struct<k: long>"}
    second = v.line(encode(["part_id", "n", "s"], [["b", "two", "y"], ["c", 3, 4]])[:-1])
    assert second.keys == [] and len(second.rejects) == 2


def test_big_integers_in_a_double_column_become_floats_flush_can_write() -> None:
    from spoold.iceberg.schema import new_schema, to_arrow

    v = Validator(UNDECLARED)
    res = v.line(encode(["part_id", "x"], [["b", 0.5], ["a", 2**53 + 1], ["c", 2**64 - 1]])[:-1])
    assert res.keys == ["b", "a", "c"] and v.types["x"] == "double"
    table = to_arrow(res.values, 3, new_schema(UNDECLARED, v.types))
    assert table.column("x").to_pylist() == [0.5, float(2**53 + 1), float(2**64 - 1)]


def test_an_inferred_column_keeps_its_first_values_type_across_lines() -> None:
    """1 then 1.5: long, and the 1.5 row is rejected (SPEC: integer -> long), so the verdict
    on a line never depends on which other lines share its flush chunk."""
    v = Validator(UNDECLARED)
    assert v.line(encode(["part_id", "x"], [["a", 1]])[:-1]).keys == ["a"]
    res = v.line(encode(["part_id", "x"], [["b", 1.5], ["c", 2]])[:-1])
    assert v.types["x"] == "long" and res.keys == ["c"]
    assert res.rejects[0].reason == "column 'x': cannot cast 1.5 to long"


def test_an_object_is_never_a_key() -> None:
    """Objects go into string columns as JSON text, but a key must be a JSON string."""
    v = Validator(UNDECLARED)
    res = v.line(encode(["part_id", "message_id", "part_index"], [[{"k": 1}, None, None], [None, ["m"], 0]])[:-1])
    no_key = "no usable key: 'part_id' is not a non-empty string"
    assert res.keys == [] and [r.reason for r in res.rejects] == [no_key] * 2


def test_a_table_column_of_a_type_spoold_cannot_write_takes_only_null() -> None:
    v = Validator(UNDECLARED, {"part_id": "string", "amount": "decimal(10, 2)"})
    res = v.line(encode(["part_id", "amount"], [["a", None], ["b", 1.5], ["c", "x"]])[:-1])
    assert res.keys == ["a"]
    assert [r.reason for r in res.rejects] == ["column 'amount': cannot cast 1.5 to decimal(10, 2)",
                                              "column 'amount': cannot cast \"x\" to decimal(10, 2)"]


def test_key_column_is_a_string_even_when_inferred() -> None:
    v = Validator(UNDECLARED)
    result = v.line(encode(["part_id"], [[1]])[:-1])
    assert result.keys == [] and v.types["part_id"] == "string"


def test_declared_and_committed_types_are_pinned() -> None:
    v = Validator(UNDECLARED, {"part_id": "string", "n": "long"})
    result = v.line(encode(["part_id", "n"], [["a", 1.5]])[:-1])
    assert result.keys == [] and "to long" in result.rejects[0].reason


# -- properties ----------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_validator_never_raises_on_arbitrary_bytes(raw: bytes, terminated: bool) -> None:
    for spec in (TYPED, UNDECLARED):
        result = Validator(spec).line(raw, terminated)
        assert isinstance(result, LineResult)
        if result.error is not None:
            assert result.keys == [] and result.values == {} and result.rejects == []
        else:
            assert terminated, "an unterminated line is a torn write, never accepted"
            assert all(type(k) is str and k for k in result.keys)


_COLUMN_NAMES = ["part_id", "message_id", "part_index", "i", "l", "d", "b", "ts", "day", "s", "req", "x", "y"]
_ISOISH = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.dates().map(lambda d: d.isoformat()),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?\Z"),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63) - 2, max_value=2**64 + 2),
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    _ISOISH,
)
_VALUES = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                          max_size=3), max_leaves=6)
_EDGE_INTS = st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
_NUMBERS = st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), _EDGE_INTS, st.floats(allow_nan=False,
                                                                                               allow_infinity=False))
# values that are *nearly* right for a column, so casting edges are hit often, not by luck
_PLAUSIBLE = {
    "part_id": st.text(max_size=6) | st.none(),
    "req": st.text(max_size=3),
    "message_id": st.text(max_size=4),
    "part_index": _NUMBERS,
    "i": _NUMBERS,
    "l": _NUMBERS,
    "d": _NUMBERS,
    "x": _NUMBERS,
    "b": st.booleans() | st.integers(0, 1),
    "ts": _ISOISH,
    "day": _ISOISH,
}


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed envelopes with every kind of value, plus some line-level damage."""
    columns = draw(st.lists(st.sampled_from(_COLUMN_NAMES) | st.text(min_size=1, max_size=5), min_size=1,
                            max_size=8, unique=True))
    if draw(st.integers(0, 3)):  # mostly carry the key and the required column, so rows get as far as casting
        columns = ["part_id", "req", *(c for c in columns if c not in ("part_id", "req"))]
    row = st.tuples(*(st.one_of(_PLAUSIBLE.get(c, _VALUES), _PLAUSIBLE.get(c, _VALUES), _VALUES)
                      for c in columns)).map(list)
    odd_row = st.one_of(_VALUES, st.lists(_VALUES, max_size=len(columns) + 1))
    rows = draw(st.lists(st.one_of(row, row, row, odd_row), max_size=6))
    env: dict[str, Any] = {"version": 1, "columns": columns, "rows": rows}
    damage = draw(st.sampled_from(["none"] * 6 + ["version", "columns", "rows", "extra", "drop"]))
    if damage == "version":
        env["version"] = draw(st.sampled_from([True, 1.0, "1", 2, None, 0]))
    elif damage == "columns":
        env["columns"] = draw(st.sampled_from([[], [""], ["a", "a"], "part_id", [1], None]))
    elif damage == "rows":
        env["rows"] = draw(_SCALARS)
    elif damage == "extra":
        env[draw(st.text(max_size=5))] = draw(_VALUES)
    elif damage == "drop":
        del env[draw(st.sampled_from(["version", "columns", "rows"]))]
    return json.dumps(env).encode()


def _assert_committable(spec: TableSpec, v: Validator, result: LineResult) -> None:
    """What flush does with accepted rows: Arrow table of the table's schema, right row count."""
    from spoold.iceberg.schema import new_schema, to_arrow

    n = len(result.keys)
    assert all(type(k) is str and k for k in result.keys)
    assert result.values.get(spec.key, []) == result.keys
    assert all(len(col) == n for col in result.values.values())
    schema = new_schema(spec, v.types)
    table = to_arrow(result.values, n, schema)
    assert table.num_rows == n
    for field in schema.fields:
        if field.required:
            assert table.column(field.name).null_count == 0, field.name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(envelopes(), min_size=1, max_size=3), st.booleans())
def test_validator_never_raises_and_never_accepts_what_flush_cannot_commit(lines: list[bytes], declared: bool) -> None:
    from spoold.keys.batch import Batch

    spec = TYPED if declared else UNDECLARED
    v = Validator(spec)  # one validator over several lines, like a flush over a file
    batch = Batch(v.types)
    for raw in lines:
        result = v.line(raw)
        if result.error is not None:
            assert result.keys == [] and result.rejects == []
            continue
        env = orjson.loads(raw)
        assert len(result.keys) + len(result.rejects) == len(env["rows"])
        _assert_committable(spec, v, result)
        batch.add(result)
    # flush commits the rows of several lines at once, with the types as they are at the end
    from spoold.iceberg.schema import batch_to_arrow, new_schema

    table = batch_to_arrow(batch, new_schema(spec, v.types))
    assert table.num_rows == len(batch) and table.column(spec.key).to_pylist() == batch.keys

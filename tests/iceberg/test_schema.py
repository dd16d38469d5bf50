"""Table specs → Iceberg schemas and partition specs; validated columns (and Batches) → Arrow tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    FloatType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from spoold.config import Column, PartitionField, TableSpec
from spoold.envelope import Validator
from spoold.errors import ConfigError
from spoold.iceberg.schema import batch_to_arrow, new_schema, partition_spec, table_types, to_arrow, type_conflicts
from spoold.keys.batch import Batch

SPEC = TableSpec(
    "chat.parts",
    columns=(Column("part_id", "string", True), Column("ts", "timestamptz"), Column("n", "int"),
             Column("day", "date"), Column("ok", "boolean", True)),
    declared=True,
)


def test_new_schema_puts_declared_columns_first_then_inferred_ones() -> None:
    schema = new_schema(SPEC, {"extra": "double", "n": "long"})  # a declared type wins over an inferred one
    assert [(f.field_id, f.name, str(f.field_type), f.required) for f in schema.fields] == [
        (1, "part_id", "string", True), (2, "ts", "timestamptz", False), (3, "n", "int", False),
        (4, "day", "date", False), (5, "ok", "boolean", True), (6, "extra", "double", False)]


def test_inferred_schema_makes_only_the_key_required() -> None:
    schema = new_schema(TableSpec("free.t"), {"part_id": "string", "v": "long", "s": "string"})
    assert [(f.name, f.required) for f in schema.fields] == [("part_id", True), ("v", False), ("s", False)]


@pytest.mark.parametrize(("field", "transform", "name"), [
    (PartitionField("day", "ts"), "day", "ts_day"),
    (PartitionField("hour", "ts"), "hour", "ts_hour"),
    (PartitionField("month", "ts"), "month", "ts_month"),
    (PartitionField("year", "ts"), "year", "ts_year"),
    (PartitionField("identity", "n"), "identity", "n"),
    (PartitionField("bucket", "part_id", 16), "bucket[16]", "part_id_bucket"),
    (PartitionField("truncate", "part_id", 4), "truncate[4]", "part_id_truncate"),
    (PartitionField("void", "n"), "void", "n_void"),
])
def test_partition_spec_maps_each_transform(field: PartitionField, transform: str, name: str) -> None:
    spec = TableSpec("chat.parts", partition_by=(field,), columns=SPEC.columns, declared=True)
    schema = new_schema(spec, {})
    (pf,) = partition_spec(spec, schema).fields
    assert (str(pf.transform), pf.name, pf.field_id) == (transform, name, 1000)
    assert schema.find_column_name(pf.source_id) == field.column


def test_partition_on_a_missing_column_is_a_clear_config_error() -> None:
    spec = TableSpec("free.t", partition_by=(PartitionField("day", "ts"),))
    with pytest.raises(ConfigError, match="day\\(ts\\) names column 'ts', which the table lacks"):
        partition_spec(spec, new_schema(spec, {"part_id": "string"}))


def test_table_types_reads_back_spooled_types_and_skips_what_envelopes_cannot_fill() -> None:
    schema = Schema(
        NestedField(1, "part_id", StringType(), required=True),
        NestedField(2, "f", FloatType()),
        NestedField(3, "i", IntegerType()),
        NestedField(4, "tags", ListType(5, StringType())),
        NestedField(6, "amount", DecimalType(10, 2)),
        NestedField(7, "deep", StructType(NestedField(8, "d", DecimalType(10, 2)))),
    )
    types, required = table_types(schema)
    assert types == {"part_id": "string", "f": "float", "i": "int", "tags": "list<string!>",
                     "amount": "decimal(10, 2)", "deep": str(schema.find_field("deep").field_type)}  # no value casts
    assert required == {"part_id"}
    assert table_types(new_schema(SPEC, {}))[0] == {c.name: c.type for c in SPEC.columns}


def test_type_conflicts_allow_only_safe_widening() -> None:
    schema = new_schema(SPEC, {"big": "long", "x": "double"})
    assert type_conflicts({"n": "int", "big": "int", "x": "double"}, ["n", "big", "x"], schema) == {}
    assert type_conflicts({"big": "double", "n": "long", "part_id": "string"}, ["big", "n", "part_id", "new"],
                          schema) == {"big": ("double", "long"), "n": ("long", "int")}


def test_to_arrow_shapes_cast_values_exactly_like_the_schema() -> None:
    schema = new_schema(SPEC, {"extra": "string"})
    stamp = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    micros = (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    values = {"ok": [True, False], "part_id": ["a", "b"], "ts": [micros, None], "day": [20455, None],
              "n": [2**31 - 1, None]}
    table = to_arrow(values, 2, schema)
    assert table.schema.names == ["part_id", "ts", "n", "day", "ok", "extra"]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("n").type == pa.int32()
    assert not table.schema.field("part_id").nullable
    rows = table.to_pylist()
    assert rows[0]["ts"] == stamp
    assert rows[0]["day"] == date(2026, 1, 2)
    assert rows[0]["n"] == 2**31 - 1 and rows[1]["n"] is None
    assert [r["extra"] for r in rows] == [None, None]  # absent from the batch: null


# -- timestamp casting: the vectorized path gives exactly what the per-value caster gives -------------
_TS_SPEC = TableSpec("t.ts", columns=(Column("part_id", "string", True), Column("ts", "timestamptz")), declared=True)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _reference(value: str | None) -> int | None | str:
    """The SPEC's rule, value by value: ISO-8601, `Z` or an offset, none means UTC."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return "reject"
    return ((dt if dt.tzinfo else dt.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


_near_iso = st.builds(
    lambda y, mo, d, h, mi, s, frac, tz, sep: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{tz}",
    st.sampled_from([999, 1000, 1969, 1970, 2000, 2024, 2025, 9999]), st.integers(0, 13), st.integers(0, 32),
    st.integers(0, 24), st.integers(0, 60), st.integers(0, 60),
    st.sampled_from(["", ".5", ".123", ".123456", ".1234567", "."]),
    st.sampled_from(["", "Z", "z", "+02:30", "-05:00", "+23:59", "+24:00", "-00:00", "+0530", "+05", " Z"]),
    st.sampled_from(["T", " ", "t"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.one_of(st.none(), _near_iso, st.text(max_size=25)), min_size=1, max_size=12),
       filler=st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-02-30T00:00:00Z"]))
def test_timestamp_columns_cast_exactly_like_the_per_value_rule(values: list[str | None], filler: str) -> None:
    column = values + [filler] * 70  # long enough for the vectorized path to be tried
    result = Validator(_TS_SPEC).rows(["part_id", "ts"], [[f"k{i}", v] for i, v in enumerate(column)])
    want = [_reference(v) for v in column]
    assert sorted(r.index for r in result.rejects) == [i for i, w in enumerate(want) if w == "reject"]
    assert result.values.get("ts", []) == [w for w in want if w != "reject"]


BATCH_TYPES = {"part_id": "string", "n": "int", "ts": "timestamptz", "tags": "list<string>"}
BATCH_SCHEMA = Schema(
    NestedField(1, "part_id", StringType(), required=True), NestedField(2, "n", LongType()),
    NestedField(3, "ts", TimestamptzType()), NestedField(4, "tags", ListType(5, StringType())),
    NestedField(6, "extra", StringType()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(envelopes=st.lists(st.tuples(st.integers(1, 6), st.sets(st.sampled_from(["n", "ts", "tags"]))), max_size=12),
       segment=st.integers(1, 8))
def test_a_batch_gives_the_same_table_however_it_is_cut_into_segments(
        envelopes: list[tuple[int, set[str]]], segment: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns come and go between envelopes; Arrow segments are sealed mid-way; an int column meets a long one."""
    monkeypatch.setattr(Batch, "SEGMENT_ROWS", segment)
    batch, expected = Batch(BATCH_TYPES), {c: [] for c in BATCH_TYPES}
    for e, (m, cols) in enumerate(envelopes):
        keys = [f"k{e}-{i}" for i in range(m)]
        values = {"part_id": keys, "n": [i * (e + 1) for i in range(m)], "ts": [e * 10**6 + i for i in range(m)],
                  "tags": [None] * m}
        values = {c: v for c, v in values.items() if c == "part_id" or c in cols}
        batch.add_rows(keys, values)
        for c in BATCH_TYPES:
            expected[c] += values.get(c, [None] * m)
    n = len(batch)
    assert set(batch.columns()) == ({"part_id"} | {c for _, cols in envelopes for c in cols} if n else set())
    for _ in range(2):  # a retried commit assembles it again
        table = batch_to_arrow(batch, BATCH_SCHEMA)
        assert table.schema == to_arrow({}, 0, BATCH_SCHEMA).schema and table.num_rows == n
        assert table.column("n").type == pa.int64() and table.column("tags").null_count == n
        assert table.to_pydict() == to_arrow(expected, n, BATCH_SCHEMA).to_pydict()
        assert table.column("extra").null_count == n and batch.keys == expected["part_id"]


def test_batch_arrow_types_are_what_pyiceberg_writes_for_each_type() -> None:
    """The batch converts values without pyiceberg; the seam then needs no cast for any type spoold writes."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from spoold.iceberg.schema import ICEBERG_TYPES, iceberg_type
    from spoold.keys.batch import ARROW_TYPES, arrow_of

    assert {name: schema_to_pyarrow(t) for name, t in ICEBERG_TYPES.items()} == ARROW_TYPES
    for typ in ("struct<a: long!, b: struct<t: timestamptz>, `odd name`: list<string!>>", "list<struct<x: date>>",
                "map<string, list<double>>", "map<string, json!>"):
        assert schema_to_pyarrow(iceberg_type(typ)) == arrow_of(typ), typ

"""Table specs and validated columns → Iceberg schemas, partition specs and Arrow tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.partitioning import PartitionField as IcebergPartitionField
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    VoidTransform,
    YearTransform,
)
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from spoold.config import TableSpec
from spoold.errors import ConfigError
from spoold.keys.batch import Batch

ICEBERG_TYPES: dict[str, IcebergType] = {
    "string": StringType(),
    "int": IntegerType(),
    "long": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "boolean": BooleanType(),
    "timestamptz": TimestamptzType(),
    "date": DateType(),
}
_NAMES = {type(t): name for name, t in ICEBERG_TYPES.items()}


def table_types(schema: Schema) -> tuple[dict[str, str], frozenset[str]]:
    """Column types (spoold's names) and required columns of an existing table.

    A column of a type spoold does not write (nested, decimal, timestamp
    without zone...) gets its Iceberg type's name, which no value casts to:
    the validator rejects any non-null value for it instead of guessing.
    """
    types = {f.name: _NAMES.get(type(f.field_type), str(f.field_type)) for f in schema.fields}
    required = frozenset(f.name for f in schema.fields if f.required)
    return types, required


_SAFE = {("int", "long"), ("float", "double")}  # values validated as the first fit a column of the second


def type_conflicts(types: Mapping[str, str], columns: Iterable[str], schema: Schema) -> dict[str, tuple[str, str]]:
    """Columns validated as one type that the table holds as another: ``{column: (validated, table)}``.

    Such values must not reach Arrow: ``pa.array([2.5], type=pa.int64())``
    silently truncates to 2. Only an ``int`` into a ``long`` column, or a ``float`` into a ``double``, is safe.
    """
    have, _ = table_types(schema)
    out = {}
    for c in columns:
        mine, theirs = types.get(c), have.get(c)
        if mine is not None and theirs is not None and mine != theirs and (mine, theirs) not in _SAFE:
            out[c] = (mine, theirs)
    return out


def new_schema(spec: TableSpec, types: Mapping[str, str]) -> Schema:
    """The schema a table is created with: declared columns first, then inferred ones."""
    fields = []
    declared = {c.name: c for c in spec.columns}
    names = list(declared) + [n for n in types if n not in declared]
    for i, name in enumerate(names, 1):
        col = declared.get(name)
        typ = col.type if col else types[name]
        required = col.required if col else name == spec.key
        fields.append(NestedField(i, name, ICEBERG_TYPES[typ], required=required))
    return Schema(*fields)


def partition_spec(spec: TableSpec, schema: Schema) -> PartitionSpec:
    """``partition_by`` (e.g. ``day(ts)``) as an Iceberg partition spec."""
    return PartitionSpec(*(IcebergPartitionField(source_id, 1000 + i, transform, name)
                           for i, (source_id, transform, name) in enumerate(_wanted(spec, schema))))


def _wanted(spec: TableSpec, schema: Schema) -> list[tuple[int, Transform[Any, Any], str]]:
    """``partition_by`` as (source field id, transform, field name), each checked against ``schema``."""
    out = []
    for p in spec.partition_by:
        try:
            source = schema.find_field(p.column)
        except ValueError:
            raise ConfigError(
                f"tables.{spec.identifier!r}.partition_by: {p} names column {p.column!r}, which the table lacks"
            ) from None
        transform = _transform(p.transform, p.param)
        if not transform.can_transform(source.field_type):
            raise ConfigError(f"tables.{spec.identifier!r}.partition_by: {p} cannot partition the table's column "
                              f"{p.column!r}, which is {source.field_type}")
        name = p.column if p.transform == "identity" else f"{p.column}_{p.transform}"
        out.append((source.field_id, transform, name))
    return out


def describe_spec(fields: Iterable[IcebergPartitionField], schema: Schema) -> str:
    """A partition spec as ``partition_by`` writes it: ``[day(ts), bucket[16](part_id)]``."""
    return "[" + ", ".join(f"{f.transform}({schema.find_column_name(f.source_id)})" for f in fields) + "]"


def spec_changes(spec: TableSpec, tbl: Table) -> tuple[list[str], list[tuple[str, Transform[Any, Any], str]]]:
    """What makes ``tbl``'s partition spec ``partition_by``: (field names to remove, (column, transform, name)
    to add); both empty when it already is (in any order). Only for a table whose config sets ``partition_by``."""
    schema = tbl.schema()
    have = {(f.source_id, str(f.transform)): f.name for f in tbl.spec().fields}
    want = {(source_id, str(t)): (schema.find_column_name(source_id), t, name)
            for source_id, t, name in _wanted(spec, schema)}
    # (a void field is what a format-1 table keeps of a removed one: already as good as gone)
    remove = [name for k, name in have.items() if k not in want and k[1] != "void"]
    return remove, [v for k, v in want.items() if k not in have]


def unwritable(tbl: Table) -> str | None:
    """Why no row can be written into ``tbl`` whatever its values (None: it can take rows).

    A partition field whose transform cannot take its column's type (``day`` of a
    string, made by an earlier spoold or another tool) fails every write.
    """
    schema = tbl.schema()
    for f in tbl.spec().fields:
        try:
            source = schema.find_field(f.source_id)
        except ValueError:
            return f"its partition field {f.name!r} has no source column"
        if not f.transform.can_transform(source.field_type):
            return (f"its partition field {f.transform}({source.name}) cannot take column {source.name!r}, "
                    f"which the table holds as {source.field_type}")
    return None


def _transform(name: str, param: int | None) -> Transform[Any, Any]:
    simple = {
        "identity": IdentityTransform,
        "year": YearTransform,
        "month": MonthTransform,
        "day": DayTransform,
        "hour": HourTransform,
        "void": VoidTransform,
    }
    if name in simple:
        return simple[name]()
    if name == "bucket":
        return BucketTransform(num_buckets=param or 1)
    return TruncateTransform(width=param or 1)


def arrow_type(name: str) -> pa.DataType | None:
    """The Arrow type values of spoold type ``name`` are written as (None: a type spoold doesn't write)."""
    typ = _ARROW_TYPES.get(name)
    if typ is None and name in ICEBERG_TYPES:
        typ = _ARROW_TYPES[name] = schema_to_pyarrow(ICEBERG_TYPES[name])
    return typ


_ARROW_TYPES: dict[str, pa.DataType] = {}


def batch_to_arrow(batch: Batch, schema: Schema) -> pa.Table:
    """A batch's rows as an Arrow table shaped exactly like ``schema`` (built anew at each call: a retry needs it)."""
    return to_arrow(batch.arrays(), len(batch), schema)


def to_arrow(values: Mapping[str, list[Any] | pa.Array | pa.ChunkedArray], nrows: int, schema: Schema) -> pa.Table:
    """Validated, cast column values → an Arrow table shaped exactly like ``schema``.

    Timestamps arrive as epoch microseconds and dates as epoch days (what the
    validator casts them to), which Arrow takes without parsing again. Arrow
    arrays of another type are cast (an ``int`` column into a ``long`` one).
    """
    arrow_schema = schema_to_pyarrow(schema, include_field_ids=False)
    arrays = []
    for field in arrow_schema:
        col = values.get(field.name)
        if col is None:
            arrays.append(pa.nulls(nrows, field.type))
        elif isinstance(col, (pa.Array, pa.ChunkedArray)):
            arrays.append(col if col.type == field.type else col.cast(field.type))
        else:
            try:
                arrays.append(pa.array(col, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                # Only reachable when another writer changed a column's type under us.
                arrays.append(pa.array(col).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)

"""Table specs and validated columns → Iceberg schemas, partition specs and Arrow tables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import count
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
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from spoold.coltypes import Field, ListOf, MapOf, Struct, Type, parse, render
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
    "json": StringType(),
}
_NAMES = {type(t): name for name, t in ICEBERG_TYPES.items() if name != "json"}
JSON_DOC = "JSON text"  # the doc of a string field spoold made for a json column: it takes any JSON value


def field_doc(typ: Type) -> str | None:
    """The doc of a field spoold makes of type ``typ``: how a ``json`` column is told from a plain string."""
    return JSON_DOC if typ == "json" else None


def table_types(schema: Schema) -> tuple[dict[str, str], frozenset[str]]:
    """Column types (spoold's names, nested ones as type text) and required columns of an existing table.

    A column of a type spoold does not write (decimal, timestamp without
    zone, a map of non-string keys, at any depth...) gets its Iceberg type's
    name, which no value casts to: the validator rejects any non-null value
    for it instead of guessing. A string column stays ``string`` (JSON text,
    as spoold wrote objects before nested columns existed), unless spoold
    made it as ``json``.
    """
    types = {f.name: _spoold_type(f) for f in schema.fields}
    required = frozenset(f.name for f in schema.fields if f.required)
    return types, required


_SAFE = {("int", "long"), ("float", "double")}  # values validated as the first fit a column of the second


class _Unwritable(Exception):
    pass


def _spoold_type(f: NestedField) -> str:
    tree = type_tree(f)
    return render(tree) if tree is not None else str(f.field_type)


def type_tree(f: NestedField) -> Type | None:
    """A table field's type as spoold's type tree (None: a type spoold does not write)."""
    try:
        return _tree(f.field_type, f.doc)
    except _Unwritable:
        return None


def _tree(t: IcebergType, doc: str | None) -> Type:
    if isinstance(t, StructType):
        return Struct(tuple(Field(f.name, _tree(f.field_type, f.doc), f.required) for f in t.fields))
    if isinstance(t, ListType):
        return ListOf(_tree(t.element_type, None), t.element_required)
    if isinstance(t, MapType):
        if not isinstance(t.key_type, StringType):
            raise _Unwritable
        return MapOf(_tree(t.value_type, None), t.value_required)
    name = _NAMES.get(type(t))
    if name is None:
        raise _Unwritable
    return "json" if name == "string" and doc == JSON_DOC else name


def iceberg_type(typ: str, ids: Iterator[int] | None = None) -> IcebergType:
    """Type text → the Iceberg type (nested field ids from ``ids``; the catalog assigns fresh ones anyway)."""
    tree = parse(typ)
    if tree is None:
        raise ValueError(f"not a type spoold writes: {typ}")
    return _iceberg(tree, ids if ids is not None else count(1))


def _iceberg(t: Type, ids: Iterator[int]) -> IcebergType:
    if isinstance(t, str):
        return ICEBERG_TYPES[t]
    if isinstance(t, Struct):
        return StructType(*(NestedField(next(ids), f.name, _iceberg(f.type, ids), required=f.required,
                                        doc=field_doc(f.type)) for f in t.fields))
    if isinstance(t, ListOf):
        return ListType(next(ids), _iceberg(t.element, ids), element_required=t.required)
    return MapType(next(ids), StringType(), next(ids), _iceberg(t.value, ids), value_required=t.required)


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
            if {mine, theirs} == {"string", "json"} or fits(parse(mine), parse(theirs)):
                continue
            out[c] = (mine, theirs)
    return out


def fits(mine: Type | None, theirs: Type | None) -> bool:
    """Values validated as ``mine`` can be written into ``theirs`` (the same, or a struct with more fields)."""
    if mine is None or theirs is None:
        return False
    if mine == theirs or (mine, theirs) in _SAFE or {mine, theirs} == {"string", "json"}:
        return True
    if isinstance(mine, Struct) and isinstance(theirs, Struct):
        have = {f.name: f for f in theirs.fields}
        return all(f.name in have and fits(f.type, have[f.name].type) for f in mine.fields)
    if isinstance(mine, ListOf) and isinstance(theirs, ListOf):
        return fits(mine.element, theirs.element)
    if isinstance(mine, MapOf) and isinstance(theirs, MapOf):
        return fits(mine.value, theirs.value)
    return False


def new_schema(spec: TableSpec, types: Mapping[str, str]) -> Schema:
    """The schema a table is created with: declared columns first, then inferred ones."""
    fields = []
    declared = {c.name: c for c in spec.columns}
    names = list(declared) + [n for n in types if n not in declared]
    ids = count(len(names) + 1)  # nested fields' ids follow the columns'
    for i, name in enumerate(names, 1):
        col = declared.get(name)
        typ = col.type if col else types[name]
        required = col.required if col else name == spec.key
        fields.append(NestedField(i, name, iceberg_type(typ, ids), required=required,
                                  doc=field_doc(typ)))
    return Schema(*fields)


def partition_spec(spec: TableSpec, schema: Schema) -> PartitionSpec:
    """``partition_by`` (e.g. ``day(ts)``) as an Iceberg partition spec."""
    return PartitionSpec(*(IcebergPartitionField(source_id, 1000 + i, transform, name)
                           for i, (source_id, transform, name) in enumerate(_wanted(spec, schema))))


def _wanted(spec: TableSpec, schema: Schema, taken: Iterable[str] = ()) -> list[tuple[int, Transform[Any, Any], str]]:
    """``partition_by`` as (source field id, transform, field name), each checked against ``schema``.

    Iceberg refuses a partition field named like a column (other than an identity field's own) or like
    another field of the spec (``taken``: the names the table's spec keeps), so a name that would clash
    gets the transform's parameter, then a number: ``n_bucket``, ``n_bucket_8``, ``ts_day_2``.
    """
    out = []
    used = set(taken)
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
        name = p.column if p.transform == "identity" else _free_name(f"{p.column}_{p.transform}", p.param, schema,
                                                                      used)
        used.add(name)
        out.append((source.field_id, transform, name))
    return out


def _free_name(base: str, param: int | None, schema: Schema, used: set[str]) -> str:
    """``base`` unless a column or another partition field has that name: then with ``param``, or a number."""
    candidates = [base] + ([f"{base}_{param}"] if param is not None else [])
    for name in candidates + [f"{base}_{i}" for i in range(2, 2 + len(used) + len(schema.fields) + 2)]:
        if name not in used and not _is_column(schema, name):
            return name
    raise AssertionError("unreachable: more candidates than names taken")


def _is_column(schema: Schema, name: str) -> bool:
    try:
        schema.find_field(name)
    except ValueError:
        return False
    return True


def describe_spec(fields: Iterable[IcebergPartitionField], schema: Schema) -> str:
    """A partition spec as ``partition_by`` writes it: ``[day(ts), bucket[16](part_id)]``."""
    return "[" + ", ".join(f"{f.transform}({schema.find_column_name(f.source_id)})" for f in fields) + "]"


def spec_changes(spec: TableSpec, tbl: Table) -> tuple[list[str], list[tuple[str, Transform[Any, Any], str]]]:
    """What makes ``tbl``'s partition spec ``partition_by``: (field names to remove, (column, transform, name)
    to add); both empty when it already is (in any order). Only for a table whose config sets ``partition_by``."""
    schema = tbl.schema()
    have = {(f.source_id, str(f.transform)): f.name for f in tbl.spec().fields}
    # (a name the current spec holds cannot be given to a new field, even one whose field is removed meanwhile)
    taken = [f.name for f in tbl.spec().fields if str(f.transform) != "void"]
    want = {(source_id, str(t)): (schema.find_column_name(source_id), t, name)
            for source_id, t, name in _wanted(spec, schema, taken)}
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


def named_like_a_partition(tbl: Table, columns: Iterable[str]) -> str | None:
    """Why a new column of ``columns`` cannot be added: Iceberg refuses a column named like a partition field of
    any spec the table had (None: none is)."""
    parts = {f.name: f for s in tbl.specs().values() for f in s.fields}
    for c in columns:
        if c in parts:
            field = describe_spec([parts[c]], tbl.schema())[1:-1]
            return f"column {c!r} has the name of the table's partition field {field}"
    return None


def doubled(tbl: Table) -> str | None:
    """Why no row can be written into ``tbl`` (None: nothing of this kind): two partition fields of one column,
    which pyiceberg's writer refuses (another tool may make such a spec; spoold's config cannot)."""
    seen: dict[int, IcebergPartitionField] = {}
    for f in tbl.spec().fields:
        if f.source_id in seen:
            column = tbl.schema().find_column_name(f.source_id)
            void = " (a format-1 table keeps a removed field as void)" if "void" in (
                str(f.transform), str(seen[f.source_id].transform)) else ""
            return (f"its partition fields {seen[f.source_id].transform}({column}) and {f.transform}({column}) both "
                    f"partition column {column!r}{void}, which spoold cannot write")
        seen[f.source_id] = f
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
            arrays.append(col if col.type == field.type else _conform(col, field.type))
        else:
            try:
                arrays.append(pa.array(col, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                # Only reachable when another writer changed a column's type under us.
                arrays.append(pa.array(col).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def _conform(col: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """``col`` as type ``typ``: a cast, or for a struct the table has more fields in (or in another order,
    another writer's evolution), rebuilt by field name, the missing ones null."""
    try:
        return col.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return pa.array(col.to_pylist(), type=typ)


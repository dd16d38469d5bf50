"""Nested types: the grammar, the two cast paths (a column at a time, a value at a time), and inference.

The property: :func:`spoold.nested.cast_nested` (child columns through the
scalar fast paths) and :func:`spoold.nested.cast_values` (value by value)
reject the same rows with the same reasons and keep the same values (as Arrow
stores them), on arbitrary nested types and values that mostly fit them.
"""

from __future__ import annotations

import string
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoold.casts import CASTERS, CHECKERS, cast_column
from spoold.coltypes import Field, ListOf, MapOf, Struct, Type, TypeSyntax, parse, parse_declared, render
from spoold.config import TableSpec
from spoold.envelope import Validator, encode
from spoold.keys.batch import arrow_of
from spoold.nested import MAX_STRUCT_FIELDS, cast_nested, cast_values, extend, infer

LEAVES = ["string", "long", "int", "double", "boolean", "timestamptz", "date", "json"]
names = st.text(alphabet=string.ascii_lowercase + "_ `.", min_size=1, max_size=3)


def types(max_leaves: int = 6) -> st.SearchStrategy[Type]:
    def nest(inner: st.SearchStrategy[Type]) -> st.SearchStrategy[Type]:
        fields = st.lists(st.tuples(names, inner, st.booleans()), min_size=1, max_size=3,
                          unique_by=lambda f: f[0].casefold())
        return st.one_of(fields.map(lambda fs: Struct(tuple(Field(*f) for f in fs))),
                         st.builds(ListOf, inner, st.booleans()), st.builds(MapOf, inner, st.booleans()))

    return st.recursive(st.sampled_from(LEAVES), nest, max_leaves=max_leaves)


LEAF_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=4), "json": st.one_of(st.text(max_size=4), st.integers(), st.booleans()),
    "long": st.integers(-(2**63), 2**63 - 1), "int": st.integers(-(2**31), 2**31 - 1),
    "double": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**60), 2**60)),
    "boolean": st.booleans(), "date": st.dates().map(lambda d: d.isoformat()),
    "timestamptz": st.datetimes().map(lambda d: d.isoformat() + "Z"),
}
junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), st.floats(allow_nan=False)),
                    lambda inner: st.one_of(st.lists(inner, max_size=2),
                                            st.dictionaries(st.text(max_size=2), inner, max_size=2)), max_leaves=4)


def shaped(t: Type) -> st.SearchStrategy[Any]:
    """Values of type ``t`` mostly, with nulls, missing fields and odd values at any depth."""
    if isinstance(t, str):
        fit = LEAF_VALUES[t]
    elif isinstance(t, Struct):
        fit = st.fixed_dictionaries({}, optional={f.name: shaped(f.type) for f in t.fields})
    elif isinstance(t, ListOf):
        fit = st.lists(shaped(t.element), max_size=3)
    else:
        fit = st.dictionaries(st.text(max_size=2), shaped(t.value), max_size=3)
    return st.one_of(fit, fit, fit, fit, st.none(), junk)


@st.composite
def columns(draw: st.DrawFn) -> tuple[Type, list[Any]]:
    t = draw(types())
    return t, draw(st.lists(shaped(t), min_size=1, max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(columns())
def test_the_column_and_the_value_paths_agree_on_arbitrary_nested_values(col: tuple[Type, list[Any]]) -> None:
    t, vals = col
    for casters, vector in ((CASTERS, True), (CHECKERS, False)):
        bad_col: dict[int, str] = {}
        out_col = cast_nested("c", t, list(vals), bad_col,
                              lambda n, typ, v, b, c=casters, x=vector: cast_column(n, typ, v, b, c, vector=x))
        bad_val: dict[int, str] = {}
        out_val = cast_values("c", t, list(vals), bad_val, casters)
        assert bad_col == bad_val
        if casters is CASTERS:
            keep = [i for i in range(len(vals)) if i not in bad_col]
            typ = arrow_of(render(t))
            assert pa.array([out_col[i] for i in keep], typ) == pa.array([out_val[i] for i in keep], typ)


def test_the_grammar_reads_required_positions_quoted_names_and_says_where_it_fails() -> None:
    text, required = parse_declared("struct< id : long!, `a b`: list<string!>, m: map<string, json>>!")
    assert (text, required) == ("struct<id: long!, `a b`: list<string!>, m: map<string, json>>", True)
    assert parse(text) == Struct((Field("id", "long", True), Field("a b", ListOf("string", True)),
                                  Field("m", MapOf("json"))))
    for bad, where in (("list<string", "expected '>', got the end at character 12"),
                       ("map<long, string>", "a map's keys must be string at character 5"),
                       ("struct<a: long, A: int>", "field 'A' appears twice at character 17"),
                       ("string!!", "unexpected '!' at character 8")):
        with pytest.raises(TypeSyntax, match=where):
            parse_declared(bad)


def test_inference_types_objects_and_arrays_and_falls_back_to_json_where_it_must() -> None:
    fallbacks: list[str] = []
    t = infer({"u": {"id": 1, "n": None}, "tags": ["a"], "nums": [1, 2.5], "e": [], "mixed": [{"a": 1}, "s"],
               "wide": {f"k{i}": i for i in range(MAX_STRUCT_FIELDS + 1)}, "dotted": {"http.method": "GET"}},
              fallbacks, "p")
    assert render(t) == ("struct<u: struct<id: long>, tags: list<string>, nums: list<double>, mixed: json, "
                         "wide: json, dotted: json>")
    assert [f.split(":")[0] for f in fallbacks] == ["p.mixed", "p.wide", "p.dotted"]
    grown = extend(t, infer({"u": {"id": "x", "email": "e"}, "e": [True]}, [], "p"))
    assert render(grown).startswith("struct<u: struct<id: long, email: string>, ") and "e: list<boolean>" in \
        render(grown)  # new fields added, an existing field's type never changed


def test_a_validator_grows_a_tables_struct_but_never_a_declared_one() -> None:
    free = TableSpec("ev.t")
    v = Validator(free, {"part_id": "string", "p": "struct<a: long>"})
    res = v.line(encode(["part_id", "p"], [["x", {"a": 1, "b": "new"}]])[:-1])
    assert res.keys == ["x"] and v.inferred() == {"p": "struct<a: long, b: string>"}
    v.pin()
    assert v.inferred() == {}
    from spoold.config import Column

    declared = TableSpec("ev.t", columns=(Column("part_id", "string", True), Column("p", "struct<a: long>")),
                         declared=True)
    res = Validator(declared).line(encode(["part_id", "p"], [["x", {"a": 1, "b": "new"}], ["y", {"a": 2}]])[:-1])
    assert res.keys == ["y"] and res.rejects[0].reason == 'column p: unexpected field "b"'


def test_nested_fields_count_against_max_columns() -> None:
    v = Validator(TableSpec("ev.t", max_columns=5))
    res = v.line(encode(["part_id", "p"], [["a", {"x": 1, "y": 2}], ["b", {"x": 1, "y": 2, "z": 3}]])[:-1])
    assert res.keys == ["a", "b"] and v.types["p"] == "struct<x: long, y: long, z: long>"  # 2 columns + 3 fields
    res = v.line(encode(["part_id", "p"], [["c", {"x": 1, "w": 2}], ["d", {"x": 2}]])[:-1])
    assert res.keys == ["d"] and res.rejects[0].reason == 'column p: unexpected field "w"'
    res = v.line(encode(["part_id", "q"], [["e", {"a": 1}]])[:-1])
    assert res.keys == [] and "beyond [tables] max_columns = 5" in res.rejects[0].reason


def test_a_value_too_deep_to_store_is_rejected_never_dropped_and_never_shapes_a_column() -> None:
    deep: Any = 1
    for _ in range(80):
        deep = [deep]
    v = Validator(TableSpec("ev.t"))
    res = v.line(encode(["part_id", "x"], [["a", deep]])[:-1])
    assert res.keys == [] and "nested too deeply" in res.rejects[0].reason
    res = v.line(encode(["part_id", "y"], [["b", deep], ["c", [1]]])[:-1])
    assert res.keys == ["c"] and v.types["y"] == "list<long>"

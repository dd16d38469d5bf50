"""Nested values: strict casts into struct, list and map columns, and their types inferred (pure, no I/O).

:func:`cast_nested` judges a nested column a column at a time: a struct's
fields are gathered into child columns (``map(dict.get, ...)``, C speed), a
list's elements and a map's values into one flat column, and each child column
goes through the scalar rules of :mod:`spoold.casts` (its fast paths
included). :func:`cast_value` is the same rules value by value (a small
envelope is cheaper that way); both give the same verdicts and values (a test
checks it). A reason names the path: ``column props.user.id: expected long,
got string "x"``, ``column tags[2]: ...``, ``column attrs["k"]: ...``.

:func:`infer` types a value of a column the table does not have yet, and
:func:`extend` adds what a later value shows (new struct fields, the element
type of a list that was empty) to a type, never changing a type it has.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Mapping
from itertools import accumulate, chain, islice, repeat
from typing import Any

import orjson

from spoold.casts import MAX_DEPTH, too_deep
from spoold.coltypes import Field, ListOf, MapOf, Struct, Type

log = logging.getLogger(__name__)
# leaf(name, typ, vals, row_bad) -> cast values: the scalar rules for one column (spoold.casts.cast_column)
Leaf = Callable[[str, str, list[Any], dict[int, str]], list[Any]]
MAX_STRUCT_FIELDS = 100  # an object with more keys than this is stored as JSON text, not inferred as a struct
MAX_INFER_DEPTH = 16  # objects/arrays nested deeper than this inside a column are stored as JSON text
MAX_FIELD_NAME_BYTES = 255
_NONE = type(None)
_EMPTY: dict[str, Any] = {}
_HOLE = "\x00"  # stands for a list index or map key in a child column's reasons, filled in per row
_SAID: set[tuple[str, str]] = set()  # (table, path) of the json fallbacks already logged
_KIND = {str: "string", bool: "boolean", int: "number", float: "number", dict: "object", list: "array"}


class Bad(Exception):
    """A nested value that does not fit its type (the message is the row's reason)."""


def _describe(v: Any) -> str:
    kind = _KIND.get(type(v), type(v).__name__)
    if too_deep(v):
        return f"{kind} nested over {MAX_DEPTH} levels"
    try:
        text = orjson.dumps(v).decode()
    except TypeError:
        text = repr(v)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _why(path: str, expected: str, v: Any) -> str:
    return f"column {path}: expected {expected}, got {_describe(v)}"


def _expected(t: Type) -> str:
    return t if isinstance(t, str) else "struct" if isinstance(t, Struct) else "list" if isinstance(t, ListOf) \
        else "map"


def _fill(reason: str, at: str) -> str:
    head, _, tail = reason.rpartition(_HOLE)
    return f"{head}{at}{tail}"


# -- a column at a time ----------------------------------------------------------------------------------------
def cast_nested(path: str, t: Type, vals: list[Any], row_bad: dict[int, str], leaf: Leaf) -> list[Any]:
    """Column ``path``'s values cast to ``t`` (a rejected value becomes None and its row is named in ``row_bad``).

    Returns ``vals`` itself when nothing needed converting.
    """
    if not vals:
        return vals
    if isinstance(t, str):
        local: dict[int, str] = {}
        out = leaf(path, t, vals, local)
        for pos in sorted(local):
            row_bad.setdefault(pos, _why(path, t, vals[pos]))
        return out
    want = dict if isinstance(t, (Struct, MapOf)) else list
    kinds = set(map(type, vals))
    if not kinds <= {want, _NONE}:
        vals = list(vals)
        for pos, v in enumerate(vals):
            if v is not None and type(v) is not want:
                row_bad.setdefault(pos, _why(path, _expected(t), v))
                vals[pos] = None
        kinds = set(map(type, vals))
    if kinds <= {_NONE}:
        return vals
    if isinstance(t, Struct):
        return _struct(path, t, vals, _NONE in kinds, row_bad, leaf)
    return _flat(path, t, vals, _NONE in kinds, row_bad, leaf)


def _struct(path: str, t: Struct, vals: list[Any], nulls: bool, row_bad: dict[int, str], leaf: Leaf) -> list[Any]:
    dvals = [_EMPTY if v is None else v for v in vals] if nulls else vals
    names = t.names()
    unknown = set().union(*dvals) - names
    if unknown:  # a key the struct lacks: a row giving it a value is rejected (null is as good as absent)
        for pos, d in enumerate(dvals):
            extra = next((k for k in d if k in unknown and d[k] is not None), None) if not d.keys() <= names else None
            if extra is not None:
                row_bad.setdefault(pos, f"column {path}: unexpected field {orjson.dumps(extra).decode()}")
    children, changed = [], False
    for f in t.fields:
        child = list(map(dict.get, dvals, repeat(f.name)))
        cast = cast_nested(f"{path}.{f.name}", f.type, child, row_bad, leaf)
        if f.required and None in cast:
            for pos, v in enumerate(cast):
                if v is None and vals[pos] is not None:
                    row_bad.setdefault(pos, f"column {path}.{f.name}: required field is null")
        changed = changed or cast is not child
        children.append(cast)
    if not changed:
        return vals
    fields = [f.name for f in t.fields]
    return [None if v is None else dict(zip(fields, row, strict=True)) for v, row in zip(vals, zip(*children))]


def _flat(path: str, t: ListOf | MapOf, vals: list[Any], nulls: bool, row_bad: dict[int, str],
          leaf: Leaf) -> list[Any]:
    """A list's elements (a map's values) as one flat child column, reasons mapped back to rows."""
    is_map = isinstance(t, MapOf)
    hole = _EMPTY if is_map else ()
    sized = [hole if v is None else v for v in vals] if nulls else vals
    flat = list(chain.from_iterable(map(dict.values, sized) if is_map else sized))  # type: ignore[arg-type]
    child_t, required = (t.value, t.required) if isinstance(t, MapOf) else (t.element, t.required)
    child_bad: dict[int, str] = {}
    cast = cast_nested(f"{path}[{_HOLE}]", child_t, flat, child_bad, leaf)
    if required and None in cast:
        for pos, v in enumerate(cast):
            if v is None:
                child_bad.setdefault(pos, f"column {path}[{_HOLE}]: required {'value' if is_map else 'element'} "
                                          "is null")
    if child_bad:
        starts = [0, *accumulate(map(len, sized))]
        keys = list(chain.from_iterable(sized)) if is_map else None
        for pos in sorted(child_bad):
            row = bisect_right(starts, pos) - 1
            at = orjson.dumps(keys[pos]).decode() if keys is not None else str(pos - starts[row])
            row_bad.setdefault(row, _fill(child_bad[pos], at))
    if cast is flat:
        return vals
    it = iter(cast)
    if is_map:
        return [None if v is None else dict(zip(v, islice(it, len(v)), strict=True)) for v in vals]
    return [None if v is None else list(islice(it, len(v))) for v in vals]


# -- a value at a time -----------------------------------------------------------------------------------------
def cast_value(path: str, t: Type, v: Any, casters: Mapping[str, Any]) -> Any:
    """One value cast to ``t`` with the rules of :func:`cast_nested`; raises :class:`Bad` naming the path."""
    if v is None:
        return None
    if isinstance(t, str):
        try:
            return casters[t](v)
        except Exception:  # the scalar casters' refusals (TypeError, ValueError, OverflowError, too deep)
            raise Bad(_why(path, t, v)) from None
    if isinstance(t, Struct):
        if type(v) is not dict:
            raise Bad(_why(path, "struct", v))
        names = t.names()
        extra = next((k for k in v if k not in names and v[k] is not None), None)
        if extra is not None:
            raise Bad(f"column {path}: unexpected field {orjson.dumps(extra).decode()}")
        out = {}
        for f in t.fields:
            x = cast_value(f"{path}.{f.name}", f.type, v.get(f.name), casters)
            if x is None and f.required:
                raise Bad(f"column {path}.{f.name}: required field is null")
            out[f.name] = x
        return out
    is_map = isinstance(t, MapOf)
    if type(v) is not (dict if is_map else list):
        raise Bad(_why(path, _expected(t), v))
    child_t, required = (t.value, t.required) if isinstance(t, MapOf) else (t.element, t.required)
    items = v.items() if is_map else enumerate(v)
    res = {}
    for at, x in items:
        shown = orjson.dumps(at).decode() if is_map else str(at)
        y = cast_value(f"{path}[{shown}]", child_t, x, casters)
        if y is None and required:
            raise Bad(f"column {path}[{shown}]: required {'value' if is_map else 'element'} is null")
        res[at] = y
    return res if is_map else list(res.values())


def cast_values(path: str, t: Type, vals: list[Any], row_bad: dict[int, str], casters: Mapping[str, Any]) -> list[Any]:
    """:func:`cast_value` over a column (what :func:`cast_nested` gives, a value at a time)."""
    out = []
    for pos, v in enumerate(vals):
        try:
            out.append(cast_value(path, t, v, casters))
        except Bad as e:
            row_bad.setdefault(pos, str(e))
            out.append(None)
    return out


# -- inference ---------------------------------------------------------------------------------------------------
_SCALAR = {str: "string", bool: "boolean", int: "long", float: "double"}


def field_name_refusal(name: str) -> str | None:
    """Why a JSON key cannot be a struct field's name (None: it can)."""
    if not name or not name.isprintable() or "." in name:
        return "a key that is empty, not printable or holds a '.'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FIELD_NAME_BYTES:
        return f"a key longer than {MAX_FIELD_NAME_BYTES} bytes"
    return None


def infer(v: Any, fallbacks: list[str], path: str = "", depth: int = 0) -> Type | None:
    """The type of a value (None: it does not show one yet: null, an empty array, an object of nulls).

    A value that cannot be typed consistently is ``json``, and its path goes into ``fallbacks``.
    """
    kind = type(v)
    if kind is dict:
        why = None
        if depth >= MAX_INFER_DEPTH:
            why = f"nested deeper than {MAX_INFER_DEPTH} levels"
        elif len(v) > MAX_STRUCT_FIELDS:
            why = f"an object of more than {MAX_STRUCT_FIELDS} keys"
        else:
            folded = {k.casefold() for k in v}
            why = next((w for k in v if (w := field_name_refusal(k)) is not None), None) or (
                "keys that differ only in case" if len(folded) != len(v) else None)
        if why is not None:
            fallbacks.append(f"{path}: {why}")
            return "json"
        fields = tuple(Field(k, ft) for k, x in v.items() if (ft := infer(x, fallbacks, f"{path}.{k}", depth + 1)))
        return Struct(fields) if fields else None
    if kind is list:
        if depth >= MAX_INFER_DEPTH:
            fallbacks.append(f"{path}: nested deeper than {MAX_INFER_DEPTH} levels")
            return "json"
        el: Type | None = None
        for x in v:
            xt = infer(x, fallbacks, f"{path}[]", depth + 1)
            if xt is not None:
                el = xt if el is None else _unify(el, xt)
                if el is None:
                    fallbacks.append(f"{path}: an array of values of different types")
                    return "json"
        return ListOf(el) if el is not None else None
    return _SCALAR.get(kind)


def _unify(a: Type, b: Type) -> Type | None:
    """One type for the elements of one array (numbers: double), or None when there is none."""
    if a == b:
        return a
    if {a, b} == {"long", "double"}:
        return "double"
    if isinstance(a, Struct) and isinstance(b, Struct):
        have = {f.name: f for f in a.fields}
        fields = list(a.fields)
        for f in b.fields:
            g = have.get(f.name)
            if g is None:
                if len(fields) >= MAX_STRUCT_FIELDS:
                    return None
                fields.append(f)
            else:
                u = _unify(g.type, f.type)
                fields[fields.index(g)] = Field(g.name, u if u is not None else "json")
        return Struct(tuple(fields))
    if isinstance(a, ListOf) and isinstance(b, ListOf):
        u = _unify(a.element, b.element)
        return ListOf(u) if u is not None else None
    return None


def extend(known: Type | None, new: Type | None) -> Type | None:
    """``known`` with what ``new`` adds: struct fields it lacks (at any depth), a type where it had none.

    A type ``known`` has is never changed: a later value of another type is rejected by the cast.
    """
    if known is None:
        return new
    if new is None or known == new:
        return known
    if isinstance(known, Struct) and isinstance(new, Struct):
        have = {f.name: i for i, f in enumerate(known.fields)}
        folded = {f.name.casefold() for f in known.fields}
        fields = list(known.fields)
        for f in new.fields:
            i = have.get(f.name)
            if i is not None:
                g = fields[i]
                fields[i] = Field(g.name, extend(g.type, f.type) or g.type, g.required)
            elif f.name.casefold() not in folded and len(fields) < MAX_STRUCT_FIELDS:
                fields.append(Field(f.name, f.type))
                folded.add(f.name.casefold())
        return Struct(tuple(fields))
    if isinstance(known, ListOf) and isinstance(new, ListOf):
        return ListOf(extend(known.element, new.element) or known.element, known.required)
    return known


def infer_column(table: str, name: str, known: Type | None, vals: list[Any]) -> Type | None:
    """``known`` (None: a new column) extended by every value of column ``name`` in order; a json fallback is
    logged once per table and path."""
    fallbacks: list[str] = []
    shape = known
    for v in vals:
        if v is not None and not too_deep(v):  # a value too deep to store at all never shapes a column
            shape = extend(shape, infer(v, fallbacks, name))
    for why in dict.fromkeys(fallbacks):
        path, _, reason = why.partition(": ")
        if (table, path) not in _SAID and len(_SAID) < 10_000:  # once per process (bounded: paths come from rows)
            _SAID.add((table, path))
            log.info("table %s: column %s cannot be typed consistently (%s); stored as JSON text", table, path, reason)
    return shape


"""Column types as text: scalars, ``json``, and nested ``struct<...>``, ``list<...>``, ``map<string, ...>`` (pure).

A type is handled everywhere as its canonical text (``struct<id: long!, tags: list<string>>``): it is what
the config declares, what the validator keeps per column and what errors show. :func:`parse` turns the text
into a small tree (cached) for the code that walks nested values; :func:`render` is its inverse. ``!`` after
a type makes that position required: a struct field, a list element, a map value, or (in the config) the
column itself. The grammar is in docs/configuration.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

SCALARS = ("string", "int", "long", "float", "double", "boolean", "timestamptz", "date", "json")
MAX_TYPE_DEPTH = 32  # struct/list/map levels a declared type may have
_BARE = re.compile(r"[A-Za-z0-9_]+")
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: Type
    required: bool = False


@dataclass(frozen=True, slots=True)
class Struct:
    fields: tuple[Field, ...]

    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)


@dataclass(frozen=True, slots=True)
class ListOf:
    element: Type
    required: bool = False


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Type
    required: bool = False


Type = str | Struct | ListOf | MapOf


class TypeSyntax(ValueError):
    """A type text that does not parse; ``pos`` is the 0-based offset of the problem (shown 1-based)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(f"{message} at character {pos + 1}")
        self.pos = pos


def parse_declared(text: str) -> tuple[str, bool]:
    """A config's column type → (canonical type text, required). Raises :class:`TypeSyntax`."""
    p = _Parser(text)
    typ, required = p.typ(0)
    p.space()
    if p.i != len(text):
        raise TypeSyntax(f"unexpected {text[p.i]!r}", p.i)
    return render(typ), required


@lru_cache(maxsize=4096)
def parse(text: str) -> Type | None:
    """The tree of a canonical type text (a scalar's name for a scalar); None if it is not one spoold writes."""
    if text in SCALARS:
        return text
    try:
        typ, required = _Parser(text).typ(0)
    except TypeSyntax:
        return None
    return None if required else typ


def nested(text: str) -> Struct | ListOf | MapOf | None:
    """The tree of a nested type text, or None (a scalar, or a type spoold does not write)."""
    t = parse(text) if "<" in text else None
    return None if t is None or isinstance(t, str) else t


def render(t: Type) -> str:
    """The canonical text of a type tree."""
    if isinstance(t, str):
        return t
    if isinstance(t, Struct):
        return "struct<" + ", ".join(f"{quote(f.name)}: {render(f.type)}{'!' if f.required else ''}"
                                     for f in t.fields) + ">"
    if isinstance(t, ListOf):
        return f"list<{render(t.element)}{'!' if t.required else ''}>"
    return f"map<string, {render(t.value)}{'!' if t.required else ''}>"


def quote(name: str) -> str:
    """A struct field's name as the grammar writes it (backticks unless it is ``[A-Za-z0-9_]+``)."""
    return name if _BARE.fullmatch(name) else "`" + name.replace("`", "``") + "`"


def count_fields(t: Type) -> int:
    """How many struct fields a type has at every depth (what a table's column bound counts)."""
    if isinstance(t, Struct):
        return sum(1 + count_fields(f.type) for f in t.fields)
    if isinstance(t, ListOf):
        return count_fields(t.element)
    if isinstance(t, MapOf):
        return count_fields(t.value)
    return 0


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def expect(self, ch: str) -> None:
        self.space()
        if not self.s.startswith(ch, self.i):
            got = repr(self.s[self.i]) if self.i < len(self.s) else "the end"
            raise TypeSyntax(f"expected {ch!r}, got {got}", self.i)
        self.i += len(ch)

    def typ(self, depth: int) -> tuple[Type, bool]:
        if depth > MAX_TYPE_DEPTH:
            raise TypeSyntax(f"nested more than {MAX_TYPE_DEPTH} levels", self.i)
        self.space()
        at = self.i
        m = _WORD.match(self.s, self.i)
        word = m.group() if m else ""
        self.i += len(word)
        t: Type
        if word == "struct":
            self.expect("<")
            fields: list[Field] = []
            seen: set[str] = set()
            while True:
                self.space()
                name_at = self.i
                name = self.name()
                if name.casefold() in seen:
                    raise TypeSyntax(f"field {name!r} appears twice", name_at)
                seen.add(name.casefold())
                self.expect(":")
                ft, req = self.typ(depth + 1)
                fields.append(Field(name, ft, req))
                self.space()
                if self.s.startswith(">", self.i):
                    self.i += 1
                    break
                self.expect(",")
            t = Struct(tuple(fields))
        elif word == "list":
            self.expect("<")
            el, req = self.typ(depth + 1)
            self.expect(">")
            t = ListOf(el, req)
        elif word == "map":
            self.expect("<")
            self.space()
            if not self.s.startswith("string", self.i):
                raise TypeSyntax("a map's keys must be string", self.i)
            self.i += len("string")
            self.expect(",")
            val, req = self.typ(depth + 1)
            self.expect(">")
            t = MapOf(val, req)
        elif word in SCALARS:
            t = word
        else:
            shown = repr(word) if word else (repr(self.s[at]) if at < len(self.s) else "the end")
            raise TypeSyntax(f"unknown type {shown} (expected one of {', '.join(SCALARS)}, struct<...>, "
                             "list<...> or map<string, ...>)", at)
        self.space()
        if self.s.startswith("!", self.i):
            self.i += 1
            return t, True
        return t, False

    def name(self) -> str:
        self.space()
        if self.s.startswith("`", self.i):
            out, j = [], self.i + 1
            while j < len(self.s):
                if self.s[j] == "`":
                    if self.s.startswith("``", j):
                        out.append("`")
                        j += 2
                        continue
                    self.i = j + 1
                    name = "".join(out)
                    if not name or not name.isprintable():
                        raise TypeSyntax("a field name must be non-empty and printable", j)
                    return name
                out.append(self.s[j])
                j += 1
            raise TypeSyntax("unclosed '`'", self.i)
        m = _BARE.match(self.s, self.i)
        if m is None:
            got = repr(self.s[self.i]) if self.i < len(self.s) else "the end"
            raise TypeSyntax(f"expected a field name, got {got}", self.i)
        self.i = m.end()
        return m.group()

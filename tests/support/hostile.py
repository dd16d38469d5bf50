"""Hostile values for the tests of issue 19: the line that crashed orjson 3.12.0/3.13.0 (built with the stdlib)."""

from __future__ import annotations

import json

SEED = '{"version":1,"columns":["part_id","msg"],"rows":[["x:0","hello"]],"at":1.5}'
AT = 1778000000.123  # an envelope's `at` (a real time): with it the loop aborts in orjson 3.13.0 near
# iteration 73; with the literal 1.5 the output stays under the size that triggers it on this build.

REPRODUCER = f"""
import orjson, sys
line = {SEED!r}.encode()
for at in (1.5, {AT!r}):
    for i in range(200):
        obj = orjson.loads(line)
        try:
            line = orjson.dumps({{"version": 1, "columns": list(obj), "rows": [list(obj.values())], "at": at}})
        except TypeError:
            break  # a clean refusal (orjson's recursion limit) is fine; an abort is not
    line = {SEED!r}.encode()
print("clean")
"""


def crash_object(iterations: int = 73) -> dict[str, object]:
    """The issue's reproducer chain, made by the stdlib: encoding this row's envelope aborted orjson 3.13.0."""
    line = SEED
    for _ in range(iterations):
        obj = json.loads(line)
        line = json.dumps({"version": 1, "columns": list(obj), "rows": [list(obj.values())], "at": AT},
                          separators=(",", ":"))
    return json.loads(line)  # type: ignore[no-any-return]


def crash_line(key: str = "crash") -> bytes:
    """A jsonl source line holding the crash value (one row, with a key column)."""
    return json.dumps({"part_id": key, **crash_object()}, separators=(",", ":")).encode() + b"\n"

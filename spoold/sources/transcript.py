"""The ``transcript`` source format: Claude Code session logs, one row per content part.

A line is a message when its ``type`` is ``"user"`` or ``"assistant"`` and it
carries a ``message`` object; every other line (attachment, system, ai-title,
file-history-snapshot, last-prompt, permission-mode, queue-operation, and
any type Claude Code adds later) yields no rows.

Each content part of a message becomes one row with exactly these columns:

- ``part_id``: ``f"{uuid}:{part_index}"`` — the key; ``uuid`` must be a
  non-empty string, otherwise the line is an error ("no usable key").
- ``message_id``: the line's ``uuid``.
- ``part_index``: the part's 0-based position in ``message.content``.
- ``session_id``: the line's ``sessionId`` (None when absent).
- ``ts``: the line's ``timestamp``, unchanged (None when absent).
- ``role``: ``message.role``; when absent, the line's ``type``.
- ``kind``: the part's ``type``.
- ``text``: for ``text`` parts, the ``text`` string; for ``thinking`` parts,
  the ``thinking`` string when it is non-empty (Claude Code often writes an
  empty one next to a signature); otherwise — tool_use, tool_result, image,
  empty thinking, a text part without a string — the whole part as JSON
  with sorted keys, so the same part always gives the same text.

``content`` may be a string: one part of kind ``text`` at index 0. A list
element that is a bare string is likewise a ``text`` part. A list element
that is neither an object nor a string, or an object without a string
``type``, becomes kind ``"unknown"`` with its JSON as text, so no content is
dropped silently. ``content`` that is neither a string nor a list is an error, and so is a
part nested too deeply to write back as JSON (orjson reads 1,024 levels but
writes ~254).
"""

from __future__ import annotations

import orjson

from spoold.casts import MAX_DEPTH, too_deep
from spoold.sources.jsonl import parse_object
from spoold.sources.line import SourceLineError

MESSAGE_TYPES = ("user", "assistant")
# The columns a transcript materializes to, typed as a ``[tables."x".columns]`` config declares them.
COLUMNS = {
    "part_id": "string!",
    "message_id": "string",
    "part_index": "int",
    "session_id": "string",
    "ts": "timestamptz",
    "role": "string",
    "kind": "string",
    "text": "string",
}
TYPES = {name: typ.removesuffix("!") for name, typ in COLUMNS.items()}  # what an undeclared table gets


def materialize(line: bytes) -> list[dict[str, object]]:
    """Return one row per content part of a message line, ``[]`` for other lines.

    Raises SourceLineError when the line is not a JSON object, or is a
    message without a usable ``uuid`` or with malformed ``content``.
    """
    obj = parse_object(line)
    message = obj.get("message")
    if obj.get("type") not in MESSAGE_TYPES or type(message) is not dict:
        return []
    uuid = obj.get("uuid")
    if type(uuid) is not str or not uuid:
        raise SourceLineError("no usable key: message line has no uuid")
    content = message.get("content")
    if type(content) is str:
        parts: list[object] = [content]
    elif type(content) is list:
        parts = content
    else:
        raise SourceLineError("message content is neither a string nor a list")
    session_id = obj.get("sessionId")
    ts = obj.get("timestamp")
    role = message.get("role", obj["type"])
    rows: list[dict[str, object]] = []
    for index, part in enumerate(parts):
        kind, text = _kind_and_text(part)
        rows.append(
            {
                "part_id": f"{uuid}:{index}",
                "message_id": uuid,
                "part_index": index,
                "session_id": session_id,
                "ts": ts,
                "role": role,
                "kind": kind,
                "text": text,
            }
        )
    return rows


def _kind_and_text(part: object) -> tuple[str, str]:
    if type(part) is str:
        return "text", part
    if type(part) is not dict:
        return "unknown", _as_json(part)
    kind = part.get("type")
    if type(kind) is not str:
        return "unknown", _as_json(part)
    if kind == "text":
        text = part.get("text")
        if type(text) is str:
            return kind, text
    elif kind == "thinking":
        thinking = part.get("thinking")
        if type(thinking) is str and thinking:
            return kind, thinking
    return kind, _as_json(part)


def _as_json(value: object) -> str:
    if too_deep(value):  # before the encoder: orjson 3.12/3.13 crash on some deep values
        raise SourceLineError(f"a content part is nested too deeply (over {MAX_DEPTH} levels)")
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson reads 1,024 levels of nesting but writes only ~254
        raise SourceLineError("a content part is nested too deeply to store as JSON") from None

"""OTLP/HTTP logs → rows of the OTLP logs table (its schema: docs/ingest.md).

Decoded with the official ``opentelemetry-proto`` messages (protobuf, or the
OTLP JSON encoding read into the same messages), imported at the first
``/v1/logs`` request so a daemon that never gets one does not carry them.
One row per log record, after the OpenTelemetry logs data model; attributes,
resource attributes and a non-string body are JSON text, queryable in DuckDB
with ``attributes->>'$.key'``. A record's key (``record_id``) is a
fingerprint of its content, so an exporter's retry of a batch doubles
nothing: SHA-256 over the deterministic protobuf encoding of the record, of
its scope and of its resource (with their schema URLs), each part tagged and
length-prefixed. It covers every field OTLP defines, stored or not (bytes and
the base64 string of them, NaN and "nan" differ); the JSON encoding is read
into the same messages first, so it gives the same key as protobuf. Fields
unknown to this OTLP version are dropped from both before hashing.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from spoold.ingest.ndjson import MAX_ROWS, BadBody, TooLarge

MAX_VALUE_DEPTH = 64  # an AnyValue nested deeper is refused (the record, not the batch)
_ONE_E9 = 1_000_000_000


class RejectedRecord(Exception):
    """This log record cannot become a row (partial success names the count and the first reason)."""


def decode(body: bytes, json: bool) -> Any:
    """The body as an ``ExportLogsServiceRequest``; BadBody when it is none."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    msg = ExportLogsServiceRequest()
    if not json:
        _count_entries(body)  # before decoding: a record is two bytes on the wire and ~130 decoded
        try:
            msg.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as e:
            raise BadBody(f"not an OTLP ExportLogsServiceRequest (protobuf): {e}") from None
        msg.DiscardUnknownFields()  # as the JSON encoding's parser does (ignore_unknown_fields): one key for both
        return _bounded(msg)
    try:
        doc = orjson.loads(body)
        _hex_ids(doc)  # OTLP JSON writes ids in hex, where protobuf's JSON mapping expects base64
        _count_json(doc)  # before the records become messages
        json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    except (orjson.JSONDecodeError, json_format.ParseError, ValueError, TypeError, AttributeError,
            RecursionError) as e:
        raise BadBody(f"not an OTLP ExportLogsServiceRequest (JSON): {e}") from None
    return _bounded(msg)


def _bounded(msg: Any) -> Any:
    """``msg``, unless it holds more than ``MAX_ROWS`` records (TooLarge): a few bytes each, a row each."""
    if sum(len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs) > MAX_ROWS:
        raise TooLarge(f"more than {MAX_ROWS} log records in one request")
    return msg


def _count_entries(body: bytes) -> None:
    """TooLarge past ``MAX_ROWS`` log records, or resource and scope entries, read off the protobuf wire format
    (stopping there); a malformed body is left to the decoder to name."""
    records = entries = 0
    try:
        for rl in _fields(memoryview(body), 1):  # ExportLogsServiceRequest.resource_logs
            for sl in _fields(rl, 2):  # ResourceLogs.scope_logs
                if (entries := entries + 1) > MAX_ROWS:
                    raise TooLarge(f"more than {MAX_ROWS} resource and scope entries in one request")
                for _ in _fields(sl, 2):  # ScopeLogs.log_records
                    if (records := records + 1) > MAX_ROWS:
                        raise TooLarge(f"more than {MAX_ROWS} log records in one request")
            if (entries := entries + 1) > MAX_ROWS:
                raise TooLarge(f"more than {MAX_ROWS} resource and scope entries in one request")
    except (ValueError, IndexError):
        return


def _count_json(doc: dict[str, Any]) -> None:
    records = 0
    for rl in doc.get("resourceLogs") or doc.get("resource_logs") or []:
        for sl in (rl.get("scopeLogs") or rl.get("scope_logs") or []) if type(rl) is dict else []:
            recs = (sl.get("logRecords") or sl.get("log_records") or []) if type(sl) is dict else []
            records += len(recs) if type(recs) is list else 0
    if records > MAX_ROWS:
        raise TooLarge(f"more than {MAX_ROWS} log records in one request")


def _fields(buf: memoryview, number: int) -> Any:
    """The payloads of the length-delimited fields ``number`` of one protobuf message; ValueError if malformed."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _read_varint(buf, i)
        kind = key & 7
        if kind == 2:
            size, i = _read_varint(buf, i)
            if i + size > end:
                raise ValueError("truncated")
            if key >> 3 == number:
                yield buf[i : i + size]
            i += size
        elif kind == 0:
            i = _read_varint(buf, i)[1]
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
        else:
            raise ValueError("wire type")


def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 63:
            raise ValueError("varint")


def _hex_ids(doc: Any) -> None:
    if type(doc) is not dict:
        raise ValueError("expected a JSON object")
    for rl in doc.get("resourceLogs") or doc.get("resource_logs") or []:
        for sl in (rl.get("scopeLogs") or rl.get("scope_logs") or []) if type(rl) is dict else []:
            for rec in (sl.get("logRecords") or sl.get("log_records") or []) if type(sl) is dict else []:
                if type(rec) is not dict:
                    continue
                for k in ("traceId", "spanId", "trace_id", "span_id"):
                    v = rec.get(k)
                    if type(v) is str and v:
                        try:
                            rec[k] = base64.b64encode(bytes.fromhex(v)).decode()
                        except ValueError:
                            raise ValueError(f"{k} {v[:64]!r} is not hex") from None


def rows(msg: Any) -> tuple[list[dict[str, Any]], int, str]:
    """(rows, records rejected, the first rejection's reason) of an ``ExportLogsServiceRequest``."""
    out: list[dict[str, Any]] = []
    rejected, reason = 0, ""
    for rl in msg.resource_logs:
        resource = _json(_kvs(rl.resource.attributes, 0))
        in_resource = _part(hashlib.sha256(_DOMAIN), b"R", rl.resource)
        in_resource.update(_field(b"r", rl.schema_url.encode()))
        for sl in rl.scope_logs:
            scope_name, scope_version = sl.scope.name or None, sl.scope.version or None
            in_scope = _part(in_resource.copy(), b"S", sl.scope)
            in_scope.update(_field(b"s", sl.schema_url.encode()))
            for rec in sl.log_records:
                try:
                    row = _row(rec, resource, scope_name, scope_version)
                except RejectedRecord as e:
                    rejected += 1
                    reason = reason or str(e)
                    continue
                row["record_id"] = _part(in_scope.copy(), b"L", rec).hexdigest()[:32]
                out.append(row)
    return out, rejected, reason


_DOMAIN = b"spoold otlp log record id v2\n"


def _part(h: Any, tag: bytes, msg: Any) -> Any:
    h.update(_field(tag, msg.SerializeToString(deterministic=True)))
    return h


def _field(tag: bytes, data: bytes) -> bytes:
    """A tagged, length-prefixed part: no two sequences of parts encode alike."""
    return tag + len(data).to_bytes(8, "big") + data


def _row(rec: Any, resource: str, scope_name: str | None, scope_version: str | None) -> dict[str, Any]:
    body = _value(rec.body, 0) if rec.HasField("body") else None
    row: dict[str, Any] = {
        "time": _iso(rec.time_unix_nano),
        "observed_time": _iso(rec.observed_time_unix_nano),
        "severity_number": int(rec.severity_number),
        "severity_text": rec.severity_text or None,
        "event_name": rec.event_name or None,
        "body": body if body is None or type(body) is str else _json(body),
        "attributes": _json(_kvs(rec.attributes, 0)),
        "resource_attributes": resource,
        "scope_name": scope_name,
        "scope_version": scope_version,
        "trace_id": rec.trace_id.hex() or None,
        "span_id": rec.span_id.hex() or None,
        "flags": int(rec.flags),
    }
    return row


def _iso(ns: int) -> str | None:
    if not ns:
        return None  # 0: unknown, in the data model
    secs, rest = divmod(ns, _ONE_E9)
    try:
        return datetime.fromtimestamp(secs, UTC).replace(microsecond=rest // 1000).isoformat()
    except (OverflowError, ValueError, OSError):
        raise RejectedRecord(f"timestamp {ns} is out of range") from None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _kvs(kvs: Any, depth: int) -> dict[str, Any]:
    return {kv.key: _value(kv.value, depth + 1) for kv in kvs}


def _value(v: Any, depth: int) -> Any:
    """An AnyValue as JSON: strings, booleans, integers, doubles as such; bytes as base64; arrays and
    key-value lists as arrays and objects."""
    if depth > MAX_VALUE_DEPTH:
        raise RejectedRecord(f"a value is nested deeper than {MAX_VALUE_DEPTH} levels")
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x, depth + 1) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _kvs(v.kvlist_value.values, depth)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    x = getattr(v, kind)
    if kind == "double_value" and (x != x or x in (float("inf"), float("-inf"))):
        return str(x)  # JSON has no NaN or infinity
    return x


def response(rejected: int, message: str, json: bool) -> bytes:
    """An ``ExportLogsServiceResponse``: empty, or with ``partial_success`` when records were rejected."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    resp = ExportLogsServiceResponse()
    if rejected:
        resp.partial_success.rejected_log_records = rejected
        resp.partial_success.error_message = message
    return json_format.MessageToJson(resp).encode() if json else resp.SerializeToString()


def status(code: int, message: str, json: bool) -> bytes:
    """A ``google.rpc.Status`` (what OTLP/HTTP answers an error with). Its two fields are written here: the
    package that has the message (googleapis-common-protos) would be a dependency for these few bytes."""
    if json:
        return orjson.dumps({"code": code, "message": message})
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

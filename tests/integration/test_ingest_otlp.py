"""OTLP/HTTP logs from a real OpenTelemetry client into ``otel.logs``, read back with DuckDB, retries doubled never."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
from support.daemonproc import DaemonProc, wait_for
from support.ingest import TOKEN, ingest_address, ingest_config, post
from support.tables import committed_counts, load_table

TRACE, SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def test_the_otel_sdk_exporter_lands_records_with_their_attributes_once(tmp_path: Path) -> None:
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        LogRecordExportResult,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.resources import Resource

    cfg = ingest_config(tmp_path)
    d = DaemonProc(cfg)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout", "host.id": 7}))
    try:
        endpoint = f"http://{ingest_address(d)}/v1/logs"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        exporter = OTLPLogExporter(endpoint=endpoint, headers=auth, compression=Compression.Gzip)
        memory = InMemoryLogRecordExporter()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
        logger = logging.getLogger("shop.checkout")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(LoggingHandler(logger_provider=provider))
        for i in range(3):
            logger.warning("payment declined %d", i, extra={"user.id": f"u{i}", "amount": 10 * i, "retry": i == 2})
        sent = memory.get_finished_logs()
        assert len(sent) == 3
        # The exporter's retry of a batch it already sent: the same records again, gzip off this time.
        again = OTLPLogExporter(endpoint=endpoint, headers=auth)
        assert again.export(sent) == LogRecordExportResult.SUCCESS
        # The OTLP JSON encoding of the same batch (hex ids, lowerCamelCase, int64 as strings), by hand: the
        # SDK's exporter speaks protobuf only. One record gets a trace context, so it is a new record.
        doc = json_format.MessageToDict(encode_logs(sent))
        assert doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["timeUnixNano"].isdigit()
        code, headers, body = post(endpoint.split("/", 3)[2], "/v1/logs", orjson.dumps(doc),
                                   Content_Type="application/json")
        assert (code, headers["content-type"], orjson.loads(body)) == (200, "application/json", {})
        traced = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
        traced.update(traceId=TRACE, spanId=SPAN)
        code, _, body = post(endpoint.split("/", 3)[2], "/v1/logs", orjson.dumps(doc), Content_Type="application/json")
        assert code == 200
        wait_for(lambda: sum(committed_counts(cfg, "otel.logs", "record_id").values()) == 4, "4 records committed")
        assert set(committed_counts(cfg, "otel.logs", "record_id").values()) == {1}

        from integration.test_duckdb import duckdb_connection

        con = duckdb_connection()
        rel = f"iceberg_scan('{load_table(cfg, 'otel.logs').metadata_location}')"
        got = con.sql(f"SELECT body, severity_text, severity_number, attributes->>'$.\"user.id\"', "
                      f"CAST(attributes->>'$.amount' AS INT), resource_attributes->>'$.\"service.name\"', "
                      f"scope_name, trace_id, span_id, time IS NOT NULL FROM {rel} "
                      "ORDER BY body, trace_id NULLS FIRST").fetchall()
        assert got == [
            ("payment declined 0", "WARN", 13, "u0", 0, "checkout", "shop.checkout", None, None, True),
            ("payment declined 0", "WARN", 13, "u0", 0, "checkout", "shop.checkout", TRACE, SPAN, True),
            ("payment declined 1", "WARN", 13, "u1", 10, "checkout", "shop.checkout", None, None, True),
            ("payment declined 2", "WARN", 13, "u2", 20, "checkout", "shop.checkout", None, None, True),
        ]
    finally:
        provider.shutdown()
        d.close()


def test_bad_otlp_bodies_get_a_status_and_rejected_records_a_partial_success(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )

    cfg = ingest_config(tmp_path, spool="max_line_bytes = 4096")
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        # A record too large for a spool line is rejected alone; its sibling is appended.
        req = ExportLogsServiceRequest()
        records = req.resource_logs.add().scope_logs.add().log_records
        for text in ("x" * 10_000, "small"):
            records.add(time_unix_nano=1_796_452_000_123_456_789).body.string_value = text
        code, _, body = post(addr, "/v1/logs", req.SerializeToString(), Content_Type="application/x-protobuf")
        resp = ExportLogsServiceResponse.FromString(body)
        assert code == 200 and resp.partial_success.rejected_log_records == 1, body
        assert "longer than max_line_bytes" in resp.partial_success.error_message
        wait_for(lambda: len(committed_counts(cfg, "otel.logs", "record_id")) == 1, "the small record committed")
        tbl = load_table(cfg, "otel.logs")
        row = tbl.scan().to_arrow().to_pylist()[0]
        assert (row["body"], row["time"].isoformat()) == ("small", "2026-12-05T06:26:40.123456+00:00")
        code, headers, body = post(addr, "/v1/logs", b"\xff\xff\xff", Content_Type="application/x-protobuf")
        assert code == 400 and headers["content-type"] == "application/x-protobuf" and b"OTLP" in body
        code, _, body = post(addr, "/v1/logs", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": '
                             b'[{"traceId": "zz"}]}]}]}', Content_Type="application/json")
        assert code == 400 and orjson.loads(body)["code"] == 3 and "traceId" in orjson.loads(body)["message"]
        assert post(addr, "/v1/logs", b"{}", Content_Type="text/plain")[0] == 415
        assert len(committed_counts(cfg, "otel.logs", "record_id")) == 1
    finally:
        d.close()


def test_records_that_differ_in_any_otlp_field_are_rows_of_their_own_in_either_encoding(tmp_path: Path) -> None:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "checkout"
    variants = [  # pairs whose rows look alike, and fields no column holds
        lambda r: r.attributes.add(key="k").value.__setattr__("bytes_value", b"abc"),
        lambda r: r.attributes.add(key="k").value.__setattr__("string_value", "YWJj"),
        lambda r: r.body.kvlist_value.values.add(key="x").value.__setattr__("int_value", 1),
        lambda r: r.body.__setattr__("string_value", '{"x":1}'),
        lambda r: r.attributes.add(key="k").value.__setattr__("double_value", float("nan")),
        lambda r: r.attributes.add(key="k").value.__setattr__("string_value", "nan"),
        lambda r: [r.attributes.add(key="k").value.__setattr__("int_value", v) for v in (1, 2)],
        lambda r: r.attributes.add(key="k").value.__setattr__("int_value", 2),
        lambda r: r.__setattr__("dropped_attributes_count", 3),
        lambda r: None,
    ]
    for scope_attr in ("a", "b"):  # the same records under two scopes differing only in an attribute
        sl = rl.scope_logs.add()
        sl.scope.name = "shop"
        sl.scope.attributes.add(key="s").value.string_value = scope_attr
        for variant in variants:
            rec = sl.log_records.add(time_unix_nano=1_796_452_000_123_456_789)
            variant(rec)
    last = sl.log_records[-1]
    sl.log_records.add().CopyFrom(last)  # byte-identical in the same scope: one row
    cfg = ingest_config(tmp_path)
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        code, _, _ = post(addr, "/v1/logs", req.SerializeToString(), Content_Type="application/x-protobuf")
        assert code == 200
        doc = json_format.MessageToDict(req)  # the OTLP JSON encoding of the same batch: the same keys
        code, _, _ = post(addr, "/v1/logs", orjson.dumps(doc), Content_Type="application/json")
        assert code == 200
        assert d.stop() == 0  # its shutdown flush commits what was spooled
        counts = committed_counts(cfg, "otel.logs", "record_id")
        assert (len(counts), set(counts.values())) == (2 * len(variants), {1})
    finally:
        d.close()

"""The OTLP logs route's record key: what the deterministic-protobuf fingerprint costs per record.

Builds an ``ExportLogsServiceRequest`` of N records like an SDK's (a string
body, five attributes, one resource and scope), then times, in this process:
``otlp.rows`` whole (decode not included: rows and their keys), the key alone
as it is now (SHA-256 of the record's deterministic protobuf encoding after
the resource's and scope's), and the baseline, the key as it was before
(SHA-256 of the row's JSON with sorted keys and the two nanosecond stamps).

    .venv/bin/python bench/otlp_ids.py [--records 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from spoold.ingest import otlp


def request(n: int) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in (("service.name", "checkout"), ("host.name", "web-7"), ("process.pid", "4242")):
        rl.resource.attributes.add(key=k).value.string_value = v
    sl = rl.scope_logs.add()
    sl.scope.name, sl.scope.version = "shop.checkout", "1.4.2"
    for i in range(n):
        rec = sl.log_records.add(time_unix_nano=1_796_452_000_000_000_000 + i * 1000, severity_number=13,
                                 severity_text="WARN", observed_time_unix_nano=1_796_452_000_000_000_000 + i * 1001)
        rec.body.string_value = f"payment declined for order {i} after 3 attempts"
        rec.attributes.add(key="user.id").value.string_value = f"u{i % 977}"
        rec.attributes.add(key="amount").value.int_value = i % 500
        rec.attributes.add(key="retry").value.bool_value = i % 3 == 0
        rec.attributes.add(key="ratio").value.double_value = i / 7
        rec.attributes.add(key="code.function").value.string_value = "charge"
        rec.trace_id, rec.span_id = os.urandom(16), os.urandom(8)
    return req


def best(fn: object, rounds: int = 3) -> float:
    out = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    n = ap.parse_args().records
    req = request(n)
    rows = otlp.rows(req)[0]
    recs = list(req.resource_logs[0].scope_logs[0].log_records)
    rl, sl = req.resource_logs[0], req.resource_logs[0].scope_logs[0]

    def new_keys() -> None:
        h = otlp._part(hashlib.sha256(otlp._DOMAIN), b"R", rl.resource)
        h.update(otlp._field(b"r", rl.schema_url.encode()))
        h = otlp._part(h, b"S", sl.scope)
        h.update(otlp._field(b"s", sl.schema_url.encode()))
        for rec in recs:
            otlp._part(h.copy(), b"L", rec).hexdigest()

    def old_keys() -> None:  # the baseline: the key before this change
        for row, rec in zip(rows, recs, strict=True):
            r = {k: v for k, v in row.items() if k != "record_id"}
            canon = orjson.dumps([r, rec.time_unix_nano, rec.observed_time_unix_nano], option=orjson.OPT_SORT_KEYS)
            hashlib.sha256(canon).hexdigest()

    whole = best(lambda: otlp.rows(req))
    new, old = best(new_keys), best(old_keys)
    print(f"bench/otlp_ids.py: {n:,} records, load average {os.getloadavg()[0]:.1f}")
    print(f"otlp.rows (rows and keys): {whole / n * 1e6:6.2f} us a record")
    print(f"key now (protobuf)       : {new / n * 1e6:6.2f} us a record ({new / whole:.0%} of otlp.rows)")
    print(f"key before (row JSON)    : {old / n * 1e6:6.2f} us a record   now/before = {new / old:.2f}x")


if __name__ == "__main__":
    main()

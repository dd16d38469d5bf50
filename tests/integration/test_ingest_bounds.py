"""The ingest listener against hostile bodies and connections: gzip members and bombs, rows per request, bodies in
tiny chunks, the in-flight budget counted gunzipped, TLS handshakes counted against max_connections."""

from __future__ import annotations

import gzip
import http.client
import os
import select
import socket
import ssl
from collections import Counter
from pathlib import Path

import orjson
from support.daemonproc import DaemonProc, wait_for
from support.ingest import TOKEN, ingest_address, ingest_config, post, self_signed
from support.tables import committed_counts

TABLE = '[tables."app.events"]\n[tables."app.events".columns]\npart_id = "string!"\nn = "long"\n'
PATH = "/v1/tables/app.events"
MAX_ROWS = 100_000  # rows or log records in one request (docs/ingest.md)


def lines(keys: range) -> bytes:
    return b"".join(orjson.dumps({"part_id": f"k{k}", "n": k}) + b"\n" for k in keys)


def head(addr: str, extra: str) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/x-ndjson\r\n{extra}\r\n").encode()


def exchange(addr: str, data: bytes) -> bytes:
    """Send ``data`` on a new connection (the server may stop reading it) and return what comes back."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server answered and closed before reading it all
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def otlp_records(n: int) -> bytes:
    """An ExportLogsServiceRequest of ``n`` empty log records (two bytes each)."""
    def field(tag: int, payload: bytes) -> bytes:
        size, out = len(payload), bytearray([tag])
        while True:
            b, size = size & 0x7F, size >> 7
            out.append(b | (0x80 if size else 0))
            if not size:
                return bytes(out) + payload
    return field(0x0A, field(0x12, b"\x12\x00" * n))  # resource_logs { scope_logs { log_records {} x n } }


def peak_rss_mb(d: DaemonProc) -> float:
    status = Path(f"/proc/{d.proc.pid}/status").read_text().splitlines()
    return next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM:")) / 1024


def test_every_gzip_member_rows_per_request_and_tiny_chunks(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE)
    d = DaemonProc(cfg, fresh=True)  # its peak memory is measured
    try:
        addr = ingest_address(d)
        # A million log records in 2 KB of gzip: refused before they are decoded (~130 bytes each), let alone rows.
        before = peak_rss_mb(d)
        bomb = gzip.compress(otlp_records(1_000_000))
        assert len(bomb) < 4096
        code, _, reply = post(addr, "/v1/logs", bomb, Content_Type="application/x-protobuf", Content_Encoding="gzip")
        assert code == 413 and b"more than 100000 log records" in reply, reply
        assert peak_rss_mb(d) - before < 64
        code, _, reply = post(addr, "/v1/logs", orjson.dumps({"resourceLogs": [{"scopeLogs": [
            {"logRecords": [{}] * (MAX_ROWS + 1)}]}]}), Content_Type="application/json")
        assert code == 413 and b"more than 100000 log records" in reply, reply
        # Two gzip members one after the other (what `cat a.gz b.gz` makes): the rows of both.
        two = gzip.compress(lines(range(0, 5))) + gzip.compress(lines(range(5, 10)))
        code, _, reply = post(addr, PATH, two, Content_Encoding="gzip")
        assert (code, orjson.loads(reply)) == (200, {"table": "app.events", "rows": 10})
        assert post(addr, PATH, two[:-4], Content_Encoding="gzip")[0] == 400  # the last member cut short
        # Members that inflate past max_body_bytes together, each of them under it.
        half = gzip.compress(b" " * (9 << 20))
        code, _, reply = post(addr, PATH, half + half, Content_Encoding="gzip")
        assert code == 413 and b"once gunzipped" in reply, reply
        # More rows (records) than one request may hold, in a few KB of gzip: refused whole.
        code, _, reply = post(addr, PATH, gzip.compress(lines(range(100, 101)) * (MAX_ROWS + 1)),
                              Content_Encoding="gzip")
        assert code == 413 and b"more than 100000 lines" in reply, reply
        code, _, reply = post(addr, PATH, orjson.dumps([{"part_id": "k100", "n": 1}] * (MAX_ROWS + 1)),
                              Content_Type="application/json")
        assert code == 413 and b"more than 100000 rows" in reply, reply
        # A body in one-byte chunks: an event each for the server, so their number is bounded.
        flood = head(addr, "Transfer-Encoding: chunked\r\n") + b"1\r\n\n\r\n" * 70_000 + b"0\r\n\r\n"
        reply = exchange(addr, flood)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"chunks" in reply, reply[:300]
        chunked = head(addr, "Transfer-Encoding: chunked\r\nConnection: close\r\n")
        for k in range(10, 12):
            row = lines(range(k, k + 1))
            chunked += b"%x\r\n%s\r\n" % (len(row), row)
        assert exchange(addr, chunked + b"0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(f"k{k}" for k in range(12)),
                 "the rows of both members and of the chunked body, nothing of the refused ones")
    finally:
        d.close()


def test_bodies_in_flight_are_counted_gunzipped(tmp_path: Path) -> None:
    # 15 MB of gzip-friendly rows in 15 KB: five such bodies in flight are 75 MB, over the 64 MB budget
    # (4 x max_body_bytes), which the few KB actually sent are far under.
    cfg = ingest_config(tmp_path, TABLE, ingest="body_timeout_s = 10\n")
    d = DaemonProc(cfg)
    socks: list[socket.socket] = []
    try:
        addr = ingest_address(d)
        host, port = addr.rsplit(":", 1)
        body = gzip.compress(b"\n" * (15 << 20))
        for _ in range(5):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(head(addr, f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n")
                      + body[:-8])  # all but the gzip trailer: the body stays in flight
            socks.append(s)
        ready, _, _ = select.select(socks, [], [], 8)  # before body_timeout_s closes them all
        assert ready, "no request was refused for the bodies in flight"
        reply = ready[0].recv(65536)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"too many bodies in flight" in reply, reply
    finally:
        for s in socks:
            s.close()
        d.close()


def held(d: DaemonProc, port: int) -> int:
    """Connections to ``port`` the daemon holds open: its socket fds that /proc/<pid>/net/tcp* shows as
    accepted on that port (the daemon's other files come and go while it starts up, so not all its fds)."""
    fd_dir = f"/proc/{d.proc.pid}/fd"
    inodes = set()
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{d.proc.pid}/net/{table}") as f:
            next(f)
            for row in f:
                cols = row.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if int(local.rsplit(":", 1)[1], 16) == port and state != "0A" and inode in inodes:
                    count += 1
    return count


def test_tls_handshakes_count_against_max_connections(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    cfg = ingest_config(tmp_path, TABLE, ingest=f'tls_cert = "{cert}"\ntls_key = "{key}"\nmax_connections = 8\n'
                                                 "header_timeout_s = 60\n")
    d = DaemonProc(cfg)
    silent: list[socket.socket] = []
    try:
        addr = ingest_address(d)
        host, port = addr.rsplit(":", 1)
        for _ in range(40):  # connect, never start the handshake
            silent.append(socket.create_connection((host, int(port)), timeout=30))
        wait_for(lambda: held(d, int(port)) >= 1, "the daemon accepting the silent connections")
        wait_for(lambda: held(d, int(port)) <= 8, "connections in their handshake counted against max_connections",
                 timeout=10)
        conn = http.client.HTTPSConnection(host, int(port), timeout=30,
                                           context=ssl.create_default_context(cafile=str(cert)))
        conn.request("POST", PATH, body=lines(range(3)),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        for s in silent:
            s.close()
        d.close()

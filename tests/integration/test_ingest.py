"""``[ingest] listen`` end to end: NDJSON and JSON-array bodies over HTTP into a real daemon's tables."""

from __future__ import annotations

import gzip
import http.client
import re
import signal
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold
from support.daemonproc import DaemonProc, http_get, wait_for
from support.ingest import TOKEN, Client, ingest_address, ingest_config, post, self_signed
from support.tables import committed_counts

TABLE = '[tables."app.events"]\n[tables."app.events".columns]\npart_id = "string!"\nn = "long"\n'


def lines(keys: range, prefix: str = "k") -> bytes:
    return b"".join(orjson.dumps({"part_id": f"{prefix}{k}", "n": k}) + b"\n" for k in keys)


def test_bodies_land_and_bad_requests_append_nothing(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE, ingest="max_body_bytes = 4096\n")
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        c = Client(addr)
        path = "/v1/tables/app.events"
        assert post(addr, path, lines(range(31, 32)), Host="ingest.example:80")[0] == 200  # a token: any Host
        # Four encodings of rows, on one keep-alive connection.
        assert c.post(path, lines(range(0, 10)), Content_Type="application/x-ndjson")[0] == 200
        assert c.post(path, gzip.compress(lines(range(10, 20))), Content_Type="application/x-ndjson",
                      Content_Encoding="gzip")[0] == 200
        arr = orjson.dumps([{"part_id": f"k{k}", "n": k} for k in range(20, 30)])
        code, _, body = c.post(path, arr, Content_Type="application/json")
        assert (code, orjson.loads(body)) == (200, {"table": "app.events", "rows": 10})
        assert c.post(path, gzip.compress(orjson.dumps([{"part_id": "k30", "n": 30}])),
                      Content_Type="application/json", Content_Encoding="gzip")[0] == 200
        # A bad third line: 400 naming it, and none of the request's rows are appended.
        bad = lines(range(100, 102)) + b'{"part_id": "k102", "n": "three"}\n' + lines(range(103, 105))
        code, _, body = c.post(path, bad, Content_Type="application/x-ndjson")
        assert code == 400 and orjson.loads(body)["error"].startswith("line 3: "), body
        code, _, body = c.post(path, b'{"part_id": "k200", "n": 1}\n{not json\n')
        assert code == 400 and b"line 2: not valid JSON" in body
        code, _, body = c.post(path, orjson.dumps([{"part_id": "k300", "n": 1}, 7]), Content_Type="application/json")
        assert code == 400 and b"row 2: not a JSON object" in body
        # Too large: as sent, and once gunzipped (a gzip bomb costs max_body_bytes at most).
        assert post(addr, path, lines(range(400, 600)))[0] == 413
        assert post(addr, path, gzip.compress(b" " * (1 << 20)), Content_Encoding="gzip")[0] == 413
        # Who may write.
        assert post(addr, path, lines(range(500, 501)), token=None)[0] == 401
        assert post(addr, path, lines(range(500, 501)), token="wrong")[0] == 401
        assert post(addr, "/v1/tables/other.table", lines(range(500, 501)))[0] == 403
        assert post(addr, "/v1/tables/not..valid", lines(range(500, 501)))[0] == 404
        # What a web page can send a loopback port without the browser asking first (a form, text/plain)
        # is refused, and so is a rebound DNS name in Host (no token on this route: the page cannot know it).
        assert post(addr, path, lines(range(500, 501)), Content_Type="text/plain")[0] == 415
        assert post(addr, path, lines(range(500, 501)), Content_Type="application/x-www-form-urlencoded")[0] == 415
        want = Counter(f"k{k}" for k in range(32))
        wait_for(lambda: committed_counts(cfg, "app.events") == want, "the accepted rows committed, nothing else")
    finally:
        d.close()


def test_a_full_spool_answers_503_and_a_client_that_retries_loses_nothing(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE + '[daemon]\nlisten = "127.0.0.1:0"\n', spool="max_bytes = 4000",
                        ingest="retry_after_s = 1\n", flush="debounce_s = 0.5\nmax_delay_s = 1\n")
    d = DaemonProc(cfg)
    try:
        c = Client(ingest_address(d))
        refused = 0
        for batch in range(12):  # ~1.3 KB each: the spool holds three at most
            body = lines(range(batch * 30, batch * 30 + 30))
            while True:
                code, headers, reply = c.post("/v1/tables/app.events", body)
                if code == 200:
                    break
                assert code == 503 and headers["retry-after"] == "1" and b"spool full" in reply, (code, reply)
                refused += 1
                time.sleep(int(headers["retry-after"]))
        assert refused > 0
        want = Counter(f"k{k}" for k in range(360))
        wait_for(lambda: committed_counts(cfg, "app.events") == want, "every row committed once")
        metrics = re.search(r"serving /metrics and /health on http://(\S+)", d.log())
        assert metrics is not None
        assert http_get(metrics.group(1), "/health")[0] == 200
        text = http_get(metrics.group(1), "/metrics")[1].decode()
        assert f'spoold_ingest_requests_total{{code="503",route="tables"}} {refused}.0' in text
        assert 'spoold_ingest_requests_total{code="200",route="tables"} 12.0' in text
        assert 'spoold_ingest_rows_total{table="app.events"} 360.0' in text
        assert 'spoold_ingest_request_duration_seconds_count{route="tables"}' in text
    finally:
        d.close()


def test_stopping_answers_new_requests_503_and_commits_those_in_flight(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE, flush="debounce_s = 60\nmax_delay_s = 60\n")
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        host, port = addr.rsplit(":", 1)
        body = lines(range(2))
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(f"POST /v1/tables/app.events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}"
                      f"\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                      + body[:5])
            # Another request answered after this head was sent: the listener's loop has read that head by now.
            other = Client(addr)
            assert other.post("/v1/tables/app.events", lines(range(2, 3)))[0] == 200
            d.signal(signal.SIGTERM)
            wait_for(lambda: "requests get 503 from now on (1 in flight)" in d.log(), "the drain to begin")
            code, headers, _ = other.post("/v1/tables/app.events", lines(range(3, 4)))
            assert (code, headers["retry-after"]) == (503, "5")
            s.sendall(body[5:])  # the request in flight when the drain began is appended and answered...
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert d.wait() == 0
        # ...and committed by the drain's flush
        assert committed_counts(cfg, "app.events") == Counter(["k0", "k1", "k2"])
    finally:
        d.close()


def test_without_a_token_a_loopback_listener_answers_its_own_names_only(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLE, token=False)
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        port = addr.rsplit(":", 1)[1]
        body = lines(range(1))
        assert post(addr, "/v1/tables/app.events", body, token=None, Host="rebound.example.com")[0] == 421
        for host in (addr, f"localhost:{port}"):
            assert post(addr, "/v1/tables/app.events", body, token=None, Host=host)[0] == 200
    finally:
        d.close()


def test_a_public_listen_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path)
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"')
                   .replace("token_file", "# token_file"))
    proc = run_spoold("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == 2
    assert b"ingest.listen is not a loopback address and ingest.token_file is not set" in proc.stderr
    cfg = ingest_config(tmp_path)
    (tmp_path / "token").chmod(0o644)  # a token others can read is no secret
    proc = run_spoold("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == 2 and b"readable by it alone (chmod 600)" in proc.stderr, proc.stderr


def test_an_idle_daemon_with_ingest_on_restarts_lean_and_serves_again(tmp_path: Path) -> None:
    with socket.socket() as s:  # a fixed port: the re-executed image binds it again
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ingest_config(tmp_path, TABLE, flush="debounce_s = 0.3\nmax_delay_s = 2\nidle_restart_s = 2\n")
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
    d = DaemonProc(cfg, fresh=True)  # it measures what the daemon imports and holds
    try:
        addr = f"127.0.0.1:{port}"
        assert post(addr, "/v1/tables/app.events", lines(range(2)))[0] == 200
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(["k0", "k1"]), "first rows committed")
        wait_for(lambda: d.log().count("spoold running") == 2, "the idle restart's fresh image")
        rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines()
                   if ln.startswith("VmRSS:")) / 1024
        assert rss <= 40, f"idle RSS with ingest on: {rss:.1f} MB"
        assert post(addr, "/v1/tables/app.events", lines(range(2, 3)))[0] == 200
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(["k0", "k1", "k2"]), "rows after it")
    finally:
        d.close()


def test_built_in_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    cfg = ingest_config(tmp_path, TABLE, ingest=f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        assert f"https://{addr}" in d.log()
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), timeout=30,
                                           context=ssl.create_default_context(cafile=str(cert)))
        conn.request("POST", "/v1/tables/app.events", body=lines(range(3)),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
        assert conn.getresponse().status == 200
        conn.close()
        with pytest.raises(ConnectionError):  # plain HTTP to a TLS listener gets nowhere
            post(addr, "/v1/tables/app.events", lines(range(3, 4)))
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(["k0", "k1", "k2"]), "rows over TLS")
    finally:
        d.close()

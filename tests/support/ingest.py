"""A real ``spoold run`` with ``[ingest] listen``, and plain HTTP requests to it (http.client, keep-alive)."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.cli import write_config
from support.daemonproc import DaemonProc, wait_for

TOKEN = "s3cret-token-for-tests"


def ingest_config(tmp_path: Path, body: str = "", *, ingest: str = "", spool: str = "",
                  flush: str = "debounce_s = 0.3\nmax_delay_s = 2\n", token: bool = True) -> Path:
    """A config with ``[ingest] listen`` on a free port of 127.0.0.1 and (``token``) a bearer token file (0600)."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    key = f'token_file = "{path}"\n' if token else ""
    cfg = write_config(tmp_path, f'[flush]\n{flush}\n[ingest]\nlisten = "127.0.0.1:0"\n{key}{ingest}\n{body}')
    if spool:
        cfg.write_text(cfg.read_text().replace("[spool]\n", f"[spool]\n{spool}\n", 1))
    return cfg


def ingest_address(d: DaemonProc) -> str:
    """Where the daemon's ingest listener serves (from its log line: the port was 0)."""
    m = wait_for(lambda: re.search(r"/v1/logs on https?://(\S+)", d.log()), "the ingest listener's address")
    return m.group(1)


class Client:
    """One keep-alive connection to the ingest listener."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def post(self, path: str, body: bytes, token: str | None = TOKEN, **headers: str) -> tuple[int, dict[str, str],
                                                                                              bytes]:
        h = {"Content-Type": "application/x-ndjson", **{k.replace("_", "-"): v for k, v in headers.items()}}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        try:
            self.conn.request("POST", path, body=body, headers=h)
            r = self.conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()  # the server closed it (a refused body): the next request reconnects
            raise

    def close(self) -> None:
        self.conn.close()


def post(address: str, path: str, body: bytes, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    c = Client(address)
    try:
        return c.post(path, body, **kw)
    finally:
        c.close()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (skips the test where no openssl command can make one)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key

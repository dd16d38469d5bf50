"""Secrets never leave: a catalog URI's credentials appear in no error, log, status, state file or /health.

A real daemon and the real CLI against catalogs that cannot be reached (a
closed local port), so every flush fails and every error path runs.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold
from support.daemonproc import DaemonProc, http_get, wait_for

T = "chat.parts"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_cfg(tmp_path: Path, catalog: str) -> Path:
    root = tmp_path / "spool"
    cfg = tmp_path / "spoold.toml"
    cfg.write_text(f'[spool]\nroot = "{root}"\n\n{catalog}\n'
                   '[flush]\ndebounce_s = 0.2\nmax_delay_s = 1.0\nretry_max_s = 1\n\n'
                   '[daemon]\nlisten = "127.0.0.1:0"\nlog_repeat_s = 0.5\n\n'
                   f'[tables."{T}"]\n[tables."{T}".columns]\npart_id = "string!"\ntext = "string"\n')
    return cfg


def append(cfg: Path, n: int, prefix: str = "r") -> None:
    rows = b"".join(orjson.dumps({"part_id": f"{prefix}{i}", "text": "hello"}) + b"\n" for i in range(n))
    r = run_spoold("append", T, "-", "--config", str(cfg), input=rows)
    assert r.returncode == 0, r.stderr


def daemon_state(cfg: Path) -> dict[str, Any]:
    try:
        return orjson.loads((cfg.parent / "spool" / ".daemon.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def assert_nowhere(secrets: list[bytes], where: str, data: bytes) -> None:
    for s in secrets:
        assert s not in data, f"{s!r} leaked into {where}: {data[:2000]!r}"


def assert_not_under(secrets: list[bytes], root: Path) -> int:
    """No file under ``root`` holds any of ``secrets`` (bytes, names included); returns how many were read."""
    n = 0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            assert_nowhere(secrets, f"a name under {root}", os.fsencode(name))
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                assert_nowhere(secrets, str(path), path.read_bytes())
                n += 1
    return n


def test_a_rest_catalog_password_appears_nowhere_after_failed_flushes(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    port = closed_port()
    cfg = write_cfg(tmp_path, f'[catalog]\ntype = "rest"\nuri = "http://alice:s3cr3t-pw@127.0.0.1:{port}/catalog'
                              f'?token=tok-9d8e7f"\nwarehouse = "file://{tmp_path / "wh"}"\n')
    secrets = [b"s3cr3t-pw", b"alice:", b"tok-9d8e7f"]
    d = daemons(cfg)
    append(cfg, 3)
    base = wait_for(lambda: daemon_state(cfg).get("listen"), "the listener's address")

    # Flushes fail for longer than max_delay_s: /health names the table and the class of error.
    code, body = wait_for(lambda: (h := http_get(base, "/health"))[0] == 503 and h, "503: rows failing to commit")
    doc = orjson.loads(body)
    assert doc["status"] == "failing" and doc["tables"][T]["error"] == "catalog unreachable", doc
    assert doc["tables"][T]["failures"] >= 1 and doc["tables"][T]["since_s"] >= 1.0
    assert T in doc["reason"] and "catalog unreachable" in doc["reason"]
    wait_for(lambda: (daemon_state(cfg).get("tables", {}).get(T) or {}).get("failures", 0) >= 2, "two failures")
    assert_nowhere(secrets, "/health", body)
    assert_nowhere(secrets, "/metrics", http_get(base, "/metrics")[1])

    text = run_spoold("status", "--config", str(cfg))
    js = run_spoold("status", "--json", "--config", str(cfg))
    assert text.returncode == 0 and js.returncode == 0, (text.stderr, js.stderr)
    status = orjson.loads(js.stdout)
    assert status["catalog_error"] and f"127.0.0.1:{port}" in status["catalog_error"]  # says where, not who
    assert status["tables"][T]["last_error"]  # the daemon's view of the failing flush is shown...
    for name, out in (("status", text), ("status --json", js)):
        assert_nowhere(secrets, f"spoold {name}", out.stdout + out.stderr)  # ...without the credentials

    flush = run_spoold("flush", "--config", str(cfg))
    assert flush.returncode == 1 and f"127.0.0.1:{port}" in flush.stderr.decode()
    assert_nowhere(secrets, "spoold flush", flush.stdout + flush.stderr)

    assert d.stop() == 0
    log = d.log_path.read_bytes()
    assert b"flush failed" in log
    assert_nowhere(secrets, "the daemon's log", log)
    assert assert_not_under(secrets, tmp_path / "spool") >= 3  # .daemon.json, .last-flush.json, the spool file


@pytest.mark.parametrize("kind", ["postgresql", "untyped"])
def test_an_sql_catalog_password_appears_nowhere_in_status_or_flush(tmp_path: Path, kind: str) -> None:
    """PostgreSQL unreachable (flush fails, exit 1; status answers without the catalog, exit 0), and a URI
    whose catalog type cannot be told (a config error, exit 2, that quotes the URI)."""
    port = closed_port()
    catalog = (f'[catalog]\ntype = "sql"\nuri = "postgresql+psycopg2://u:pgpass-9x@127.0.0.1:{port}/db"\n'
               if kind == "postgresql" else f'[catalog]\nuri = "mysql+pymysql://u:pgpass-9x@127.0.0.1:{port}/db"\n')
    cfg = write_cfg(tmp_path, catalog + f'warehouse = "file://{tmp_path / "wh"}"\n')
    secrets = [b"pgpass-9x", b"u:pgpass"]
    want = 1 if kind == "postgresql" else 2
    if kind == "postgresql":
        append(cfg, 2)
    flush = run_spoold("flush", "--config", str(cfg))
    assert flush.returncode == want and str(port) in flush.stderr.decode(), flush  # says where, not who
    assert_nowhere(secrets, "spoold flush", flush.stdout + flush.stderr)
    for args in (("status",), ("status", "--json")):
        out = run_spoold(*args, "--config", str(cfg))
        assert out.returncode == (0 if kind == "postgresql" else 2), out.stderr
        assert_nowhere(secrets, "spoold " + " ".join(args), out.stdout + out.stderr)
    if kind == "postgresql":
        doc = orjson.loads(run_spoold("status", "--json", "--config", str(cfg)).stdout)
        assert doc["catalog_error"] and doc["tables"][T]["last_flush_attempt"]["result"].startswith("error")
        assert_not_under(secrets, tmp_path / "spool")


def test_a_sighup_reload_to_a_new_password_leaks_neither(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    """The daemon masks the passwords of every configuration it has read, also the one a reload replaced."""
    port = closed_port()
    catalog = '[catalog]\ntype = "rest"\nuri = "http://bob:{pw}@127.0.0.1:' + str(port) + '/c"\n'
    cfg = write_cfg(tmp_path, catalog.format(pw="first-pw-1"))
    d = daemons(cfg)
    append(cfg, 1)
    wait_for(lambda: b"flush failed" in d.log_path.read_bytes(), "a failed flush")
    cfg.write_text(cfg.read_text().replace("first-pw-1", "second-pw-2"))
    d.signal(signal.SIGHUP)
    wait_for(lambda: b"reloaded configuration" in d.log_path.read_bytes(), "the reload")
    append(cfg, 1, prefix="s")
    wait_for(lambda: d.log_path.read_bytes().count(b"flush failed") >= 2, "another failed flush")
    assert d.stop() == 0
    secrets = [b"first-pw-1", b"second-pw-2", b"bob:"]
    assert_nowhere(secrets, "the daemon's log", d.log_path.read_bytes())
    assert_not_under(secrets, tmp_path / "spool")

"""The metrics listener under hostile clients: bounded threads, a request deadline, the Host check, no traceback.

A real daemon with a real SQLite catalog. The load test runs the daemon in a
cgroup v1 ``pids`` controller with ``pids.max = 200`` (systemd's ``TasksMax=200``)
while 1,000 slow clients hold connections: flushes go on, ``/health`` answers,
and SIGTERM drains cleanly.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold
from support.daemonproc import DaemonProc, http_get, wait_for

T = "load.events"
PIDS = Path("/sys/fs/cgroup/pids")


def write_cfg(tmp_path: Path, daemon: str = 'listen = "127.0.0.1:0"\n') -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    cfg = tmp_path / "spoold.toml"
    cfg.write_text(f'[spool]\nroot = "{state / "spool"}"\n'
                   f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\n'
                   f'warehouse = "file://{state / "wh"}"\n'
                   '[flush]\ndebounce_s = 0.2\nmax_delay_s = 1.0\n'
                   f"[daemon]\n{daemon}"
                   f'[tables."{T}"]\n[tables."{T}".columns]\npart_id = "string!"\n')
    return cfg


def address(cfg: Path) -> str:
    def listen() -> Any:
        try:
            return orjson.loads((cfg.parent / "state" / "spool" / ".daemon.json").read_bytes()).get("listen")
        except (OSError, orjson.JSONDecodeError):
            return None
    return wait_for(listen, "the listener's address")


def raw_get(addr: str, path: str, host: str | None) -> tuple[int, bytes]:
    """GET with exactly this Host header (None: none at all); (status, body)."""
    h, _, port = addr.rpartition(":")
    with socket.create_connection((h.strip("[]"), int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n".encode() + (f"Host: {host}\r\n".encode() if host else b"") + b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def append(cfg: Path, keys: list[str]) -> None:
    r = run_spoold("append", T, "-", "--config", str(cfg), input=b"".join(orjson.dumps({"part_id": k}) + b"\n"
                                                                          for k in keys))
    assert r.returncode == 0, r.stderr


def committed_rows(cfg: Path) -> int:
    r = run_spoold("status", "--json", "--config", str(cfg))
    return (orjson.loads(r.stdout)["tables"].get(T) or {}).get("committed_rows") or 0 if r.returncode == 0 else 0


# --- config: a non-loopback address needs the opt-in -------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.168.1.20:9464", "metrics.example:9464"])
def test_a_non_loopback_listen_address_is_refused_without_the_opt_in(tmp_path: Path, listen: str) -> None:
    cfg = write_cfg(tmp_path, f'listen = "{listen}"\n')
    r = run_spoold("run", "--config", str(cfg), timeout=60)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "daemon.listen" in err and "listen_public" in err and listen in err


def test_with_the_opt_in_any_address_and_any_host_header_are_served(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_cfg(tmp_path, 'listen = "0.0.0.0:0"\nlisten_public = true\n')
    d = daemons(cfg)
    port = address(cfg).rpartition(":")[2]
    assert raw_get(f"127.0.0.1:{port}", "/health", "metrics.example:9464")[0] == 200
    assert d.stop() == 0


def test_a_foreign_host_header_is_refused(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 must not read /metrics."""
    d = daemons(write_cfg(tmp_path))
    addr = address(d.cfg)
    port = addr.rpartition(":")[2]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1"):
        code, body = raw_get(addr, "/metrics", host)
        assert code == 421 and b"spoold_" not in body, (host, code, body)
    for host in (addr, f"localhost:{port}", None):
        assert raw_get(addr, "/health", host)[0] == 200, host
    assert http_get(addr, "/metrics")[0] == 200  # urllib sends Host: 127.0.0.1:<port>
    assert d.stop() == 0


# --- the request deadline and quiet errors --------------------------------------------------------------------


def test_a_trickling_client_is_cut_at_the_request_deadline(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    """One byte every second never completes a request: the whole request has 5 s, however it trickles."""
    d = daemons(write_cfg(tmp_path))
    h, _, port = address(d.cfg).rpartition(":")
    with socket.create_connection((h, int(port)), timeout=30) as s:
        start = time.monotonic()
        s.settimeout(1.0)
        closed = False
        for b in b"GET /health HTTP/1.0\r\nX-Slow: " + b"x" * 60:
            try:
                s.sendall(bytes([b]))
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - start
    assert closed and elapsed < 9.0, f"still open after {elapsed:.1f}s"
    assert http_get(address(d.cfg), "/health")[0] == 200
    assert d.stop() == 0


def test_reset_connections_print_no_traceback(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    d = daemons(write_cfg(tmp_path))
    h, _, port = address(d.cfg).rpartition(":")
    for _ in range(100):
        s = socket.create_connection((h, int(port)), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.close()
    assert http_get(address(d.cfg), "/health")[0] == 200
    assert d.stop() == 0
    log = d.log()
    assert "Traceback" not in log and "Exception occurred" not in log, log


# --- 1,000 slow clients under a task limit -----------------------------------------------------------------


class Swarm:
    """Keeps ``n`` slow connections open to ``addr``: most send one header byte and stall, some send nothing.
    A connection the server closes is opened again, so the pressure lasts until :meth:`stop`."""

    def __init__(self, addr: str, n: int) -> None:
        h, _, port = addr.rpartition(":")
        self.target = (h, int(port))
        self.n = n
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Swarm:
        self._thread.start()
        wait_for(lambda: self.opened >= self.n, f"{self.n} slow clients connected")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self, sel: selectors.BaseSelector, i: int) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(self.target)
        except BlockingIOError:
            pass
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
        self.opened += 1

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        live = 0
        while not self._stop.is_set():
            for _ in range(min(100, self.n - live)):  # top up in slices: the backlog is not flooded
                self._open(sel, self.opened)
                live += 1
            for key, ev in sel.select(0.05):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                if ev & selectors.EVENT_WRITE:  # connected: one byte (four in five of them), then stall
                    if key.data % 5:
                        try:
                            s.send(b"G")
                        except OSError:
                            pass
                    sel.modify(s, selectors.EVENT_READ, key.data)
                elif ev & selectors.EVENT_READ:  # closed by the server (its deadline): open another
                    sel.unregister(s)
                    s.close()
                    live -= 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A fresh cgroup v1 pids group with pids.max = 200; its processes go back to the parent at the end."""
    group = PIDS / f"spoold-test-{uuid.uuid4().hex[:10]}"
    try:
        group.mkdir()
        (group / "pids.max").write_text("200")
    except OSError as e:
        pytest.skip(f"needs a writable cgroup v1 pids controller at {PIDS} (root): {e}")
    try:
        yield group
    finally:
        for _ in range(50):
            procs = (group / "cgroup.procs").read_text().split()
            for pid in procs:
                try:
                    (PIDS / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_thousand_slow_clients_under_a_task_limit(
    tmp_path: Path, daemons: Callable[..., DaemonProc], pids_cgroup: Path
) -> None:
    cfg = write_cfg(tmp_path)
    d = daemons(cfg, fresh=True)  # its threads are counted
    (pids_cgroup / "cgroup.procs").write_text(str(d.proc.pid))  # its threads follow it
    addr = address(cfg)
    append(cfg, ["seed"])
    wait_for(lambda: committed_rows(cfg) == 1, "the first row committed")
    with Swarm(addr, 1000) as swarm:
        for round_ in range(3):
            keys = [f"r{round_}-{i}" for i in range(20)]
            append(cfg, keys)
            want = 1 + 20 * (round_ + 1)
            wait_for(lambda w=want: committed_rows(cfg) == w, f"{want} rows committed under load", timeout=60)
            start = time.monotonic()
            code, body = http_get(addr, "/health")
            took = time.monotonic() - start
            assert code == 200 and took < 5.0, (code, body, took)
            assert int((pids_cgroup / "pids.current").read_text()) < 200
            assert threads_of(d.proc.pid) < 40, threads_of(d.proc.pid)
        assert swarm.opened > 1000  # the server cut slow clients and the swarm opened new ones
        append(cfg, [f"last-{i}" for i in range(5)])
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    log = d.log()
    assert "can't start new thread" not in log and "Traceback" not in log, log
    assert committed_rows(cfg) == 66
    assert os.path.exists(pids_cgroup)


@pytest.mark.slow
def test_the_drain_needs_no_new_thread(tmp_path: Path, daemons: Callable[..., DaemonProc], pids_cgroup: Path) -> None:
    """With not one more task allowed, SIGTERM still ends in a clean exit 0, and no row is quarantined for it
    (a commit that needs a thread the limit refuses fails as the environment's fault: the rows stay spooled)."""
    cfg = write_cfg(tmp_path)
    cfg.write_text(cfg.read_text().replace("[flush]\n", "[flush]\nshutdown_timeout_s = 3\n"))
    d = daemons(cfg)
    (pids_cgroup / "cgroup.procs").write_text(str(d.proc.pid))
    append(cfg, ["warm"])
    wait_for(lambda: committed_rows(cfg) == 1, "a first flush by the daemon (its pools have their threads)")
    slow = cfg.read_text().replace("debounce_s = 0.2\nmax_delay_s = 1.0", "debounce_s = 300\nmax_delay_s = 600")
    cfg.write_text(slow)
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in d.log(), "the reload")
    append(cfg, [f"k{i}" for i in range(10)])
    state = cfg.parent / "state" / "spool" / ".daemon.json"
    wait_for(lambda: b'"pending_rows_estimate":1' in state.read_bytes(), "the daemon sees the pending rows")
    (pids_cgroup / "pids.max").write_text((pids_cgroup / "pids.current").read_text().strip())
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.log()
    assert "Traceback" not in d.log(), d.log()
    doc = orjson.loads(run_spoold("status", "--json", "--config", str(cfg)).stdout)["tables"][T]
    assert doc["quarantined"] == 0 and doc["committed_rows"] + doc["spooled_rows"] == 11, doc

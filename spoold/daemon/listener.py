"""The HTTP listener of ``[daemon] listen``: ``GET /metrics`` and ``GET /health``, bounded in every way.

What is served comes from :class:`spoold.daemon.metrics.Metrics`; this module only
speaks HTTP (imported only when ``listen`` is set: http.server is not light).

A slow or hostile client costs a file descriptor, never a thread: one thread
accepts connections and reads their requests without blocking (a selector); a
request whose line and headers are not in within ``REQUEST_DEADLINE_S`` is cut,
and past ``MAX_OPEN`` connections the oldest is closed. Complete requests go
through a bounded queue to ``WORKERS`` threads started with the listener, which
answer them. Nothing starts a thread after start-up, so a task limit (systemd's
``TasksMax=``) can neither stop ``/health`` answering nor the drain. Clients'
own failures (resets, timeouts) are logged at debug level; anything else at most
once a minute, without a traceback. The Host header must name this listener
(DNS rebinding), unless ``[daemon] listen_public`` is set.
"""

from __future__ import annotations

import io
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

import orjson

from spoold.config import parse_listen
from spoold.errors import SpooldError, one_line
from spoold.logs import LogLimiter

if TYPE_CHECKING:
    from spoold.daemon.metrics import Metrics

log = logging.getLogger("spoold.daemon.loop")

WORKERS = 4  # requests are answered from memory in milliseconds: a few threads are plenty
QUEUE = 256  # complete requests waiting for a worker (a few KB each); more are closed at once
MAX_OPEN = 512  # connections being read; past it the oldest is closed (also bounded by the fd limit)
REQUEST_DEADLINE_S = 5.0  # from accept to the end of the headers, and the reply's send after that
MAX_HEAD_BYTES = 16 << 10  # a request line and headers larger than this are no scrape
_LOG_EVERY_S = 60.0


class _Handler(BaseHTTPRequestHandler):
    """One request, parsed from the bytes the accept thread read; the reply is sent in one piece."""

    server: Listener  # type: ignore[assignment]

    def __init__(self, conn: socket.socket, address: Any, server: Listener, head: bytes) -> None:
        self._head = head
        super().__init__(conn, address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        self.connection.sendall(self.wfile.getvalue())

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        host = self.headers.get("Host")
        allowed = self.server.allowed_hosts
        if host is not None and allowed is not None and host.strip().lower() not in allowed:
            self._reply(421, "text/plain; charset=utf-8", b"misdirected request: this listener does not serve "
                        b"that Host (set [daemon] listen_public to serve any)\n")
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, content_type, encode(self.server.spoold.registry))
        elif path == "/health":
            ok, doc = self.server.spoold.health_doc()
            self._reply(200 if ok else 503, "application/json", orjson.dumps(doc) + b"\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        log.debug("metrics: %s - " + format, self.address_string(), *args)


class Listener:
    """Accepts on ``address`` and answers with ``spoold``'s metrics and health (see the module docstring)."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], spoold: Metrics, *,
                 public: bool = False) -> None:
        self.spoold = spoold
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        self.allowed_hosts = None if public else _local_hosts(address[0], self.server_address[1])
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._max_open = max(8, min(MAX_OPEN, soft // 4 if soft > 0 else MAX_OPEN))
        self._open: OrderedDict[socket.socket, tuple[float, bytearray, Any]] = OrderedDict()  # accept order
        self._queue: queue.Queue[tuple[socket.socket, bytes, Any, float] | None] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._stop = False
        self._errors = LogLimiter(_LOG_EVERY_S)
        self._threads = [threading.Thread(target=self._accept_loop, name="spoold-metrics", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"spoold-metrics-{i}", daemon=True)
                          for i in range(WORKERS)]

    def start(self) -> None:
        """Start every thread the listener will ever need."""
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop accepting and answering; close every connection (needs no new thread)."""
        self._stop = True
        for _ in range(WORKERS):
            self._queue.put(None)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        for t in self._threads:
            if t.is_alive():
                t.join(2.0)
        if not self._threads[0].is_alive():  # the accept thread owns the selector and the open connections
            for conn in list(self._open):
                conn.close()
            self._open.clear()
            self._sel.close()
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()

    # -- the accept thread ----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                now = time.monotonic()
                first = next(iter(self._open.values()), None)
                wait = 1.0 if first is None else min(1.0, max(0.0, first[0] - now))
                for key, _ in self._sel.select(wait):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire(time.monotonic())
            except Exception as e:  # never let the listener die; never a traceback per connection
                self._note("accept", f"metrics listener: {one_line(e)}")
                time.sleep(0.05)  # an error that repeats (no memory, no fds) must not spin a core

    def _accept(self) -> None:
        for _ in range(64):  # a burst is taken in slices, so reads and deadlines keep their turn
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: give up the oldest slow client
                self._note("accept-fd", f"metrics listener cannot accept: {one_line(e)}; closing the oldest")
                if not self._open:  # nothing of ours to give up (the fds are held elsewhere): wait, never spin
                    time.sleep(0.05)
                    return
                self._drop(next(iter(self._open)))
                continue
            if len(self._open) >= self._max_open:
                self._drop(next(iter(self._open)))
            conn.setblocking(False)
            self._sel.register(conn, selectors.EVENT_READ)
            self._open[conn] = (time.monotonic() + REQUEST_DEADLINE_S, bytearray(), addr)

    def _read(self, conn: socket.socket) -> None:
        entry = self._open.get(conn)
        if entry is None:
            return
        deadline, buf, addr = entry
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("metrics: %s: %s", addr, e)
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        buf += data
        if b"\r\n\r\n" in buf or b"\n\n" in buf:
            self._sel.unregister(conn)
            del self._open[conn]
            if self._queue.qsize() >= QUEUE:
                self._note("busy", "metrics listener: every worker is busy, a request was turned away")
                conn.close()
                return
            self._queue.put((conn, bytes(buf), addr, deadline))
        elif len(buf) > MAX_HEAD_BYTES:
            log.debug("metrics: %s: request headers over %d bytes, closed", addr, MAX_HEAD_BYTES)
            self._drop(conn)

    def _expire(self, now: float) -> None:
        while self._open:
            conn, (deadline, _, addr) = next(iter(self._open.items()))
            if deadline > now:
                return
            log.debug("metrics: %s: no complete request within %ss, closed", addr, REQUEST_DEADLINE_S)
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._open.pop(conn, None)
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    # -- the workers ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stop:
                if item is not None:
                    item[0].close()
                return
            conn, head, addr, deadline = item
            try:
                conn.setblocking(True)
                conn.settimeout(max(0.1, deadline - time.monotonic()))  # the reply too is within the deadline
                _Handler(conn, addr, self, head)
            except OSError as e:  # the client went away or stopped reading: its business
                log.debug("metrics: %s: %s", addr, e)
            except Exception as e:
                self._note("handler", f"metrics listener: a request failed: {one_line(e)}")
            finally:
                conn.close()

    def _note(self, key: str, message: str) -> None:
        if (more := self._errors.note(key, time.time())) is not None:
            log.warning("%s%s", message, more)


def _local_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers a local client sends for this listener (the port is left out only for 80)."""
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    hosts = {f"{n.lower()}:{port}" for n in names}
    return frozenset(hosts | ({n.lower() for n in names} if port == 80 else set()))


def bind(listen: str, server: Metrics, *, public: bool = False) -> Listener:
    """Listen on ``listen`` (HOST:PORT) or raise one clear error (the daemon exits 1); :meth:`Listener.start` serves."""
    host, port = parse_listen(listen)
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return Listener(family, addr[:2], server, public=public)
    except OSError as e:
        raise SpooldError(f"daemon.listen = {listen!r}: cannot listen there: {e.strerror or e}") from None

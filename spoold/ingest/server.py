"""The ingest listener: HTTP/1.1 on asyncio streams with h11, bounded in every way (docs/ingest.md).

Why this stack (docs/architecture.md): hundreds of idle or slow connections
must cost a socket each, not a thread (a thread per connection dies under
systemd's ``TasksMax=``), so one event loop serves them all; h11 is a small,
well-kept, pure-Python HTTP/1.1 state machine (keep-alive, chunked bodies,
``Expect: 100-continue``) with no I/O of its own, so every timeout and buffer
bound is ours. Nothing blocks the loop: bodies are turned into rows on
``WORKERS`` threads and appended by the group commit's thread, all started
with the listener.

Bounds (docs/ingest.md#security): a request's head within ``header_timeout_s``
of its first byte (a TLS handshake too), its body within ``body_timeout_s``,
``max_body_bytes`` as sent and gunzipped (inflated as it arrives), idle
keep-alive ``idle_timeout_s``. Connections count from ``accept``, handshake
included; past ``max_connections`` (or half the fd limit) a new one closes
the oldest idle, else the slowest head, else the oldest body. Bodies in
memory, gunzipped, are bounded by ``4 × max_body_bytes`` in all (then 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any

import h11

from spoold.config import Config, parse_listen
from spoold.errors import SpoolFull, TableBusy
from spoold.ingest.commit import GroupCommit, Overloaded
from spoold.ingest.handler import Events, Handler, Reply, Route, error, loopback_hosts
from spoold.ingest.ndjson import BadBody, Inflater
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.ingest")

WORKERS = 2
MAX_HEAD_BYTES = 64 << 10
READ_BYTES = 256 << 10
MAX_CHUNKS = 65536  # body pieces (chunks) in one request: a body sent 1 byte a chunk costs an h11 event a byte
YIELD_EVERY = 64  # body pieces handled before other connections get a turn (one read may hold thousands)
_IDLE, _HEAD, _BODY, _BUSY = 0, 1, 2, 3  # a connection's state: which one a new connection may evict


class _Conn:
    __slots__ = ("sock", "handed", "transport", "state", "since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.handed = False  # to asyncio, which then owns the socket
        self.transport: Any = None  # once the connection (and its TLS handshake) is up
        self.state = _IDLE
        self.since = time.monotonic()

    def set(self, state: int) -> None:
        self.state, self.since = state, time.monotonic()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            return
        if not self.handed:
            self.sock.close()
            return
        try:  # in its handshake: the transport being made owns the socket, so end it without closing its fd
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class IngestServer:
    """``[ingest] listen``: binds at construction (a bad address fails start-up), serves once started."""

    def __init__(self, config: Config, token: bytes | None, events: Events) -> None:
        s = config.ingest
        self.handler = Handler(config, token)
        self.events = events
        self.spool = Spool.from_config(config)
        self.spool.lock_wait_s = 5.0  # a producer stuck holding a table's lock costs its requests a 503, not a hang
        self.commit = GroupCommit(self.spool, max(4 * s.max_body_bytes, 64 << 20))
        self._budget = max(4 * s.max_body_bytes, 64 << 20)  # body bytes held in memory at once
        self._held = 0
        self._ssl = _tls(s.tls_cert, s.tls_key)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._fd_cap = max(8, soft // 2) if soft > 0 else 1 << 30  # the other half: spool, catalog, metrics
        host, port = parse_listen(s.listen, "ingest.listen")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(512)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        h, p = self._sock.getsockname()[:2]
        self.address = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        if token is None:  # a loopback listener (a public one needs a token): only its own names as Host
            self.handler.hosts = loopback_hosts(host, p)
        self.draining = False
        self.inflight = 0
        self.alive = False
        self._conns: dict[int, _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._threads = [threading.Thread(target=self._serve, name="spoold-ingest", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"spoold-ingest-{i}", daemon=True)
                          for i in range(WORKERS)]

    # -- life ------------------------------------------------------------------------
    def start(self) -> None:
        """Start every thread the listener will ever need."""
        self.commit.start()
        self.alive = True  # until its thread ends: /health then says the listener is down
        for t in self._threads:
            t.start()
        log.info("ingest: serving POST /v1/tables/<table> and /v1/logs on %s://%s",
                 "https" if self._ssl else "http", self.address)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config's tables, rules and spool (the address, token and TLS stay until a restart)."""
        self.handler = Handler(config, self.handler.token, self.handler.hosts)
        # The reloaded spool (root, bounds, group) takes the next group commit's rows, as the daemon's does.
        spool = Spool.from_config(config)
        spool.lock_wait_s = self.spool.lock_wait_s
        self.spool = spool
        self.commit.use(spool)

    def drain(self, timeout: float) -> None:
        """503 from now on; wait (at most ``timeout``) for requests in flight, append what is queued, stop."""
        self.draining = True
        log.info("ingest: stopping; requests get 503 from now on (%d in flight)", self.inflight)
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.close(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 2.0) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:
                pass
        for _ in range(WORKERS):
            self._jobs.put(None)
        self.commit.stop(timeout)
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)
        self._sock.close()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:
                    fut.set_exception(e)

    async def _in_worker(self, fn: Callable[[], Any]) -> Any:
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return await asyncio.wrap_future(fut)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("ingest: the listener stopped")
        finally:
            self.alive = False

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        accepting = asyncio.create_task(self._accept())
        await self._stopped.wait()
        accepting.cancel()
        for c in list(self._conns.values()):
            c.abort()

    @property
    def settings(self) -> Any:
        return self.handler.config.ingest

    # -- connections ---------------------------------------------------------------------
    async def _accept(self) -> None:
        """Accept plain TCP and count the connection at once: a TLS handshake is part of its life, so the
        connections still in one count against ``max_connections`` (and the open-file limit) too."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as e:  # out of file descriptors (EMFILE...): those open must end first
                log.debug("ingest: accept: %s", e)
                await asyncio.sleep(0.1)
                continue
            conn = _Conn(sock)
            if not self._admit():
                sock.close()
                continue
            self._conns[id(conn)] = conn
            task = loop.create_task(self._connection(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)  # let it (and those it evicted) move on before the next accept

    def _admit(self) -> bool:
        """Make room for a new connection past ``max_connections``: the idle go first, then the slowest."""
        if len(self._conns) < min(self.settings.max_connections, self._fd_cap):
            return True
        for state in (_IDLE, _HEAD, _BODY):
            victims = [c for c in self._conns.values() if c.state == state]
            if victims:
                victim = min(victims, key=lambda c: c.since)
                victim.abort()
                del self._conns[id(victim)]  # counted no more: its socket is closing
                return True
        return False

    async def _open(self, conn: _Conn) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``conn`` as streams, after its TLS handshake (within ``header_timeout_s``, like a request's head)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        if self._ssl is not None:
            conn.set(_HEAD)
        if conn.sock.fileno() < 0:
            raise ConnectionError("closed for a newer connection")
        conn.handed = True
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn.sock, ssl=self._ssl,
            ssl_handshake_timeout=self.settings.header_timeout_s if self._ssl is not None else None)
        conn.transport = transport
        conn.set(_IDLE)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _connection(self, conn: _Conn) -> None:
        key = id(conn)
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            reader, writer = await self._open(conn)
            while await self._request(h, conn, reader, writer):
                h.start_next_cycle()
                conn.set(_IDLE)
        except (TimeoutError, ConnectionError, OSError, h11.ProtocolError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client's own trouble (timeouts, resets, bad HTTP): its connection ends, nothing else
        finally:
            if self._conns.get(key) is conn:
                del self._conns[key]
            conn.abort()

    async def _next(self, h: h11.Connection, reader: asyncio.StreamReader, conn: _Conn, deadline: float) -> Any:
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout_at(deadline):
                data = await reader.read(READ_BYTES)
            if conn.state == _IDLE and data:  # the head's first byte: its own clock starts
                conn.set(_HEAD)
                deadline = self._loop.time() + self.settings.header_timeout_s  # type: ignore[union-attr]
            h.receive_data(data)
            if not data:
                return None

    async def _request(self, h: h11.Connection, conn: _Conn, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> bool:
        """Serve one request on ``conn``; False when the connection ends."""
        loop = asyncio.get_running_loop()
        wait = self.settings.idle_timeout_s if h.their_state is h11.IDLE and conn.state == _IDLE else 0
        try:
            event = await self._next(h, reader, conn, loop.time() + (wait or self.settings.header_timeout_s))
        except h11.RemoteProtocolError as e:
            await self._send(h, writer, error(e.error_status_hint, f"bad request: {e}", close=True))
            return False
        if not isinstance(event, h11.Request):
            return False
        t0 = time.monotonic()
        self.inflight += 1
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            route, reply = await self._answer(h, conn, reader, event, headers)
            self.events.request(route.kind if route else "other", reply.code, time.monotonic() - t0)
            await self._send(h, writer, reply)  # in flight until answered: a drain waits for the answer too
        finally:
            self.inflight -= 1
        return not reply.close and h.our_state is h11.DONE and h.their_state is h11.DONE

    async def _answer(self, h: h11.Connection, conn: _Conn, reader: asyncio.StreamReader, event: h11.Request,
                      headers: dict[str, str]) -> tuple[Route | None, Reply]:
        checked = self.handler.check(event.method.decode("latin-1"), event.target.decode("latin-1"), headers)
        if isinstance(checked, Reply):
            checked.close = True  # its body stays unread
            return None, checked
        route = checked
        handler = self.handler
        s = self.settings
        if self.draining:
            return route, _closed(handler.refuse(route, 503, "spoold is stopping", s.retry_after_s))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
            return route, _closed(handler.refuse(route, 413, f"body larger than max_body_bytes ({s.max_body_bytes})"))
        body = await self._body(h, conn, reader, route, s)
        if isinstance(body, Reply):
            return route, body
        try:  # (``body`` is gunzipped already: inflated as it came in)
            lines, rows, partial = await self._in_worker(lambda: handler.rows(route, body))
        except Exception as e:  # a bug, not the client's: say so, keep serving
            log.error("ingest: table %s: cannot read a request's rows: %s", route.table, e, exc_info=True)
            return route, handler.refuse(route, 500, "internal error (see the daemon's log); nothing was appended")
        finally:
            self._held -= len(body)
        if partial is not None and partial.code != 200:
            return route, partial
        if lines:
            try:
                await asyncio.wrap_future(self.commit.submit(route.table, lines))
            except (SpoolFull, TableBusy, Overloaded) as e:
                why = "spool full" if isinstance(e, SpoolFull) else "busy"
                return route, handler.refuse(route, 503, f"table {route.table}: {why}, retry later",
                                             s.retry_after_s)
            except Exception as e:
                log.error("ingest: table %s: cannot append: %s", route.table, e)
                return route, handler.refuse(route, 500, f"table {route.table}: cannot append (see the daemon's log)")
        self.events.accepted(route.table, rows)
        return route, handler.ok(route, rows, partial)

    async def _body(self, h: h11.Connection, conn: _Conn, reader: asyncio.StreamReader, route: Route,
                    s: Any) -> bytes | Reply:
        conn.set(_BODY)
        if h.they_are_waiting_for_100_continue:
            conn.transport.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
        deadline = asyncio.get_running_loop().time() + s.body_timeout_s
        inflater = Inflater() if route.gzip else None
        parts: list[bytes] = []
        size = sent = pieces = 0  # size: as held in memory (gunzipped); sent: as it came
        done = False
        try:
            while True:
                event = await self._next(h, reader, conn, deadline)
                if isinstance(event, h11.Data):
                    sent += len(event.data)
                    pieces += 1
                    if sent > s.max_body_bytes:
                        return self._too_large(route, s, "")
                    if pieces > MAX_CHUNKS:
                        return _closed(self.handler.refuse(route, 413, f"body sent in more than {MAX_CHUNKS} "
                                                           "chunks"))
                    if pieces % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    for piece in inflater.feed(event.data) if inflater is not None else (event.data,):
                        size += len(piece)
                        self._held += len(piece)
                        if size > s.max_body_bytes:
                            return self._too_large(route, s, " once gunzipped")
                        if self._held > self._budget:
                            return _closed(self.handler.refuse(route, 503, "too many bodies in flight, retry later",
                                                               s.retry_after_s))
                        parts.append(piece)
                        if inflater is not None:
                            await asyncio.sleep(0)  # a piece inflated at a time, between other connections' turns
                elif isinstance(event, h11.EndOfMessage):
                    if inflater is not None:
                        inflater.end()
                    conn.set(_BUSY)
                    done = True  # its bytes stay counted until they are rows
                    return b"".join(parts)
                else:
                    raise ConnectionError("client went away mid-body")
        except BadBody as e:
            return _closed(self.handler.refuse(route, 400, str(e)))
        finally:
            if not done:  # refused or cut mid-body: the bytes read are dropped
                self._held -= size

    def _too_large(self, route: Route, s: Any, how: str) -> Reply:
        return _closed(self.handler.refuse(route, 413, f"body larger than max_body_bytes ({s.max_body_bytes}){how}"))

    async def _send(self, h: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
        if h.our_state is not h11.SEND_RESPONSE:
            return
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body)))]
        if reply.retry_after is not None:
            headers.append(("Retry-After", str(reply.retry_after)))
        if reply.close:
            headers.append(("Connection", "close"))
        head = h11.Response(status_code=reply.code, headers=headers, reason=_phrase(reply.code))
        data = h.send(head) + h.send(h11.Data(data=reply.body)) + h.send(h11.EndOfMessage())
        writer.write(data)
        async with asyncio.timeout(self.settings.header_timeout_s):
            await writer.drain()


def _phrase(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b""


def _closed(reply: Reply) -> Reply:
    """``reply`` ends its connection: the request's body was not (all) read."""
    reply.close = True
    return reply


def _tls(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx

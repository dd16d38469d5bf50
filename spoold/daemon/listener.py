"""The HTTP listener of ``[daemon] listen``: ``GET /metrics`` and ``GET /health`` on threads of its own.

What is served comes from :class:`spoold.daemon.metrics.Server`; this module only
speaks HTTP (imported only when ``listen`` is set: http.server is not light).
"""

from __future__ import annotations

import logging
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

from spoold.config import parse_listen
from spoold.errors import SpooldError

if TYPE_CHECKING:
    from spoold.daemon.metrics import Server

log = logging.getLogger("spoold.daemon.loop")

_REQUEST_TIMEOUT_S = 10.0  # a client that stalls mid-request gives up its thread after this long


class _Handler(BaseHTTPRequestHandler):
    server: HTTPServer
    timeout = _REQUEST_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, content_type, encode(self.server.spoold.registry))
        elif path == "/health":
            ok, reason = self.server.spoold.health()
            body = orjson.dumps({"ok": ok, "status": self.server.spoold.phase, "reason": reason}) + b"\n"
            self._reply(200 if ok else 503, "application/json", body)
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


class HTTPServer(ThreadingHTTPServer):
    """Threads per request (daemon threads: none of them holds up the exit)."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], spoold: Server) -> None:
        self.address_family = family  # read by the base class when it makes the socket
        self.spoold = spoold
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # http.server's own looks up the host's FQDN: a slow resolver must not delay start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def bind(listen: str, server: Server) -> HTTPServer:
    """Listen on ``listen`` (HOST:PORT) or raise one clear error (the daemon exits 1)."""
    host, port = parse_listen(listen)
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return HTTPServer(family, addr[:2], server)
    except OSError as e:
        raise SpooldError(f"daemon.listen = {listen!r}: cannot listen there: {e.strerror or e}") from None

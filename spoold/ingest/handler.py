"""What the ingest listener answers: routes, who may write, bodies → rows → the group commit.

:mod:`spoold.ingest.server` speaks HTTP; this module decides. :meth:`Handler.check`
runs on the event loop before a body is read (route, token, table, size:
cheap refusals never read the body); :meth:`Handler.rows` runs on a worker
thread (parse, the table's rules, envelopes); the result goes to
:class:`spoold.ingest.commit.GroupCommit` and the 200 is sent once its future
says the rows are fsync'd.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import orjson

from spoold.config import Config, validate_identifier, writable_table
from spoold.errors import ConfigError, InputError, UsageError
from spoold.ingest import otlp
from spoold.ingest.ndjson import BadBody, TooLarge, envelope_lines, parse_rows
from spoold.safefile import UnsafeFile, read_file

TABLES = "/v1/tables/"
LOGS = "/v1/logs"
_JSON = "application/json"
ROW_TYPES = frozenset({_JSON, "application/x-ndjson", "application/ndjson", "application/jsonl",
                       "application/x-jsonlines", "application/jsonlines", "application/json-lines"})


class Events(Protocol):
    """What the ingest listener reports (the daemon's metrics implement it)."""

    def request(self, route: str, code: int, duration_s: float) -> None: ...

    def accepted(self, table: str, rows: int) -> None: ...


@dataclass
class Reply:
    code: int
    body: bytes
    content_type: str = _JSON
    retry_after: int | None = None
    close: bool = False  # the connection cannot go on (its body was not read)


@dataclass
class Route:
    """A request that passed :meth:`Handler.check`: where its rows go and how its body is encoded."""

    kind: str  # "tables" or "logs"
    table: str
    gzip: bool
    json: bool  # logs: the OTLP JSON encoding; tables: a JSON array body


def error(code: int, message: str, **kw: Any) -> Reply:
    return Reply(code, orjson.dumps({"error": message}) + b"\n", **kw)


class Handler:
    """The ingest listener's decisions, for one configuration (replaced whole on reload)."""

    def __init__(self, config: Config, token: bytes | None, hosts: frozenset[str] | None = None) -> None:
        self.config = config
        self.token = token
        self.hosts = hosts  # the Host headers a loopback listener without a token answers (None: any)

    def check(self, method: str, target: str, headers: dict[str, str]) -> Route | Reply:
        """A route, or the reply that refuses the request before its body is read."""
        path = target.split("?", 1)[0]
        kind = "logs" if path == LOGS else "tables" if path.startswith(TABLES) else None
        if kind is None:
            return error(404, f"not found: POST {TABLES}<table> or {LOGS}")
        if method != "POST":
            return error(405, "method not allowed: use POST")
        if self.hosts is not None and headers.get("host", "").strip().lower() not in self.hosts:
            # DNS rebinding: a web page whose name now resolves to 127.0.0.1 is "same origin" for the browser
            return error(421, "misdirected request: this listener answers its own loopback address only "
                              "(set [ingest] token_file to serve other Host names)")
        if self.token is not None:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
                return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        ingest = self.config.ingest
        if kind == "logs":
            table = ingest.otlp_logs_table
        else:
            table = unquote(path[len(TABLES):])
            try:
                validate_identifier(table)
            except UsageError as e:
                return error(404, str(e))
            try:
                writable_table(table)
            except UsageError as e:
                return error(403, str(e))
            if not ingest.any_table and table not in self.config.tables:
                return error(403, f"table {table} is not declared in the config ([ingest] any_table = true "
                                  "lets any table be written)")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            return error(415, f"unsupported Content-Encoding {encoding!r}: gzip or none")
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind == "logs":
            if ctype not in ("application/x-protobuf", _JSON):
                return error(415, "OTLP logs: Content-Type application/x-protobuf or application/json")
        elif ctype not in ROW_TYPES:
            # Not only pickiness: a web page may POST text/plain or a form to a loopback port without the
            # browser asking first (no CORS preflight); JSON content types make it ask, and nothing says yes.
            return error(415, f"unsupported Content-Type {ctype!r}: application/x-ndjson or application/json")
        # Agents label JSON lines either way (Fluent Bit's json_lines says application/json): the body's first
        # byte tells a JSON array from JSON lines, as no row line starts with "[".
        return Route(kind, table, encoding == "gzip", ctype == _JSON)

    def rows(self, route: Route, body: bytes) -> tuple[list[bytes], int, Reply | None]:
        """(envelope lines, rows, None) for a body that passed every rule; else ([], 0, the refusal).

        ``body`` is as the client meant it: the server inflates a gzip body as it arrives. For OTLP logs, a
        partial success reply (records rejected) comes with the lines of the others.
        """
        limits = self.config
        try:
            spec = self.config.table(route.table)
            max_line = limits.spool_limits.max_line_bytes
            if route.kind == "tables":
                rows, names = parse_rows(body, body.lstrip()[:1] == b"[")
                return [ln for ln, _ in envelope_lines(spec, rows, names, max_line)], len(rows), None
            return self._logs(route, body, spec, max_line)
        except TooLarge as e:
            return [], 0, self._fail(route, 413, str(e))
        except InputError as e:
            return [], 0, self._fail(route, 400, str(e))

    def _logs(self, route: Route, body: bytes, spec: Any, max_line: int) -> tuple[list[bytes], int, Reply | None]:
        records, rejected, reason = otlp.rows(otlp.decode(body, route.json))
        lines: list[bytes] = []
        kept = 0
        for i in range(0, len(records), 100):  # a record the table's rules refuse costs itself, not its batch
            batch = records[i : i + 100]
            try:
                lines.extend(ln for ln, _ in envelope_lines(spec, batch, [f"record {i + j + 1}" for j in
                                                                           range(len(batch))], max_line))
                kept += len(batch)
            except BadBody:
                for j, rec in enumerate(batch):
                    try:
                        lines.extend(ln for ln, _ in envelope_lines(spec, [rec], [f"record {i + j + 1}"], max_line))
                        kept += 1
                    except BadBody as e:
                        rejected += 1
                        reason = reason or str(e)
        partial = otlp.response(rejected, reason, route.json) if rejected else None
        reply = Reply(200, partial, self._ctype(route)) if partial is not None else None
        return lines, kept, reply

    def ok(self, route: Route, rows: int, partial: Reply | None) -> Reply:
        """The 200 of a request whose rows are all fsync'd in the spool."""
        if partial is not None:
            return partial
        if route.kind == "logs":
            return Reply(200, otlp.response(0, "", route.json), self._ctype(route))
        return Reply(200, orjson.dumps({"table": route.table, "rows": rows}) + b"\n")

    def refuse(self, route: Route | None, code: int, message: str, retry_after: int | None = None) -> Reply:
        """An error reply in the route's own terms (OTLP: a google.rpc.Status)."""
        if route is None:
            return error(code, message, retry_after=retry_after)
        return self._fail(route, code, message, retry_after)

    def _fail(self, route: Route, code: int, message: str, retry_after: int | None = None) -> Reply:
        if route.kind != "logs":
            return error(code, message, retry_after=retry_after)
        rpc = {400: 3, 413: 3, 503: 14}.get(code, 2)  # INVALID_ARGUMENT, UNAVAILABLE, UNKNOWN
        return Reply(code, otlp.status(rpc, message, route.json), self._ctype(route), retry_after)

    @staticmethod
    def _ctype(route: Route) -> str:
        return _JSON if route.json else "application/x-protobuf"


def loopback_hosts(host: str, port: int) -> frozenset[str]:
    """The Host headers naming a loopback listener on ``port``."""
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    return frozenset(f"{n}:{port}".lower() for n in names) | frozenset(n.lower() for n in names if port == 80)


def read_token(path: str, listen_host_loopback: bool, spool_group: str | None = None) -> bytes | None:
    """``[ingest] token_file``'s token (read once, at start-up); ConfigError when it is unsafe or missing where
    needed: a non-loopback ``listen`` without a token would let anyone on the network write rows, and a spool
    shared with a producer group would be written through the listener by every local user."""
    if not path:
        if not listen_host_loopback:
            raise ConfigError("ingest.listen is not a loopback address and ingest.token_file is not set: anyone "
                              "who can reach it could write rows; set a token_file (docs/ingest.md)")
        check_group_token(spool_group, None)
        return None
    try:
        st = os.stat(path)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ConfigError(f"ingest.token_file {path}: must be owned by spoold's user and readable by it alone "
                              "(chmod 600)")
        token = read_file(path, limit=4097).strip()
    except (OSError, UnsafeFile) as e:
        raise ConfigError(f"ingest.token_file {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    if not token or len(token) > 4096 or any(b <= 32 or b > 126 for b in token):
        raise ConfigError(f"ingest.token_file {path}: expected one token of printable characters (at most 4096)")
    return token


def check_group_token(spool_group: str | None, token: bytes | None) -> None:
    """ConfigError for ``[spool] group`` with a token-less listener: only the group's members may write the spool,
    and a loopback listener without a token would let every local user write through spoold instead."""
    if spool_group and token is None:
        raise ConfigError(f"spool.group is set ({spool_group}) and the ingest listener has no token: every local "
                          "user could write rows through it, not only the group's members; set ingest.token_file "
                          "(read at start-up) (docs/ingest.md)")

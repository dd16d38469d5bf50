"""The tunable sections of the configuration: ``[flush]``, ``[spool]`` bounds, ``[daemon]``, ``[maintain]``.

Each is a frozen dataclass whose fields are the section's keys with their
embedded defaults (documented in docs/configuration.md); :mod:`spoold.config`
reads the TOML into them and refuses unknown keys and bad values. ``ZERO_OK``
names the keys for which 0 is allowed (it means "off" or "none").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlushSettings:
    debounce_s: float = 120.0
    max_delay_s: float = 600.0
    max_rows: int = 100_000
    chunk_rows: int = 100_000
    shutdown_timeout_s: float = 30.0
    retry_max_s: float = 300.0
    # Expire snapshots past the table's retention (docs/maintenance.md) after a commit:
    # every flush adds one, and pyiceberg's commit cost grows with the snapshots kept.
    expire_snapshots: bool = True
    # An idle daemon re-executes itself after this long to hand back the flush stack's
    # memory (~120 MB that CPython never returns); 0: never.
    idle_restart_s: float = 300.0
    # A chunk (one commit) is also cut at this many bytes of spool lines, so memory is
    # bounded by bytes, not only by rows (rows of 1 MB each would otherwise need GBs).
    chunk_bytes: int = 64 << 20
    # Until a fresh load this long after one of this spool's commits to a table still shows it, the
    # spool keeps the committed rows (a create that is not atomic may yet replace a new table; see
    # docs/fleet.md). Not waited for where the catalog's create is exclusive (SQL).
    verify_after_s: float = 60.0

    ZERO_OK = frozenset({"idle_restart_s", "verify_after_s"})


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    """``[spool]`` bounds: past ``max_bytes`` or ``min_free_bytes`` an append is refused whole (SpoolFull);
    the quarantine's own budget and retention."""

    # Pending bytes per table (active + flush files); 0: no per-table bound.
    max_bytes: int = 0
    # Free bytes kept on the spool's filesystem; 0: none. AUTO_FREE: 2% of the filesystem, at most 256 MiB.
    min_free_bytes: int = -1
    # The longest line spoold reads or writes whole (an append's input line, a spool line, a source
    # line): a longer one is refused or quarantined by offset, never held in memory whole.
    max_line_bytes: int = 32 << 20
    # Bytes of quarantine records kept per table; past it (or min_free_bytes) records are counted, not
    # written. 0: no per-table bound.
    quarantine_max_bytes: int = 256 << 20
    # Quarantine files older than this are removed by the daemon; 0: kept until replayed or removed.
    quarantine_retention_s: float = 0.0

    ZERO_OK = frozenset({"max_bytes", "min_free_bytes", "quarantine_max_bytes", "quarantine_retention_s"})
    AUTO_FREE = -1


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """``[daemon]``: what ``spoold run`` serves and how it watches."""

    # HOST:PORT for GET /metrics and GET /health; empty: off.
    listen: str = ""
    # A non-loopback listen address (0.0.0.0, a LAN address, a host name) is refused unless this is true:
    # /metrics and /health have no authentication. True also accepts any Host header.
    listen_public: bool = False
    # Full look at spool and sources even without events (a safety net for missed events).
    rescan_s: float = 60.0
    # A failure that keeps recurring (a table's flush, the watcher) is logged at its first
    # occurrence, then again at most this often, with how many were not (-v logs each).
    log_repeat_s: float = 60.0

    ZERO_OK = frozenset[str]()


@dataclass(frozen=True, slots=True)
class MaintainSettings:
    """``[maintain]``: table maintenance the daemon runs by itself between flushes."""

    enabled: bool = True
    # Triggers, per table (docs/maintenance.md): this daemon's commits since the last run...
    every_commits: int = 50
    # ...data files added since the last run, by any writer (each flush adds small ones; 0: off)...
    small_files: int = 100
    # ...and time since the last run, for a table that has had commits since (0: off).
    interval_s: float = 86400.0
    # Retention: expire snapshots older than this, always keeping the newest keep_snapshots, and never
    # keeping more than max_snapshots. 0: the table's history.expire.max-snapshot-age-ms /
    # min-snapshots-to-keep (Iceberg: 5 days / 1) / spoold.history.max-snapshots (unset: no cap).
    max_snapshot_age_s: float = 0.0
    keep_snapshots: int = 0
    max_snapshots: int = 0
    # Files no metadata references are deleted only once older than this: another writer's
    # files are unreferenced until its commit lands (Iceberg's own default: 3 days).
    orphan_age_s: float = 259200.0
    # Orphan cleanup also sweeps a table's write.data.path / write.metadata.path when they lie outside its
    # location. Off: anyone with catalog access can point those at any directory, which would then be
    # emptied; turn it on only where such paths are the table's alone.
    orphans_outside_location: bool = False
    # Compaction's target file size where the table sets no write.target-file-size-bytes
    # (Iceberg's 512 MB suits clusters; a small host rewrites 64 MB groups comfortably).
    target_file_bytes: int = 64 << 20

    ZERO_OK = frozenset({"small_files", "interval_s", "max_snapshot_age_s", "keep_snapshots", "max_snapshots"})


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """``[ingest]``: rows over HTTP (docs/ingest.md), served by ``spoold run`` on a listener of its own."""

    # HOST:PORT for POST /v1/tables/<table> and POST /v1/logs; empty: off.
    listen: str = ""
    # The table OTLP log records go to (its schema: docs/ingest.md).
    otlp_logs_table: str = "otel.logs"
    # Any valid table name may be written; false: only tables the config declares (and otlp_logs_table).
    any_table: bool = False
    # A file holding the bearer token requests must carry (owner-only permissions); empty: none
    # (refused for a non-loopback listen).
    token_file: str = ""
    # A request body larger than this (sent, or once gunzipped) is refused whole (413).
    max_body_bytes: int = 16 << 20
    # Connections open at once; past it the idle ones, then the slowest readers, are closed for a new one.
    max_connections: int = 512
    # A request's line and headers must be in within this long of its first byte (or of the connection).
    header_timeout_s: float = 10.0
    # A request's body must be in within this long of its headers.
    body_timeout_s: float = 30.0
    # A keep-alive connection with no request in flight is closed after this long.
    idle_timeout_s: float = 60.0
    # The Retry-After of a 503 (spool full, draining), in seconds.
    retry_after_s: int = 5
    # Built-in TLS: PEM certificate chain and key files (both or neither); empty: plain HTTP.
    tls_cert: str = ""
    tls_key: str = ""

    ZERO_OK = frozenset[str]()

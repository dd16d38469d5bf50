"""Every name under the spool root, defined once, and the mode of spoold's state files there.

The tree (docs/spool-layout.md says what each holds and who may read it)::

    <root>/.daemon.lock  .daemon.json  .tail/  .backfill/<table>/  .rebuild/<table>.json
    <root>/<table>/active.jsonl  flush-<seq>.jsonl  quarantine/  .held/
                   .lock  .flush-lock  .seq  .table-uuid  .last-flush.json  .last-maintenance.json
                   .dropped.json

A leaf: the spool, the sources, backfill, the daemon and the Iceberg seam (which
pins a table's uuid here) all take their names from this module; state files are
written with :func:`spoold.durable.write_state`.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

# -- a table's directory ----------------------------------------------------------------------------------------
ACTIVE = "active.jsonl"  # producers append here, under LOCK
FLUSH_RE = re.compile(r"flush-(\d{20})\.jsonl")  # rotated, immutable
QUARANTINE = "quarantine"  # rejected lines and rows, one record each
HELD = ".held"  # committed rows kept until their table is verified (docs/fleet.md)
LOCK = ".lock"  # the append and rotate lock
FLUSH_LOCK = ".flush-lock"  # one flusher per table
SEQ = ".seq"  # the last flush file's sequence number
TABLE_UUID = ".table-uuid"  # the uuid of the table this spool's commits were verified in
LAST_FLUSH = ".last-flush.json"  # this spool's last flush attempt
LAST_MAINTENANCE = ".last-maintenance.json"  # this spool's last maintenance run
DROPPED = ".dropped.json"  # how many quarantined records `spoold quarantine drop` discarded
REBUILD_LEGACY = ".rebuild.json"  # an unfinished rebuild's state as spoold kept it before REBUILD_DIR: read only
# when the spool's owner wrote it (a rebuild interrupted across an upgrade), removed when that rebuild ends
TALLY = ".tally.json"  # quarantine records past the budget, counted (in QUARANTINE)
TALLY_LOCK = ".tally.lock"
# -- the spool root -----------------------------------------------------------------------------------------------
DAEMON_LOCK = ".daemon.lock"  # one daemon per spool root; holds its pid
DAEMON_STATE = ".daemon.json"  # the running daemon's view, read by `spoold status`
TAIL_DIR = ".tail"  # the tailer's offsets (and PASS_SUFFIX marks of a pass in progress)
PASS_SUFFIX = ".pass"
BACKFILL_DIR = ".backfill"  # backfill's cursors, per table
REBUILD_DIR = ".rebuild"  # unfinished `spoold rebuild`s, <table>.json each (flushes of the table wait meanwhile)
REFUSED_PREFIX = ".refused-"  # an entry a producer planted, moved aside (never followed)


def temp_name(name: str) -> str:
    """A temp file's name beside ``name``: a dot file no other process can predict (create it ``O_EXCL``)."""
    return f".{name}.{secrets.token_hex(8)}.tmp"


def flush_name(seq: int) -> str:
    return f"flush-{seq:020d}.jsonl"


def flush_seq(path: Path) -> int | None:
    m = FLUSH_RE.fullmatch(path.name)
    return int(m.group(1)) if m else None


def rebuild_state(root: Path, table: str) -> Path:
    """The state file of an unfinished ``spoold rebuild`` of ``table``: in the daemon's private REBUILD_DIR,
    never in the table's directory, where producer-group members may create files."""
    return root / REBUILD_DIR / f"{table}.json"


def state_mode(group: str | None) -> int:
    """The mode of spoold's own state files: private, or readable by the producer group (never writable by it)."""
    return 0o640 if group else 0o600

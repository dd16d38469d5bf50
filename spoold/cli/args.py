"""The command line's grammar: every command, option and ``--help`` text, and the checks of option values.

:mod:`spoold.cli.entry` parses with :func:`parser` and runs the command; nothing
here imports more than the standard library and spoold's light modules.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from spoold.errors import UsageError
from spoold.sources.detect import RULE as FORMAT_RULE

_DESCRIPTION = """\
spoold lands event rows into Apache Iceberg tables: nothing lost, nothing doubled.
Producers append rows to a local spool; the daemon (or `spoold flush`) commits them.
Config: --config PATH, else $SPOOLD_CONFIG, else ~/.config/spoold/spoold.toml
($XDG_CONFIG_HOME), else /etc/spoold/spoold.toml (never ./spoold.toml), else
embedded defaults under $STATE_DIRECTORY or $XDG_STATE_HOME/spoold (SQLite
catalog, local warehouse)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(2, f"spoold: error: {_unrecognized(message) or message} (see --help)\n")


_SHOWN = 3  # extra arguments named in the error; the shell may have expanded a glob to thousands


def _unrecognized(message: str) -> str | None:
    """argparse's "unrecognized arguments: <every one>" made short, with a hint when they are existing paths:
    the shell expanded an unquoted glob (``--source ~/x/*.jsonl``) into many arguments."""
    if not message.startswith(_UNRECOGNIZED):
        return None
    extra = message[len(_UNRECOGNIZED):].split(" ")
    shown = " ".join(extra[:_SHOWN]) + (f" and {len(extra) - _SHOWN} more" if len(extra) > _SHOWN else "")
    if not all(os.path.lexists(os.path.expanduser(p)) for p in extra):
        return f"unrecognized arguments: {shown}"
    return (f"{len(extra)} unexpected path(s): {shown}; did the shell expand an unquoted glob? Quote the pattern "
            "(--source '~/x/*.jsonl') so that spoold expands it, or repeat --source before each path")


_UNRECOGNIZED = "unrecognized arguments: "


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="configuration file (TOML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object")
    common.add_argument(
        "--log-format", choices=("text", "json"), default=argparse.SUPPRESS, help="log line format on stderr"
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")

    p = _Parser(prog="spoold", description=_DESCRIPTION, parents=[common],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    from spoold import __version__

    p.add_argument("--version", action="version", version=f"spoold {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground (systemd Type=notify)",
                   description="Watch the spool and configured sources; commit on a debounce; "
                   "SIGTERM/SIGINT flush and exit; SIGHUP reloads the config, or, when spoold run has a "
                   "controlling terminal, is that terminal hanging up and flushes and exits too.")

    a = sub.add_parser("append", parents=[common], help="append JSON rows (one object per line) to a table's spool",
                       description="Each input line is a JSON object (one row; keys are column names). "
                       "The whole input is validated first: on any bad line nothing is appended (exit 2).")
    a.add_argument("table", help="table identifier, namespace.name")
    a.add_argument("file", nargs="?", default="-", help="input file, or - for stdin (default)")

    f = sub.add_parser("flush", parents=[common], help="rotate and commit now, once",
                       description="Rotate each table's active spool and commit every pending row, once.")
    f.add_argument("tables", nargs="*", metavar="TABLE", help="tables to flush (default: every spooled table)")

    b = sub.add_parser("backfill", parents=[common], help="import history from source files without doubling",
                       description="Materialize rows from source files and write only those whose key is "
                       "neither committed nor spooled, at most --limit rows a run: run it again to go on. "
                       "Ctrl-C stops after the current chunk (exit 130). Exit 2 when every row it "
                       "read was quarantined (a wrong --format or table config).")
    b.add_argument("table", help="table identifier, namespace.name")
    b.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="file, directory or glob (repeatable)")
    b.add_argument("--format", choices=("auto", "jsonl", "transcript"), default="auto",
                   help=f"source format; {FORMAT_RULE}")
    lim = b.add_mutually_exclusive_group()
    lim.add_argument("--limit", type=_positive_int, default=1000, metavar="N",
                     help="consider at most N rows read from the sources this run (default 1000); each source file's "
                     "cursor remembers where the run stopped, so the next run goes on from there")
    lim.add_argument("--all", action="store_true", help="no limit: read on to the end of every source")
    b.add_argument("--restart", action="store_true",
                   help="read every source from its start, ignoring the cursors of earlier runs")
    b.add_argument("--dry-run", action="store_true",
                   help="count and show a sample of keys; write nothing, move no cursor")

    m = sub.add_parser("maintain", parents=[common], help="compact small files, drop repeated keys, expire history, "
                       "delete orphans", description="Table maintenance now (the daemon also runs it by itself): "
                       "compact each partition's small data files (one row per key kept), expire snapshots "
                       "and delete the files only they referenced, delete orphan files older than "
                       "[maintain] orphan_age_s. See docs/maintenance.md.")
    m.add_argument("tables", nargs="*", metavar="TABLE",
                   help="tables to maintain (default: every table of the config and the spool)")
    m.add_argument("--older-than", type=_duration, metavar="DURATION",
                   help="expire snapshots older than this (e.g. 0s, 36h, 7d; default: [maintain] "
                   "max_snapshot_age_s, else the table's history.expire.max-snapshot-age-ms)")
    m.add_argument("--keep", type=_positive_int, metavar="N",
                   help="always keep the newest N snapshots (default: [maintain] keep_snapshots, else the "
                   "table's history.expire.min-snapshots-to-keep)")
    m.add_argument("--dry-run", action="store_true", help="report what would be done; change nothing")

    s = sub.add_parser("status", parents=[common], help="spooled, quarantined and committed rows per table",
                       description="Every table of the config, the spool and the catalog that spoold wrote to, "
                       "with its last flush, backfill and maintenance (read from the table). Never needs the "
                       "catalog: when it is unreachable, committed fields are null and catalog_error says why.")
    s.add_argument("tables", nargs="*", metavar="TABLE", help="tables to show (default: all)")

    q = sub.add_parser("quarantine", parents=[common], help="what is in quarantine, by reason",
                       description="Records per table and reason, oldest and newest. The records are JSON lines "
                       "under <spool>/<table>/quarantine/ (grep them); `spoold quarantine replay TABLE` "
                       "validates them again and re-spools those that pass; `spoold quarantine drop TABLE` discards "
                       "those that can never pass.")
    q.add_argument("tables", nargs="*", metavar="TABLE", help="tables to show (default: all with a quarantine)")
    r = sub.add_parser("quarantine replay", parents=[common], help="re-validate quarantined records; re-spool "
                       "those that pass now", description="Validate every quarantined record of TABLE again "
                       "against the current config and table schema; re-spool those that pass (flush then "
                       "commits them, without doubles) and keep the rest with their reasons. Safe to interrupt "
                       "and to run again.")
    r.add_argument("table", help="table identifier, namespace.name")
    r.add_argument("--dry-run", action="store_true", help="count what would be replayed; change nothing")
    d = sub.add_parser("quarantine drop", parents=[common], help="discard quarantined records for good",
                       description="Discard TABLE's quarantined records (all, or those whose reason contains "
                       "TEXT): for records that can never pass (not JSON, a torn line, a bad envelope, a line "
                       "too long). Asks first on a terminal; elsewhere --yes is required. `spoold status` counts "
                       "what was dropped.")
    d.add_argument("table", help="table identifier, namespace.name")
    d.add_argument("--reason", metavar="TEXT", help="only records whose reason contains TEXT (case matters)")
    d.add_argument("--yes", action="store_true", help="do not ask")

    rb = sub.add_parser("rebuild", parents=[common], help="re-create a table under the config's schema and "
                        "partitioning", description="Re-create TABLE under the config's declared column types "
                        "and partition_by when Iceberg cannot change them in place (e.g. string to timestamptz): "
                        "every committed row is validated again into the new table, rows that no longer pass go "
                        "to quarantine (replayable), the old table stays as TABLE__backup_<stamp>. Flushes of "
                        "TABLE wait meanwhile. Safe to interrupt: run it again to finish (or --abort it before "
                        "the tables swap). See docs/commands.md.")
    rb.add_argument("table", help="table identifier, namespace.name")
    rb.add_argument("--dry-run", action="store_true",
                    help="count the rows that would be copied and quarantined (per reason); change nothing")
    rb.add_argument("--drop-backup", action="store_true",
                    help="drop the backup tables a rebuild left, and delete their files under their own location")
    rb.add_argument("--abort", action="store_true",
                    help="roll back an unfinished rebuild that is still copying: drop its staging table, and "
                    "flushes go on into the old table")
    return p


def join_replay(argv: list[str]) -> list[str]:
    """``quarantine replay`` and ``quarantine drop`` are one command each to argparse: join the two words
    where they are the command."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--log-format"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        if a == "quarantine" and i + 1 < len(argv) and argv[i + 1] in ("replay", "drop"):
            return [*argv[:i], f"quarantine {argv[i + 1]}", *argv[i + 2:]]
        return argv
    return argv


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _duration(text: str) -> float:
    from spoold.daemon.maintenance import parse_duration

    try:
        return parse_duration(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

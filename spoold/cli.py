"""Command line: parse → config → one library call → exit code (0 ok, 1 runtime failure, 2 bad usage/input).

Heavy modules (pyarrow, pyiceberg) are imported inside the commands that need
them, so ``spoold append`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from spoold.config import Config, load_config, validate_identifier
from spoold.errors import InputError, SpooldError, UsageError
from spoold.sources.detect import RULE as FORMAT_RULE

log = logging.getLogger("spoold")

_DESCRIPTION = """\
spoold lands event rows into Apache Iceberg tables: nothing lost, nothing doubled.
Producers append rows to a local spool; the daemon (or `spoold flush`) commits them.
Config: --config PATH, else $SPOOLD_CONFIG, else ./spoold.toml, else
/etc/spoold/spoold.toml, else embedded defaults under $STATE_DIRECTORY or
$XDG_STATE_HOME/spoold (SQLite catalog, local warehouse)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(2, f"spoold: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
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
                   "SIGTERM flushes and exits, SIGHUP reloads the config.")

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
                       "materialized was quarantined (a wrong --format or table config).")
    b.add_argument("table", help="table identifier, namespace.name")
    b.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="file, directory or glob (repeatable)")
    b.add_argument("--format", choices=("auto", "jsonl", "transcript"), default="auto",
                   help=f"source format; {FORMAT_RULE}")
    lim = b.add_mutually_exclusive_group()
    lim.add_argument("--limit", type=_positive_int, default=1000, metavar="N",
                     help="consider at most N materialized rows this run (default 1000); each source file's "
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
                       "validates them again and re-spools those that pass.")
    q.add_argument("tables", nargs="*", metavar="TABLE", help="tables to show (default: all with a quarantine)")
    r = sub.add_parser("quarantine replay", parents=[common], help="re-validate quarantined records; re-spool "
                       "those that pass now", description="Validate every quarantined record of TABLE again "
                       "against the current config and table schema; re-spool those that pass (flush then "
                       "commits them, without doubles) and keep the rest with their reasons. Safe to interrupt "
                       "and to run again.")
    r.add_argument("table", help="table identifier, namespace.name")
    r.add_argument("--dry-run", action="store_true", help="count what would be replayed; change nothing")
    return p


def _join_replay(argv: list[str]) -> list[str]:
    """``quarantine replay`` is one command to argparse: join the two words where they are the command."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--log-format"):
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        if a == "quarantine" and i + 1 < len(argv) and argv[i + 1] == "replay":
            return [*argv[:i], "quarantine replay", *argv[i + 2:]]
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
    from spoold.maintenance import parse_duration

    try:
        return parse_duration(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def setup_logging(fmt: str = "text", verbose: bool = False) -> None:
    """One line per event on stderr (journald adds the time)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("pyiceberg", "sqlalchemy", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return orjson.dumps(doc).decode()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spoold`` command; returns the exit code."""
    args = _parser().parse_args(_join_replay(list(sys.argv[1:] if argv is None else argv)))
    args.whole_process = argv is None  # the `spoold` command itself, not a caller passing arguments
    as_json = getattr(args, "json", False)
    setup_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
    try:
        config = load_config(getattr(args, "config", None))
        return int(_COMMANDS[args.command](args, config, as_json) or 0)
    except SpooldError as e:
        print(f"spoold: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the spool's disk: full, read-only, a file where a directory should be
        print(f"spoold: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spoold: interrupted", file=sys.stderr)
        return 130


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(text)


def cmd_append(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.append import append_input

    validate_identifier(args.table)
    n = append_input(config, args.table, args.file)
    _emit({"table": args.table, "appended": n}, as_json, f"appended {n} row(s) to {args.table}")
    return 0


def cmd_flush(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Flush; a table that failed is named once on stderr, and stdout never claims there was nothing to do."""
    from spoold.flush import flush_all
    from spoold.iceberg.sink import Sink
    from spoold.spool import Spool

    for t in args.tables:
        validate_identifier(t)
    results, errors = flush_all(config, Spool.from_config(config), Sink(config), args.tables or None)
    doc: dict[str, Any] = {"tables": {t: r.summary() for t, r in results.items()}}
    if errors:
        doc["errors"] = {t: str(e) for t, e in errors.items()}
    lines = [f"{t}: committed {r.committed}, deduplicated {r.deduplicated}, quarantined {r.quarantined}"
             for t, r in results.items()]
    if as_json or lines or not errors:
        _emit(doc, as_json, "\n".join(lines) or "nothing to flush")
    for t, e in errors.items():
        print(f"spoold: error: {t}: {e}", file=sys.stderr)
    return max((e.exit_code for e in errors.values()), default=0)


def cmd_backfill(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Run, print the summary; exit 0, 1 if a source was unreadable, 2 if every row was quarantined, 130
    when stopped by Ctrl-C. A run stopped by its limit says so on stderr, with how to go on."""
    from spoold.backfill import backfill
    from spoold.progress import Progress, StopOnInterrupt

    validate_identifier(args.table)
    progress = Progress(sys.stderr, f"backfill {args.table}")
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(progress)  # log lines (to stderr) erase the bar first
    try:
        with StopOnInterrupt("stopping after the current chunk (Ctrl-C again to abort)") as stop:
            s = backfill(config, args.table, args.source, args.format, None if args.all else args.limit,
                         args.dry_run, restart=args.restart, progress=progress, stop=stop)
    finally:
        for h in handlers:
            h.removeFilter(progress)
    verb = "would write" if s.dry_run else "wrote"
    lines = [
        f"{s.table}: scanned {s.scanned} line(s), materialized {s.materialized} row(s); "
        f"{verb} {s.would_write if s.dry_run else s.written}; skipped {s.skipped_committed} committed, "
        f"{s.skipped_spooled} spooled, {s.duplicates_in_source} duplicate(s) in the sources; "
        f"quarantined {s.quarantined}; {s.failed} bad source line(s)"
    ]
    if s.dry_run and s.sample_keys:
        lines.append("sample keys: " + ", ".join(s.sample_keys))
    if s.unreadable_spool_files or s.unreadable_sources:
        lines.append(f"unreadable: {s.unreadable_spool_files} spool file(s), {s.unreadable_sources} source(s)")
    if s.interrupted:
        lines.append("interrupted: committed chunks stay; re-run to continue (keys prevent doubles)")
    elif not s.scanned and s.resumed_files and not s.unreadable_sources:
        lines.append("nothing new since the last run (--restart reads every source again)")
    _emit(s.as_dict(), as_json, "\n".join(lines))
    sys.stdout.flush()
    if s.all_quarantined:
        print(f"spoold: error: all {s.quarantined} row(s) materialized were quarantined, first because: "
              f"{s.first_quarantine_reason} (check --format and the table's key; --restart reads the sources again)",
              file=sys.stderr)
        return 2
    if s.limit_reached and not s.interrupted:
        print(f"spoold: stopped at --limit {args.limit}: " + ("--all counts everything" if s.dry_run else
              "run again to continue, or use --all"), file=sys.stderr)
    if s.interrupted:
        return 130
    return 1 if s.unreadable_sources else 0


def cmd_status(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.status import status, status_lines

    for t in args.tables:
        validate_identifier(t)
    doc = status(config, args.tables)
    _emit(doc, as_json, "\n".join(status_lines(doc)))
    return 0


def cmd_quarantine(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.quarantine import quarantine_doc, summary_lines
    from spoold.spool import Spool

    for t in args.tables:
        validate_identifier(t)
    doc = quarantine_doc(Spool.from_config(config), args.tables)
    _emit(doc, as_json, "\n".join(summary_lines(doc)))
    return 0


def cmd_replay(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.replay import replay

    validate_identifier(args.table)
    s = replay(config, args.table, dry_run=args.dry_run)
    verb = "would replay" if s.dry_run else "replayed"
    text = f"{args.table}: {verb} {s.replayed} record(s) ({s.rows} row(s) back in the spool); kept {s.kept}"
    if s.replayed and not s.dry_run:
        text += f"\n`spoold flush {args.table}` (or the daemon) commits them"
    _emit({"replayed": s.replayed, "kept": s.kept, "dry_run": s.dry_run, "rows": s.rows}, as_json, text)
    return 0


def cmd_maintain(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.iceberg.maintain import Options, maintain_tables

    for t in args.tables:
        validate_identifier(t)
    opts = Options(older_than_s=args.older_than, keep=args.keep, dry_run=args.dry_run)
    reports, errors = maintain_tables(config, args.tables or None, opts)
    doc: dict[str, Any] = {"tables": {t: r.as_dict() for t, r in reports.items()}}
    if errors:
        doc["errors"] = {t: str(e) for t, e in errors.items()}
    lines = [r.line(t) for t, r in reports.items()] or (["no tables to maintain"] if not errors else [])
    if as_json or lines:
        _emit(doc, as_json, "\n".join(lines))
    for t, e in errors.items():
        print(f"spoold: error: {t}: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_run(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.daemon import run_daemon
    from spoold.runlock import daemon_lock
    from spoold.spool import Spool

    with daemon_lock(Spool.from_config(config)):  # one daemon per spool root
        return run_daemon(config, config_path=getattr(args, "config", None), may_restart=args.whole_process)


_COMMANDS = {"append": cmd_append, "flush": cmd_flush, "backfill": cmd_backfill, "status": cmd_status, "run": cmd_run,
             "quarantine": cmd_quarantine, "quarantine replay": cmd_replay, "maintain": cmd_maintain}

__all__ = ["main", "setup_logging", "InputError", "UsageError"]

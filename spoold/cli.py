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
                       "neither committed nor spooled. Ctrl-C stops after the current chunk (exit 130).")
    b.add_argument("table", help="table identifier, namespace.name")
    b.add_argument("--source", action="append", required=True, metavar="PATH",
                   help="file, directory or glob (repeatable)")
    b.add_argument("--format", choices=("jsonl", "transcript"), default="jsonl", help="source format (default jsonl)")
    lim = b.add_mutually_exclusive_group()
    lim.add_argument("--limit", type=_positive_int, default=1000, metavar="N",
                     help="consider at most N materialized rows this run (default 1000)")
    lim.add_argument("--all", action="store_true", help="no limit")
    b.add_argument("--dry-run", action="store_true", help="count and show a sample of keys; write nothing")

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
                       description="Never needs the catalog: when it is unreachable, committed fields are null "
                       "and catalog_error says why.")
    s.add_argument("tables", nargs="*", metavar="TABLE", help="tables to show (default: all)")
    return p


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
    args = _parser().parse_args(argv)
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
             for t, r in results.items()] or ["nothing to flush"]
    _emit(doc, as_json, "\n".join(lines))
    for t, e in errors.items():
        print(f"spoold: error: {t}: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_backfill(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Run, print the summary; exit 0, 1 if a source was unreadable, 130 when stopped by Ctrl-C."""
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
                         args.dry_run, progress=progress, stop=stop)
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
    _emit(s.as_dict(), as_json, "\n".join(lines))
    sys.stdout.flush()
    if s.interrupted:
        return 130
    return 1 if s.unreadable_sources else 0


def cmd_status(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.status import daemon_lines, status

    for t in args.tables:
        validate_identifier(t)
    doc = status(config, args.tables)
    lines = []
    for t, s in doc["tables"].items():
        committed = "?" if s["committed_rows"] is None else s["committed_rows"]
        age = "-" if s["oldest_pending_s"] is None else f"{s['oldest_pending_s']:.0f}s"
        last = s.get("last_flush") or {}
        lines.append(
            f"{t}: spooled {s['spooled_rows']} row(s) in {s['spooled_files']} file(s), oldest {age}; "
            f"quarantined {s['quarantined']}; committed {committed}; last flush {last.get('result', '-')}"
        )
    lines += daemon_lines(doc)
    if "catalog_error" in doc:
        lines.append(f"catalog unreachable: {doc['catalog_error']}")
    _emit(doc, as_json, "\n".join(lines) or "no tables")
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

    return run_daemon(config, config_path=getattr(args, "config", None), may_restart=args.whole_process)


_COMMANDS = {"append": cmd_append, "flush": cmd_flush, "backfill": cmd_backfill, "status": cmd_status, "run": cmd_run,
             "maintain": cmd_maintain}

__all__ = ["main", "setup_logging", "InputError", "UsageError"]

"""Command line: parse → config → one library call → exit code (0 ok, 1 runtime failure, 2 bad usage/input).

Heavy modules (pyarrow, pyiceberg) are imported inside the commands that need
them, so ``spoold append`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from spoold.cli.args import join_replay, parser
from spoold.config import Config, load_config, validate_identifier
from spoold.errors import SpooldError, UsageError
from spoold.redact import RedactingFormatter, redact

log = logging.getLogger("spoold")

def setup_logging(fmt: str = "text", verbose: bool = False) -> None:
    """One line per event on stderr (journald adds the time)."""
    handler = logging.StreamHandler(sys.stderr)
    inner = _JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(message)s")
    handler.setFormatter(RedactingFormatter(inner))  # no credential reaches a log, tracebacks included
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
    args = parser().parse_args(join_replay(list(sys.argv[1:] if argv is None else argv)))
    args.whole_process = argv is None  # the `spoold` command itself, not a caller passing arguments
    as_json = getattr(args, "json", False)
    setup_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
    try:
        config = load_config(getattr(args, "config", None))
        return int(_COMMANDS[args.command](args, config, as_json) or 0)
    except SpooldError as e:
        print(f"spoold: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `spoold quarantine | head`: the reader is gone; quiet, as other tools are
        _stdout_gone()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped
    except OSError as e:  # the spool's disk: full, read-only, a file where a directory should be
        print(f"spoold: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spoold: interrupted", file=sys.stderr)
        return 130


def _stdout_gone() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail on the closed pipe too."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print(text)


def cmd_append(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.cli.append import append_input

    validate_identifier(args.table)
    n = append_input(config, args.table, args.file)
    _emit({"table": args.table, "appended": n}, as_json, f"appended {n} row(s) to {args.table}")
    return 0


def cmd_flush(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Flush; a table that failed is named once on stderr, and stdout never claims there was nothing to do."""
    from spoold.flush.flush import flush_all
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    spool = Spool.from_config(config)
    for t in args.tables:
        validate_identifier(t)
        if t not in config.tables and not spool.table_dir(t).is_dir():
            raise UsageError(f"table {t}: not in the config and nothing spooled for it (`spoold status` lists "
                             "the tables)")
    results, errors = flush_all(config, spool, Sink(config), args.tables or None)
    doc: dict[str, Any] = {"tables": {t: r.summary() for t, r in results.items()}}
    if errors:
        doc["errors"] = {t: str(e) for t, e in errors.items()}
    lines = [f"{t}: committed {r.committed}, deduplicated {r.deduplicated}, quarantined {r.quarantined}"
             for t, r in results.items() if r.files]  # a table with nothing spooled: "nothing to flush"
    if as_json or lines or not errors:
        _emit(doc, as_json, "\n".join(lines) or "nothing to flush")
    for t, e in errors.items():
        print(f"spoold: error: {t}: {e}", file=sys.stderr)
    return max((e.exit_code for e in errors.values()), default=0)


def cmd_backfill(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Run, print the summary; exit 0, 1 if a source was unreadable, 2 if every row was quarantined, 130
    when stopped by Ctrl-C. A run stopped by its limit says so on stderr, with how to go on."""
    from spoold.backfill.run import backfill
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
        f"{s.table}: read {s.scanned} source line(s) giving {s.materialized} row(s); "
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
        print(f"spoold: error: all {s.quarantined} row(s) read from the sources were quarantined, first because: "
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
    from spoold.cli.status import status, status_lines

    for t in args.tables:
        validate_identifier(t)
    doc = status(config, args.tables)
    _emit(doc, as_json, "\n".join(status_lines(doc)))
    return 0


def cmd_quarantine(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.spool.quarantine import quarantine_doc, summary_lines
    from spoold.spool.spool import Spool

    for t in args.tables:
        validate_identifier(t)
    doc = quarantine_doc(Spool.from_config(config), args.tables)
    _emit(doc, as_json, "\n".join(summary_lines(doc)))
    return 0


def cmd_replay(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.flush.replay import replay

    validate_identifier(args.table)
    s = replay(config, args.table, dry_run=args.dry_run)
    verb = "would replay" if s.dry_run else "replayed"
    text = f"{args.table}: {verb} {s.replayed} record(s) ({s.rows} row(s) back in the spool); kept {s.kept}"
    if s.replayed and not s.dry_run:
        text += f"\n`spoold flush {args.table}` (or the daemon) commits them"
    _emit({"replayed": s.replayed, "kept": s.kept, "dry_run": s.dry_run, "rows": s.rows}, as_json, text)
    return 0


def cmd_drop(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Discard quarantined records; asks on a terminal, and refuses (exit 2) elsewhere without --yes."""
    from spoold.spool.discard import drop, matching
    from spoold.spool.spool import Spool

    validate_identifier(args.table)
    spool = Spool.from_config(config)
    which = "" if args.reason is None else f" whose reason contains {args.reason!r}"
    if not args.yes:
        n = matching(spool, args.table, args.reason).dropped
        if not n:
            _emit({"table": args.table, "dropped": 0, "kept": matching(spool, args.table, None).dropped}, as_json,
                  f"{args.table}: no quarantined record{which}")
            return 0
        if not sys.stdin.isatty():
            raise UsageError(f"would drop {n} quarantined record(s) of {args.table}{which}: pass --yes to drop "
                             "them without asking (there is no terminal to ask on)")
        print(f"drop {n} quarantined record(s) of {args.table}{which}? They cannot be brought back. [y/N] ",
              end="", file=sys.stderr, flush=True)
        if sys.stdin.readline(16).strip().lower() not in ("y", "yes"):
            print("spoold: nothing dropped", file=sys.stderr)
            return 1
    s = drop(spool, args.table, args.reason)
    text = f"{args.table}: dropped {s.dropped} quarantined record(s){which}; kept {s.kept}"
    if s.unsafe:
        text += f"; {s.unsafe} file(s) in the quarantine directory are not spoold's and were left alone"
    _emit({"table": args.table, "dropped": s.dropped, "kept": s.kept}, as_json, text)
    return 0


def cmd_maintain(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.cli.maintain import maintain_tables
    from spoold.iceberg.maintain.run import Options

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


def cmd_rebuild(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    """Rebuild (or ``--drop-backup``); progress on stderr. Exit 2 for a table the catalog does not have."""
    from spoold.flush.rebuild import rebuild
    from spoold.flush.rebuild_drop import abort, drop_backups
    from spoold.progress import Progress

    validate_identifier(args.table)
    if args.abort:
        if args.drop_backup or args.dry_run:
            raise UsageError("rebuild: --abort takes neither --drop-backup nor --dry-run")
        r = abort(config, args.table)
        _emit(r.as_dict(), as_json, f"{args.table}: rebuild aborted; dropped {', '.join(r.dropped)} "
              f"({r.purged_files} file(s) deleted); flushes go on into the old table")
        return 0
    if args.drop_backup:
        r = drop_backups(config, args.table, dry_run=args.dry_run)
        verb = "would drop" if r.dry_run else "dropped"
        text = (f"{args.table}: {verb} {', '.join(r.dropped)}" + ("" if r.dry_run else
                f" ({r.purged_files} file(s) deleted)")) if r.dropped else f"{args.table}: no backup to drop"
        _emit(r.as_dict(), as_json, text)
        return 0
    progress = Progress(sys.stderr, f"rebuild {args.table}")
    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(progress)  # log lines (to stderr) erase the bar first
    try:
        r = rebuild(config, args.table, dry_run=args.dry_run, progress=progress)
    finally:
        progress.clear()
        for h in handlers:
            h.removeFilter(progress)
    if r.nothing_to_do:
        text = f"{args.table}: nothing to rebuild (the table already has the config's types and partitioning)"
    else:
        verb = ("would copy", "would quarantine") if r.dry_run else ("copied", "quarantined")
        text = (f"{args.table}: read {r.rows} row(s); {verb[0]} {r.copied}, {verb[1]} {r.quarantined}, "
                f"{r.deduplicated} repeated key(s) dropped")
        text += "".join(f"\n  {n:>8}  {reason}" for reason, n in r.reasons.items())
        if not r.dry_run:
            text += (f"\nthe old table is {r.backup} until `spoold rebuild {args.table} --drop-backup`"
                     + (f"; `spoold quarantine replay {args.table}` after a fix" if r.quarantined else ""))
    _emit(r.as_dict(), as_json, text)
    return 0


def cmd_run(args: argparse.Namespace, config: Config, as_json: bool) -> int:
    from spoold.daemon.loop import run_daemon
    from spoold.daemon.runlock import daemon_lock
    from spoold.spool.spool import Spool

    with daemon_lock(Spool.from_config(config)):  # one daemon per spool root
        return run_daemon(config, config_path=getattr(args, "config", None), may_restart=args.whole_process)


_COMMANDS = {"append": cmd_append, "flush": cmd_flush, "backfill": cmd_backfill, "status": cmd_status, "run": cmd_run,
             "quarantine": cmd_quarantine, "quarantine replay": cmd_replay, "quarantine drop": cmd_drop,
             "maintain": cmd_maintain, "rebuild": cmd_rebuild}

__all__ = ["main", "setup_logging"]

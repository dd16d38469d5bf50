"""``spoold maintain``: maintenance of every named table now, one after another (the daemon runs it by itself)."""

from __future__ import annotations

import logging

from spoold.config import Config
from spoold.daemon.maintainer import keep_record
from spoold.errors import SpooldError, UsageError
from spoold.iceberg.maintain.run import MaintenanceReport, Options, run_steps
from spoold.iceberg.tables import Tables
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)


def maintain_tables(config: Config, names: list[str] | None, opts: Options) -> tuple[dict[str, MaintenanceReport],
                                                                                     dict[str, SpooldError]]:
    """Every named table (default: those of the config and the spool); per table its report or its error.

    A named table that does not exist is bad input (``UsageError``, before
    anything runs); unnamed ones that were never committed to are skipped.
    """
    tables = Tables(config)
    wanted = names or sorted(set(config.tables) | set(Spool.from_config(config).tables()))
    specs = [config.table(n) for n in wanted]
    existing = []
    for spec in specs:
        if tables.load(spec) is not None:
            existing.append(spec)
        elif names:
            raise UsageError(f"table {spec.identifier} does not exist in the catalog")
    reports: dict[str, MaintenanceReport] = {}
    errors: dict[str, SpooldError] = {}
    for spec in existing:
        report = MaintenanceReport()
        try:
            for _ in run_steps(tables, config, spec, opts, report):
                pass
            reports[spec.identifier] = report
            if not opts.dry_run:
                keep_record(config, spec.identifier, report)
        except SpooldError as e:
            log.error("table %s: maintenance failed: %s", spec.identifier, e)
            errors[spec.identifier] = e
    return reports, errors

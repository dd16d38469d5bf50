"""The world of one ``spoold_env`` test: spool, SQLite catalog and warehouse under one directory.

Its config file is the test's ``SPOOLD_CONFIG``; :meth:`SpooldEnv.table` and
:meth:`SpooldEnv.daemon` rewrite it. Producers' side (``append``) goes through
the real Python API, the commit side (``flush``, ``rows``) through the same
Sink that ``spoold flush`` uses, so a test exercises exactly what production
runs. The outer environment is put back as it was when the test ends.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from spoold.config import Config, parse_config, validate_identifier
from spoold.errors import SpooldError, UsageError
from spoold.spool.spool import Spool, write_atomic
from spoold.testing.daemon import SpooldDaemon

CATALOG_NAME = "spoold"
# The machine's own spoold and systemd context: a test must not inherit them (pyiceberg's
# PYICEBERG_* are matched case-insensitively, as pyiceberg reads them).
_OUTER_VARS = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A daemon under test commits soon after the last append, and never later than this.
_DAEMON_DEBOUNCE_S = 0.1
_DAEMON_MAX_DELAY_S = 2.0


class SpooldEnv:
    """What the ``spoold_env`` fixture yields (see docs/testing.md)."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.config_path = base / "spoold.toml"
        self.spool_root = base / "spool"
        self.catalog_uri = f"sqlite:///{base / 'catalog.db'}"
        self.warehouse = f"file://{base / 'warehouse'}"
        self._tables: dict[str, dict[str, Any]] = {}
        self._flush: dict[str, Any] = {}
        self._config: Config | None = None
        self._spool: Spool | None = None
        self._sink: Any = None  # spoold.iceberg.sink.Sink, made at the first flush or read (pyiceberg is heavy)
        self._daemons: list[SpooldDaemon] = []
        self._running: SpooldDaemon | None = None
        self._patch = pytest.MonkeyPatch()
        self._had_pyiceberg = "pyiceberg.catalog" in sys.modules
        self._isolate()  # first: the config reads its state directory from the environment
        self._write_config(self._tables, self._flush)

    def __repr__(self) -> str:
        return f"<SpooldEnv {self.base}>"

    # -- the test's environment ---------------------------------------------------------------
    def _isolate(self) -> None:
        """``SPOOLD_CONFIG`` → this env; pyiceberg sees only this catalog; no outer state or systemd context."""
        home = self.base / "pyiceberg"
        home.mkdir(exist_ok=True)
        # pyiceberg reads the first .pyiceberg.yaml of $PYICEBERG_HOME, ~ and the cwd: one here stops the search.
        (home / ".pyiceberg.yaml").write_text(
            f"catalog:\n  {CATALOG_NAME}:\n    type: sql\n"
            f"    uri: {json.dumps(self.catalog_uri)}\n    warehouse: {json.dumps(self.warehouse)}\n"
        )
        for k in list(os.environ):
            if k.lower().startswith("pyiceberg_") or k in _OUTER_VARS:
                self._patch.delenv(k)
        self._patch.setenv("PYICEBERG_HOME", str(home))
        self._patch.setenv("XDG_STATE_HOME", str(self.base / "state"))
        self._patch.setenv("SPOOLD_CONFIG", str(self.config_path))
        mod = sys.modules.get("pyiceberg.catalog")
        if mod is not None:
            # pyiceberg read its config when first imported, outside this test: read it again, isolated.
            self._patch.setattr(mod, "_ENV_CONFIG", type(mod._ENV_CONFIG)())

    def close(self) -> None:
        """Stop the daemons, close what this env opened, restore the outer environment."""
        try:
            for d in reversed(self._daemons):
                d.stop()
        finally:
            self._drop_handles()
            self._patch.undo()
            mod = sys.modules.get("pyiceberg.catalog")
            if mod is not None and not self._had_pyiceberg:
                # First imported during this test, under the isolated env: tests after it would otherwise
                # keep this env's view instead of the one pyiceberg reads outside.
                mod._ENV_CONFIG = type(mod._ENV_CONFIG)()

    # -- tables -------------------------------------------------------------------------------
    def table(self, name: str, columns: Mapping[str, str] | None = None, *, key: str | None = None,
              partition_by: Sequence[str] | None = None, legacy_key: Sequence[str] | None = None) -> str:
        """Declare table ``name`` (before its first use), as ``[tables."name"]`` of the config; returns ``name``.

        ``columns`` maps column names to Iceberg types (``"string!"``: required);
        without them the schema is inferred from the first rows. A bad
        declaration raises ``ConfigError`` here, naming the key. A running
        daemon reloads the config (SIGHUP) before this returns.
        """
        validate_identifier(name)
        if (self.spool_root / name).exists():
            raise UsageError(f"spoold_env.table({name!r}): declare a table before its first use "
                             f"(it already has a spool directory, {self.spool_root / name})")
        spec: dict[str, Any] = {}
        if key is not None:
            spec["key"] = key
        if legacy_key is not None:
            spec["legacy_key"] = list(legacy_key)
        if partition_by is not None:
            spec["partition_by"] = list(partition_by)
        if columns is not None:
            spec["columns"] = dict(columns)
        self._write_config({**self._tables, name: spec}, self._flush)
        if self._running is not None and self._running.alive():
            self._running.reload()
        return name

    # -- producing and committing ---------------------------------------------------------------
    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows to ``table``'s spool through the Python producer API (durable on return)."""
        return self._spool_handle().append(table, rows)

    def flush(self, *tables: str) -> dict[str, dict[str, int]]:
        """Rotate and commit now, in this process, like ``spoold flush [TABLE ...]``.

        Returns ``{table: {"committed": n, "deduplicated": n, "quarantined": n}}``
        for the named tables (default: every spooled table); raises the error of
        a table whose flush failed (e.g. a refused schema change).
        """
        from spoold.flush.flush import flush_all

        results, errors = flush_all(self.config(), self._spool_handle(), self._sink_handle(), list(tables) or None)
        if errors:
            first = next(iter(errors.values()))
            raise type(first)("; ".join(f"{t}: {e}" for t, e in errors.items())) from first
        return {t: r.summary() for t, r in results.items()}

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows committed to ``table``, as dicts sorted by the table's key (``[]`` if it does not exist)."""
        spec = self.config().table(table)
        tbl = self._sink_handle().load(spec)
        if tbl is None:
            return []
        return sorted(tbl.scan().to_arrow().to_pylist(), key=lambda r: r.get(spec.key) or "")

    def committed(self, table: str) -> int:
        """How many rows ``table`` holds (its current snapshot's summary: no data file is read)."""
        tbl = self._sink_handle().load(self.config().table(table))
        snap = tbl.current_snapshot() if tbl is not None else None
        total = snap.summary.additional_properties.get("total-records") if snap and snap.summary else None
        return int(total) if total is not None else 0

    # -- the daemon ---------------------------------------------------------------------------
    @contextmanager
    def daemon(self, **flush_settings: Any) -> Iterator[SpooldDaemon]:
        """Run a real ``spoold run`` on this env until the block ends (SIGTERM, then kill).

        ``flush_settings`` are ``[flush]`` keys (``debounce_s`` defaults to
        0.1 s and ``max_delay_s`` to 2 s here). The block starts once the daemon
        has said READY=1 on its notify socket.
        """
        __tracebackhide__ = True
        if self._running is not None and self._running.alive():
            raise UsageError("spoold_env.daemon(): a daemon is already running on this env (one per spool root)")
        settings = {"debounce_s": _DAEMON_DEBOUNCE_S, **flush_settings}
        settings.setdefault("max_delay_s", max(_DAEMON_MAX_DELAY_S, settings["debounce_s"]))
        before = self._flush
        self._write_config(self._tables, settings)
        d = SpooldDaemon(self, len(self._daemons) + 1)
        self._daemons.append(d)
        self._running = d
        failed = True
        try:
            d.start()
            yield d
            failed = False
        finally:
            self._running = None
            try:
                d.stop(check=not failed)
            finally:
                self._write_config(self._tables, before)

    # -- internals ------------------------------------------------------------------------------
    def config(self) -> Config:
        """The env's configuration as spoold loads it."""
        if self._config is None:
            raise SpooldError("spoold_env is closed")
        return self._config

    def _write_config(self, tables: dict[str, dict[str, Any]], flush: dict[str, Any]) -> None:
        text = self._config_text(tables, flush)
        config = parse_config(tomllib.loads(text), path=self.config_path)  # refuse a bad declaration here
        # atomic: a daemon reloading on SIGHUP never reads half a file
        write_atomic(self.config_path, text.encode(), 0o644)
        self._tables, self._flush, self._config = tables, flush, config
        self._drop_handles()  # a new config: no spool or catalog handle built on the old one

    def _config_text(self, tables: dict[str, dict[str, Any]], flush: dict[str, Any]) -> str:
        lines = [
            "# Written by the spoold_env fixture; spoold_env.table() and spoold_env.daemon() rewrite it.",
            "[spool]", f"root = {_toml(str(self.spool_root))}", "",
            "[catalog]", f"name = {_toml(CATALOG_NAME)}", 'type = "sql"', f"uri = {_toml(self.catalog_uri)}",
            f"warehouse = {_toml(self.warehouse)}", "",
        ]
        if flush:
            lines += ["[flush]", *(f"{k} = {_toml(v)}" for k, v in flush.items()), ""]
        for name, spec in tables.items():
            lines.append(f"[tables.{_toml(name)}]")
            lines += [f"{k} = {_toml(v)}" for k, v in spec.items() if k != "columns"]
            if "columns" in spec:
                lines.append(f"[tables.{_toml(name)}.columns]")
                lines += [f"{_toml(c)} = {_toml(t)}" for c, t in spec["columns"].items()]
            lines.append("")
        return "\n".join(lines)

    def _spool_handle(self) -> Spool:
        if self._spool is None:
            self._spool = Spool.from_config(self.config())
        return self._spool

    def _sink_handle(self) -> Any:
        if self._sink is None:
            from spoold.iceberg.sink import Sink

            self._sink = Sink(self.config())
        return self._sink

    def _drop_handles(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def catalog_fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever something commits to this env's catalog: a stat, no catalog read."""
        out: list[Any] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(self.catalog_uri.removeprefix("sqlite:///") + suffix)
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)


def _toml(value: Any) -> str:
    """One TOML value: JSON's string escapes are TOML's, and so are its arrays of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return json.dumps(value)
    raise UsageError(f"spoold_env: cannot write {value!r} into the config (expected a string, number, "
                     f"boolean or list of strings)")

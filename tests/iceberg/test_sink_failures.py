"""The Iceberg seam's failure paths, made to happen on purpose against a real SQLite catalog (issue 15).

- Another writer commits between every one of our attempts: after
  ``COMMIT_ATTEMPTS`` the commit gives up with CommitConflict, the flush keeps
  its files, and nothing is lost or doubled once the contention ends.
- Another process creates the namespace between our check and our insert:
  the table is still created; a namespace that really cannot be created is an error.
"""

from __future__ import annotations

import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from support.cli import write_config
from support.tables import committed_counts

import spoold.iceberg.sink as sink_module
from spoold.config import Config, load_config
from spoold.errors import CatalogError, CommitConflict
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import COMMIT_ATTEMPTS, Sink
from spoold.spool.spool import Spool

EVENTS = """
[tables."app.events"]
[tables."app.events".columns]
part_id = "string!"
n = "long"
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, EVENTS))


def committed(config: Config) -> Counter[str]:
    return committed_counts(config, "app.events")


def test_a_commit_that_conflicts_on_every_attempt_gives_up_and_keeps_its_rows(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.from_config(config)
    spool.append("app.events", [{"part_id": "base", "n": 0}])
    flush_table(config, spool, Sink(config), "app.events")  # the table exists

    # Another host, with its own spool, lands a commit after each of our attempts read the table.
    other_spool = Spool(tmp_path / "other-spool")
    other_sink = Sink(config)
    sink = Sink(config)
    real_committed = sink.committed
    theirs: list[str] = []

    def committed_then_another_writer_lands(spec: Any, tbl: Any) -> Any:
        index = real_committed(spec, tbl)
        key = f"theirs{len(theirs)}"
        theirs.append(key)
        other_spool.append("app.events", [{"part_id": key, "n": 1}])
        assert flush_table(config, other_spool, other_sink, "app.events").committed == 1
        return index

    monkeypatch.setattr(sink, "committed", committed_then_another_writer_lands)
    waits: list[float] = []
    monkeypatch.setattr(sink_module, "time", types.SimpleNamespace(sleep=waits.append))

    spool.append("app.events", [{"part_id": f"mine{i}", "n": i} for i in range(50)])
    with pytest.raises(CommitConflict, match=f"still conflicting after {COMMIT_ATTEMPTS} attempts"):
        flush_table(config, spool, sink, "app.events")
    assert len(theirs) == COMMIT_ATTEMPTS and len(waits) == COMMIT_ATTEMPTS
    assert waits[-1] > waits[0]  # backing off between attempts
    assert len(spool.pending("app.events")) == 1  # the rows stay spooled
    assert committed(config) == Counter(["base", *theirs])

    # The contention ends: the next flush commits every row once.
    result = flush_table(config, spool, Sink(config), "app.events")
    assert (result.committed, result.deduplicated) == (50, 0)
    assert committed(config) == Counter(["base", *theirs, *(f"mine{i}" for i in range(50))])
    assert spool.pending("app.events") == []


def test_a_namespace_created_by_another_process_between_check_and_insert(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink(config)
    catalog = sink.tables.catalog()
    other = Sink(config).tables.catalog()

    def racing_create_namespace(namespace: Any, *args: Any, **kwargs: Any) -> None:
        # The other process's insert lands first; ours then hits the unique key, as in SQL it does.
        other.create_namespace(namespace)
        raise sqlalchemy.exc.IntegrityError("INSERT INTO iceberg_namespace_properties", {}, Exception("UNIQUE"))

    monkeypatch.setattr(catalog, "create_namespace", racing_create_namespace)
    tbl = sink.tables.ensure(config.table("app.events"), {"part_id": "string", "n": "long"})
    assert tbl.name() == ("app", "events")
    assert Sink(config).load(config.table("app.events")) is not None


def test_a_namespace_that_cannot_be_created_is_an_error_not_a_guess(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = Sink(config)
    catalog = sink.tables.catalog()

    def failing_create_namespace(namespace: Any, *args: Any, **kwargs: Any) -> None:
        raise sqlalchemy.exc.OperationalError("INSERT INTO iceberg_namespace_properties", {}, Exception("disk I/O"))

    monkeypatch.setattr(catalog, "create_namespace", failing_create_namespace)
    # the catalog's own error, not a later "no such namespace" from creating the table
    with pytest.raises(CatalogError, match="cannot create app.events: OperationalError.*disk I/O"):
        sink.tables.ensure(config.table("app.events"), {"part_id": "string", "n": "long"})
    assert not catalog.namespace_exists("app")

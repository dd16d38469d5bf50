"""A SQL catalog whose create is not atomic, with another host's late create injected on cue.

``[catalog] py-catalog-impl = "support.latecreate.LateCreateCatalog"`` (with ``tests/`` on
``PYTHONPATH`` for a ``spoold`` subprocess) puts it under spoold. It behaves as a
REST catalog with a check-then-write create does when two hosts create one table
at once (SeaweedFS 4.48, issue 12): a create whose check passed before the
table existed writes *later*, replacing the table under the same name.
``late-create`` says when that late write lands, once per ``late-create-marker``
file (the first process to create the marker injects it):

- ``after-create``: right after this host's create, before its response is
  used (the response then names a table the catalog no longer serves);
- ``after-commit``: right after this host's first commit to the table (the
  commit is then referenced by nothing: the silent loss).

spoold must see it as a catalog whose create is not exclusive: it is not
pyiceberg's own ``SqlCatalog`` class.
"""

from __future__ import annotations

import os
from typing import Any

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import CommitTableResponse, Table


class LateCreateCatalog(SqlCatalog):
    """pyiceberg's SQL catalog plus one late create of the same table by "another host"."""

    def __init__(self, name: str, **properties: str) -> None:
        super().__init__(name, **properties)
        self._when = properties.get("late-create", "")
        self._marker = properties.get("late-create-marker", "")

    def _claim(self, when: str) -> bool:
        """True once (across processes) for the configured moment."""
        if self._when != when or not self._marker:
            return False
        try:
            os.close(os.open(self._marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        return True

    def late_create(self, table: Table) -> None:
        """Another host's create, checked before the table existed, writes now: same name, new table."""
        self.drop_table(table.name())  # the row only: the replaced table's files stay, unreferenced
        super().create_table(table.name(), schema=table.schema(), partition_spec=table.spec(),
                             properties=table.properties)

    def create_table(self, identifier: Any, schema: Any, *args: Any, **kwargs: Any) -> Table:
        created = super().create_table(identifier, schema, *args, **kwargs)
        if self._claim("after-create"):
            self.late_create(created)
        return created  # the response names the table this host created, served or not

    def commit_table(self, table: Table, requirements: Any, updates: Any) -> CommitTableResponse:
        response = super().commit_table(table, requirements, updates)
        if response.metadata.current_snapshot_id is not None and self._claim("after-commit"):
            self.late_create(Table(table.name(), response.metadata, response.metadata_location, table.io, self))
        return response


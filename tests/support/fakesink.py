"""THE fake of the Iceberg seam (spoold.iceberg.sink.TableSink): one class whose methods are fields a test sets.

Each method a test does not set delegates to ``inner`` (a real Sink on a real catalog), or, without one, acts
as an empty catalog that records what was committed. ``fail_at`` makes the n-th call of a method raise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from spoold.config import TableSpec
from spoold.iceberg.sink import CommitOutcome, TableSink
from spoold.keys.batch import Batch
from spoold.keys.index import KeyIndex


class FakeSink:
    """A TableSink for tests: ``FakeSink(Sink(config), commit=fail_at(2, CatalogError("down")))``."""

    def __init__(self, inner: TableSink | None = None, **methods: Callable[..., Any]) -> None:
        unknown = set(methods) - set(_MEMBERS)
        assert not unknown, f"not a TableSink method: {sorted(unknown)}"
        self.inner = inner
        self.methods = methods
        self.committed_keys: list[str] = []  # what reached commit, without an inner sink
        self.calls: dict[str, int] = {}

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.methods:
            return self.methods[name](self, *args, **kwargs)
        if self.inner is not None:
            return getattr(self.inner, name)(*args, **kwargs)
        return getattr(self, f"_empty_{name}")(*args, **kwargs)

    def load(self, spec: TableSpec, *, reuse: bool = False) -> Any:
        return self._call("load", spec, reuse=reuse)

    def verified(self, spec: TableSpec) -> bool:
        return bool(self._call("verified", spec))

    def pin(self, spec: TableSpec, uuid: str) -> None:
        self._call("pin", spec, uuid)

    def index(self, spec: TableSpec) -> KeyIndex:
        return self._call("index", spec)

    def committed(self, spec: TableSpec, table: Any) -> KeyIndex:
        return self._call("committed", spec, table)

    def commit(self, spec: TableSpec, batch: Batch, types: Mapping[str, str],
               props: Mapping[str, str]) -> CommitOutcome:
        return self._call("commit", spec, batch, types, props)

    # -- an empty catalog that records commits ------------------------------------------------------------------
    def _empty_load(self, spec: TableSpec, *, reuse: bool = False) -> None:
        return None

    def _empty_verified(self, spec: TableSpec) -> bool:
        return True

    def _empty_pin(self, spec: TableSpec, uuid: str) -> None:
        pass

    def _empty_index(self, spec: TableSpec) -> KeyIndex:
        return KeyIndex()

    def _empty_committed(self, spec: TableSpec, table: Any) -> KeyIndex:
        return KeyIndex()

    def _empty_commit(self, spec: TableSpec, batch: Batch, types: Mapping[str, str],
                      props: Mapping[str, str]) -> CommitOutcome:
        self.committed_keys.extend(batch.keys)
        return CommitOutcome(len(batch), 0, None)


_MEMBERS = ("load", "verified", "pin", "index", "committed", "commit")


def fail_at(n: int, error: BaseException, member: str = "commit") -> Callable[..., Any]:
    """``member`` raising ``error`` at its n-th call (1-based); the other calls go to the inner sink."""

    def method(fake: FakeSink, *args: Any, **kwargs: Any) -> Any:
        if fake.calls[member] == n:
            raise error
        assert fake.inner is not None, "fail_at needs an inner sink for the calls that do not fail"
        return getattr(fake.inner, member)(*args, **kwargs)

    return method


def raises(error: BaseException) -> Callable[..., Any]:
    """A member that raises ``error`` at every call."""

    def method(fake: FakeSink, *args: Any, **kwargs: Any) -> Any:
        raise error

    return method


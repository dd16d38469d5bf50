"""The ingest group commit on a real spool: a request cancelled while queued costs no one else an answer."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from support.daemonproc import wait_for

from spoold.ingest.commit import GroupCommit
from spoold.spool.spool import Spool


def test_a_request_cancelled_in_the_queue_leaves_the_commit_serving(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    commit = GroupCommit(spool, 1 << 20)
    commit.start()
    try:
        commit.submit("app.events", [b"x\n"]).result(30)  # the table's directory and lock file
        fd = os.open(tmp_path / "spool" / "app.events" / ".lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the commit waits for it, as for a producer mid-append
        try:
            first = commit.submit("app.events", [b"a\n"])
            wait_for(lambda: not commit._queue, "the commit taking the first request (it waits for the lock)")
            queued = commit.submit("app.events", [b"b\n"])
            assert queued.cancel()  # its connection went away at shutdown: asyncio cancels what it awaited
        finally:
            os.close(fd)
        first.result(30)
        commit.submit("app.events", [b"c\n"]).result(30)  # answered: the commit did not die on the cancelled one
        assert (tmp_path / "spool" / "app.events" / "active.jsonl").read_bytes() == b"x\na\nc\n"
    finally:
        commit.stop(5)

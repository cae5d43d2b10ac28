"""Group commit: one fsync round per event-loop turn for every dirty event file of a node.

Theory of operation
-------------------
A persisted :class:`~netmesh.log.file.RedexFile` with ``fsync="batch"`` attached to a
:class:`GroupCommitter` (:meth:`RedexFile.use_group_commit`) writes each batch with one
``write`` and does **not** fdatasync on the event loop: it marks itself dirty here. The
first file marked in a loop turn schedules a round with ``call_soon``, so every append
of that turn, on any channel and from any ring, is covered by the same round. A round
takes, per dirty file, a ``dup`` of its active segment's descriptor and the seq its
writes reached, runs the fdatasyncs on ONE writer thread
(``loop.run_in_executor``), and back on the loop tells each file the seq that is now
durable (:attr:`RedexFile.durable_seq`), which releases whatever waited for it
(producer acknowledgements, a follower's SyncAck: see
``netmesh.replication.executor``). At most one round is in flight; files marked while
it runs go in the next round, started as soon as it completes (so under load a round
covers everything written during the previous fsync: PostgreSQL's and InnoDB's group
commit, Kafka's ``flush`` of a log's accumulated writes).

Heartbeats and sync traffic never wait for the disk: the loop only does ``write``
(page cache) and ``dup``. A dup'd descriptor keeps the segment's file open even if the
loop rolls to a new segment or closes the file meanwhile (the fdatasync then syncs a
file whose data the roll already synced: harmless).

Fail-stop: an fdatasync error fails that file (:class:`~netmesh.errors.StorageFailed`,
never retried: after a failed fsync the page cache may have dropped the dirty pages,
PostgreSQL's "fsyncgate"); its waiters are released and see ``failed``.

Counters: ``rounds`` (thread hops, one per round) and ``fsyncs`` (fdatasync calls).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol


class Syncable(Protocol):
    """What a round needs from a file (a RedexFile)."""

    def _sync_job(self) -> tuple[int, int, int] | None:
        """(dup'd descriptor, seq the writes reached, truncation generation), or None
        when there is nothing to sync (closed, failed, or already durable)."""
        ...

    def _synced(self, target: int, generation: int, error: OSError | None) -> None:
        """A round finished for this file (on the loop)."""
        ...


def _sync_all(fds: list[int], fsync: Callable[[int], None]) -> list[OSError | None]:
    """Writer thread: fdatasync each descriptor (then close it); the error per file."""
    out: list[OSError | None] = []
    for fd in fds:
        try:
            fsync(fd)
            out.append(None)
        except OSError as exc:
            out.append(exc)
        finally:
            os.close(fd)
    return out


class GroupCommitter:
    """The node's group commit (one per event loop; see the module docstring).

    Args:
        fsync: the sync call run on the writer thread (default ``os.fdatasync``; tests
            inject failures or count calls).
    """

    def __init__(self, fsync: Callable[[int], None] = os.fdatasync) -> None:
        self._fsync = fsync
        self._dirty: dict[Syncable, None] = {}  # insertion-ordered set
        self._scheduled = False
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.rounds = 0
        self.fsyncs = 0
        self.errors = 0

    @property
    def busy(self) -> bool:
        """A round is scheduled or in flight."""
        return self._scheduled or self._running

    def mark(self, f: Syncable) -> None:
        """``f`` wrote bytes that are not durable yet (loop thread)."""
        self._dirty[f] = None
        if not self._scheduled and not self._running:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._scheduled = True
            self._loop.call_soon(self._start_round)

    def _start_round(self) -> None:
        self._scheduled = False
        if self._running or not self._dirty:
            return
        files = list(self._dirty)
        self._dirty.clear()
        jobs: list[tuple[Syncable, int, int]] = []
        fds: list[int] = []
        for f in files:
            job = f._sync_job()
            if job is not None:
                fd, target, gen = job
                jobs.append((f, target, gen))
                fds.append(fd)
        if not jobs:
            return
        assert self._loop is not None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netmesh-fsync")
        self._running = True
        self.rounds += 1
        self.fsyncs += len(fds)
        fut = self._loop.run_in_executor(self._pool, _sync_all, fds, self._fsync)
        fut.add_done_callback(lambda done: self._round_done(done, jobs))

    def _round_done(
        self, done: asyncio.Future[list[OSError | None]], jobs: list[tuple[Syncable, int, int]]
    ) -> None:
        self._running = False
        try:
            errors = done.result()
        except BaseException as exc:  # the pool itself failed: every file of the round
            err = exc if isinstance(exc, OSError) else OSError(str(exc))
            errors = [err] * len(jobs)
        for (f, target, gen), error in zip(jobs, errors, strict=True):
            if error is not None:
                self.errors += 1
            f._synced(target, gen, error)
        if self._dirty and not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._start_round)

    def close(self) -> None:
        """Stop the writer thread (after the round in flight, if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

"""Node side of a subscription: a pump from a channel's log into a subscriber's ring.

The subscriber (another process) consumes a shared-memory ring; the node produces into
it. A task on the node's loop reads what the channel's mode promises will stay (quorum:
below the commit index; leader mode and unreplicated channels: everything stored) from
the file, frames it (:mod:`netmesh.cluster.subframes`, one msgpack per batch) and hands
the frame to a writer thread, which blocks on the ring while it is full. So a
subscriber that stops reading only stops its own pump: producers never wait for it,
and the node holds at most one frame for it, whatever the backlog (the rest stays in
the log and is read again when the subscriber catches up; a persisted log is read from
disk). Events retention removed before they were delivered end the subscription with
``LAGGED``; events replication truncated after they were delivered with ``TRUNCATED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from netmesh.cluster import subframes
from netmesh.errors import Closed, RingClosed, RingFull
from netmesh.log.file import RedexFile
from netmesh.ring.shm import ShmRing

log = logging.getLogger(__name__)

FRAME_BYTES = 256 << 10  # payload bytes per frame at most (one frame may hold one larger event)
FRAME_EVENTS = 4096


class SubscriptionPump:
    """Feeds ``ring`` from ``file`` starting at ``from_seq`` (up to ``end_seq`` if given).

    ``commit_of``: the seq below which events may be delivered (quorum: the commit
    index known here), or None to deliver everything stored. ``on_done`` is called on
    the loop when the pump stops for good (subscriber gone, END, LAGGED, node stop).
    """

    def __init__(
        self,
        ring_name: str,
        file: RedexFile,
        from_seq: int,
        end_seq: int | None,
        history: list[list[int]] | None,
        commit_of: Callable[[], int | None],
        on_done: Callable[[SubscriptionPump], None],
    ) -> None:
        self.name = ring_name
        self.file = file
        self.seq = from_seq
        self.end_seq = end_seq
        self.commit_of = commit_of
        self.on_done = on_done
        #: what the subscriber was given: [term, end seq] per run of batches whose last
        #: event was in that term (after a failover it checks this node's history)
        self.history = history or []
        self.ring = ShmRing.attach(ring_name)
        self.delivered_events = 0
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"sub-{ring_name}")

    async def _run(self) -> None:
        f = self.file
        generation = f.truncation_generation
        try:
            agreed = self._agreed()
            if agreed < self.seq:
                # this node's history differs from what the subscriber was given
                # (leader mode after a failover): tell it from where
                await self._send(subframes.control(subframes.TRUNCATED, agreed))
                return
            while not self._stop.is_set():
                low = f.truncated_since(generation)
                generation = f.truncation_generation
                if low is not None and low < self.seq:
                    await self._send(subframes.control(subframes.TRUNCATED, low))
                    return
                if self.seq < f.first_retained_seq:
                    await self._send(subframes.control(subframes.LAGGED, f.first_retained_seq))
                    return
                hi = f.next_seq
                commit = self.commit_of()
                if commit is not None:
                    hi = min(hi, commit)
                if self.end_seq is not None:  # a bounded read: what is held now, no wait
                    if self.seq >= min(hi, self.end_seq):
                        await self._send(subframes.control(subframes.END, self.seq))
                        return
                    hi = min(hi, self.end_seq)
                if self.seq >= hi:
                    if f.closed or f.failed is not None:
                        return
                    await f.wait_changed(0.05)  # appends wake it; commits within 50 ms
                    continue
                payloads, first = f.read_published(self.seq, min(hi, self.seq + FRAME_EVENTS))
                payloads = _cap(payloads)
                last_term = f.term_at(first + len(payloads) - 1) or 0
                await self._send(subframes.events(first, payloads, last_term))
                self.seq = first + len(payloads)
                self.delivered_events += len(payloads)
        except (RingClosed, Closed):
            pass  # the subscriber went away, or the node is stopping
        except Exception:  # never take the node down for one subscriber
            log.exception("subscription %s failed", self.name)
        finally:
            self._finish()

    def _agreed(self) -> int:
        """How far this log provably holds what the subscriber was given: the end of the
        newest run whose last event has the same term here (Raft's log matching: the
        same term at the same seq means the same history up to it)."""
        if not self.history:
            return self.seq
        f = self.file
        for term, end in reversed(self.history):
            if end <= 0 or end - 1 < f.first_retained_seq:  # retention removed it
                return min(end, self.seq) if end > 0 else 0
            if end <= f.next_seq and f.term_at(end - 1) == term:
                return min(end, self.seq)
        return 0

    async def _send(self, frame: bytes) -> None:
        """Put one frame, waiting (off the loop) while the ring is full."""
        try:
            self.ring.put_nowait(frame)
            return
        except RingFull:
            pass
        await asyncio.to_thread(self._put_blocking, frame)

    def _put_blocking(self, frame: bytes) -> None:
        while not self._stop.is_set():
            if self.ring.consumer_closed():
                raise RingClosed(f"subscriber of {self.name} closed its ring")
            try:
                self.ring.put(frame, timeout=0.2)
                return
            except RingFull:
                continue
        raise Closed("subscription stopped")

    def _finish(self) -> None:
        with contextlib.suppress(Exception):
            self.ring.close_producer()
        self.ring.close()
        self.on_done(self)

    def stop(self) -> None:
        """Ask the pump to stop (the node is stopping or the subscriber was released);
        it leaves within about 0.2 s: the writer thread must be out of the ring before
        the ring is unmapped, so the task is never cancelled under it."""
        self._stop.set()

    async def wait_stopped(self, timeout: float = 2.0) -> None:
        """Wait for the pump to leave (after :meth:`stop`)."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)


def _cap(payloads: list[bytes]) -> list[bytes]:
    """The longest prefix within FRAME_BYTES (at least one event)."""
    total = 0
    for i, p in enumerate(payloads):
        total += len(p)
        if total > FRAME_BYTES and i:
            return payloads[:i]
    return payloads

"""Producer: appends to a channel on one node through a shared-memory ring.

``append``/``append_batch`` only copy into the ring (blocking while it is full, which
is the node's backpressure). ``flush()`` waits until the node has handled every event
put so far and returns the seq of the last one: with ``ack="leader"`` once the leader
stored it, with ``ack="quorum"`` once a majority holds it. If the node refused events
since the previous flush (it is not the leader, say), ``flush`` raises NotLeader.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from netmesh.errors import NodeUnresponsive, NotLeader
from netmesh.shm_ring import ShmRing


class Producer:
    """The producer end of a (producer, node) ring; one thread uses it."""

    def __init__(self, ring_name: str, channel: str,
                 on_close: Callable[[Producer], None] | None = None) -> None:
        self.ring = ShmRing.attach(ring_name)
        self.ring_name = ring_name
        self.channel = channel
        self.sent = 0
        self._rejected_seen = 0
        self._on_close = on_close
        self._closed = False

    def append(self, payload: bytes, timeout: float | None = 10.0) -> None:
        """Queue one event (RingFull if the node does not make room within ``timeout``)."""
        self.ring.put(payload, timeout)
        self.sent += 1

    def append_batch(self, payloads: Sequence[bytes], timeout: float | None = 10.0) -> None:
        """Queue events in order, one frame per ring-sized chunk."""
        self.ring.put_batch(payloads, timeout)
        self.sent += len(payloads)

    def acked(self) -> int:
        """Events the node has handled so far (appended or refused)."""
        return self.ring.acked()[0]

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every queued event is handled; return the last event's seq.

        Raises NotLeader if events were refused since the last flush,
        NodeUnresponsive if the node does not catch up within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        pause = 20e-6
        while True:
            count, seq, rejected = self.ring.acked()
            if count >= self.sent:
                break
            if time.monotonic() > deadline:
                raise NodeUnresponsive(
                    f"{self.channel}: {self.sent - count} events not acknowledged in {timeout}s")
            time.sleep(pause)  # backoff poll of the ack word; flush is not a hot path
            pause = min(pause * 2, 1e-3)
        if rejected != self._rejected_seen:
            refused = rejected - self._rejected_seen
            self._rejected_seen = rejected
            err = NotLeader(self.channel)
            err.args = (f"{refused} events refused by the node: {err.args[0]}",)
            raise err
        return seq

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ring.close()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

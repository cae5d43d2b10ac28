"""Producer: appends to a channel on one node through a shared-memory ring.

``append``/``append_batch`` only copy into the ring (blocking while it is full, which
is the node's backpressure). ``flush()`` waits until the node has handled every event
put so far and returns the seq of the last one: with ``ack="leader"`` once the leader
stored it, with ``ack="quorum"`` once a majority holds it.

Refusals: if the node refused events since the previous flush, ``flush`` raises, by
the node's reason code in the ring's ack words: NotLeader (the node does not lead the
channel, or lost leadership before a majority held them: such events may or may not
survive, like a timed-out write in any consensus system), PayloadTooLarge, or
NetmeshError (the node could not store them, e.g. a disk error; see its log). The
node refuses whole drained batches, so a refusal may cover events of several
``append_batch`` calls; ``refused_total`` counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from netmesh.config import DEFAULT_MAX_PAYLOAD
from netmesh.errors import (
    Closed,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
    PayloadTooLarge,
    RingClosed,
    RingFull,
)
from netmesh.ring.layout import W_CONSUMER_CLOSED
from netmesh.ring.shm import ShmRing

# refusal reason codes in the ring's ACK_REASON word (node -> producer)
REFUSED_NONE, REFUSED_NOT_LEADER, REFUSED_TOO_LARGE, REFUSED_STORE_FAILED = 0, 1, 2, 3


class Producer:
    """The producer end of a (producer, node) ring; one thread uses it."""

    def __init__(
        self,
        ring_name: str,
        channel: str,
        on_close: Callable[[Producer], None] | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.ring = ShmRing.attach(ring_name)
        self.ring_name = ring_name
        self.channel = channel
        self.max_payload = max_payload
        self.sent = 0
        self.refused_total = 0
        self._on_close = on_close
        self._closed = False
        self._words = self.ring.header_words()  # the hot path reads CONSUMER_CLOSED itself
        self._put = self.ring.put

    def append(self, payload: bytes, timeout: float | None = 10.0) -> None:
        """Queue one event. Raises PayloadTooLarge, Closed, RingFull (no room within
        ``timeout`` s), RingClosed (the node went away)."""
        if self._closed or len(payload) > self.max_payload or self._words[W_CONSUMER_CLOSED]:
            self._check(payload)  # raises the error that applies
        self._put(payload, timeout)
        self.sent += 1

    def append_batch(self, payloads: Sequence[bytes], timeout: float | None = 10.0) -> None:
        """Queue events in order, one ring frame per chunk of at most ``ring.max_frame``
        bytes; ``timeout`` s (None: forever) bounds the wait for room of the whole call.

        A batch that fits one frame is queued all or nothing. A larger one is queued
        frame by frame: if the ring stays full (RingFull) or the node goes away
        (RingClosed) part-way, the error's ``queued`` attribute (and its message) says
        how many of the first events were queued, ``sent`` counts them, and ``flush``
        waits for them; the rest were not queued. Nothing is queued if one event is
        too large (PayloadTooLarge). Raises Closed once closed.
        """
        if self._closed:
            raise Closed(f"producer for {self.channel!r} is closed")
        if self._words[W_CONSUMER_CLOSED]:
            raise RingClosed(f"producer for {self.channel!r}: the node went away")
        if self.ring.try_put_batch(payloads, timeout, self.max_payload):  # one known frame
            self.sent += len(payloads)
            return
        if not payloads:
            return
        biggest = max(map(len, payloads))
        if biggest > self.max_payload:
            raise PayloadTooLarge(biggest, self.max_payload)
        chunks = _chunks(payloads, self.ring.max_frame)
        if len(chunks) == 1:  # one frame: the ring writes it whole or not at all
            self.ring.put_batch(payloads, timeout)
            self.sent += len(payloads)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        queued = 0
        try:
            for lo, hi in chunks:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self.ring.put_batch(payloads[lo:hi], left)
                queued = hi
                self.sent += hi - lo
        except (RingFull, RingClosed) as exc:
            setattr(exc, "queued", queued)  # noqa: B010 (the errors carry no such field)
            exc.args = (f"{queued} of {len(payloads)} events queued (sent={self.sent}): {exc}",)
            raise

    def _check(self, payload: bytes) -> None:
        if self._closed:
            raise Closed(f"producer for {self.channel!r} is closed")
        if self.ring.consumer_closed():
            raise RingClosed(f"producer for {self.channel!r}: the node went away")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(len(payload), self.max_payload)

    def acked(self) -> int:
        """Events the node has handled so far (stored or refused)."""
        return self.ring.acked()[0]

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every queued event is handled; return the last stored event's seq,
        or -1 when this producer has had no event acknowledged yet (seq 0 is a real
        event).

        Raises NotLeader / PayloadTooLarge / NetmeshError for refusals since the last
        flush (see the module doc), NodeUnresponsive if the node does not catch up
        within ``timeout``, Closed.
        """
        if self._closed:
            raise Closed(f"producer for {self.channel!r} is closed")
        deadline = time.monotonic() + timeout
        while True:
            count, seq, rejected, reason = self.ring.acked()
            if count >= self.sent:
                break
            if self.ring.consumer_closed():
                raise RingClosed(
                    f"{self.channel}: the node went away with "
                    f"{self.sent - count} events unacknowledged"
                )
            if time.monotonic() > deadline:
                raise NodeUnresponsive(
                    f"{self.channel}: {self.sent - count} events not acknowledged in {timeout}s"
                )
            self.ring.wait_acked(self.sent, deadline - time.monotonic())
        if rejected != self.refused_total:
            refused = rejected - self.refused_total
            self.refused_total = rejected
            raise _refusal(self.channel, refused, reason)
        return seq if count > 0 else -1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._words.release()
        self.ring.close()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(payloads: Sequence[bytes], max_frame: int) -> list[tuple[int, int]]:
    """``[(lo, hi)]`` index ranges of ``payloads``, each fitting one ring frame of at most
    ``max_frame`` bytes (8 bytes of frame head, 4 of length per record; the framing of
    :mod:`netmesh.ring.layout`, as ``ShmRing.put_batch`` splits)."""
    out: list[tuple[int, int]] = []
    lo, size = 0, 8
    for i, p in enumerate(payloads):
        n = len(p) + 4
        if size + n > max_frame and i > lo:
            out.append((lo, i))
            lo, size = i, 8
        size += n
    out.append((lo, len(payloads)))
    return out


def _refusal(channel: str, refused: int, reason: int) -> NetmeshError:
    what = f"{refused} events refused by the node"
    err: NetmeshError
    if reason == REFUSED_NOT_LEADER:
        err = NotLeader(channel)
    elif reason == REFUSED_TOO_LARGE:
        err = PayloadTooLarge(0, 0)
        err.args = (f"{what}: a payload exceeds the channel's max_payload",)
        return err
    else:
        return NetmeshError(f"{what}: the node could not store them (see its log)")
    err.args = (f"{what}: {err.args[0]}",)
    return err

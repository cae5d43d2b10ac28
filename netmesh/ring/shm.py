"""ShmRing: a single-producer single-consumer ring over POSIX shared memory.

Layout and framing live in :mod:`netmesh.ring.layout`; this module maps the block
(posix_ipc.SharedMemory + mmap) and adds blocking with two POSIX semaphores:

* ``data``: the consumer sleeps on it only when the ring is empty; the producer posts
  it after publishing a frame only if the consumer said it is waiting;
* ``space``: the producer sleeps on it only when the ring is full; the consumer posts
  it after freeing space only if the producer said it is waiting.

"Said it is waiting" is a flag word in the header. The waiter stores its flag and then
re-reads the index; the other side stores the index and then reads the flag. On x86
a store may pass a later load, so each side puts a full fence between its store and its
load (an uncontended lock round trip, a locked instruction). A wake-up can therefore
not be lost; waits still carry a timeout as a last resort.

The producer's calls have ``_nowait`` twins that raise RingFull instead of waiting
(the consumer's ``get_batch(timeout=0)`` never waits); batch calls move many records per frame, one
memcpy and at most one semaphore post per batch. The creator owns the names and must
``unlink()`` them; both sides ``close()`` their mapping.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
from collections.abc import Sequence

import posix_ipc

from netmesh.errors import PayloadTooLarge, RingClosed, RingFull
from netmesh.ring import layout as L

_fence_lock = threading.Lock()
_SAFETY_WAIT = 0.05  # a lost wake-up (should be impossible) costs at most this


def fence() -> None:
    """A full memory barrier: the lock's atomic compare-and-swap is a locked instruction."""
    _fence_lock.acquire()
    _fence_lock.release()


class ShmRing:
    """One end (producer or consumer) of a shared-memory ring named ``name``."""

    def __init__(self, name: str, capacity: int, create: bool) -> None:
        if not name.startswith("/"):
            name = "/" + name
        self.name = name
        flags = posix_ipc.O_CREX if create else 0
        size = L.HEADER_BYTES + capacity if create else 0
        self._shm = posix_ipc.SharedMemory(name, flags, size=size)
        try:
            self._sem_data = posix_ipc.Semaphore(name + "-d", flags, initial_value=0)
            self._sem_space = posix_ipc.Semaphore(name + "-s", flags, initial_value=0)
            self._mm = mmap.mmap(self._shm.fd, self._shm.size)
        except BaseException:
            if create:
                self._unlink_names()
            raise
        finally:
            self._shm.close_fd()
        self._words = memoryview(self._mm)[: L.HEADER_BYTES].cast("Q")
        if create:
            self._words[L.W_CAPACITY] = capacity
            self._words[L.W_MAGIC] = L.MAGIC
        elif self._words[L.W_MAGIC] != L.MAGIC:
            self.close()
            raise ValueError(f"{name} is not a netmesh ring (bad magic)")
        self.capacity = int(self._words[L.W_CAPACITY])
        self._data = memoryview(self._mm)[L.HEADER_BYTES : L.HEADER_BYTES + self.capacity]
        self.max_frame = L.max_frame(self.capacity)
        self._tail_seen = self._words[L.W_TAIL]  # producer's cached copy of TAIL
        self._pending: list[bytes] = []  # consumer: records decoded but not yet returned
        self._closed = False
        self._interrupted = False

    @classmethod
    def create(cls, name: str, capacity: int = 1 << 22) -> ShmRing:
        """Create the named ring (fails if it exists). Capacity: multiple of 8, >= 4096."""
        if capacity < L.MIN_CAPACITY or capacity % L.ALIGN:
            raise ValueError(f"capacity must be a multiple of 8 and >= {L.MIN_CAPACITY}")
        return cls(name, capacity, create=True)

    @classmethod
    def attach(cls, name: str) -> ShmRing:
        """Map an existing ring (raises posix_ipc.ExistentialError if absent)."""
        return cls(name, 0, create=False)

    # -- producer --------------------------------------------------------------------
    def put(self, payload: bytes, timeout: float | None = None) -> None:
        """Put one record, waiting up to ``timeout`` s for space (None: forever)."""
        if len(payload) + 16 > self.max_frame:
            raise PayloadTooLarge(len(payload), self.max_frame - 16)
        self._put_frames([L.encode_single(payload)], timeout)

    def put_nowait(self, payload: bytes) -> None:
        """Put one record or raise RingFull (nothing written)."""
        if len(payload) + 16 > self.max_frame:
            raise PayloadTooLarge(len(payload), self.max_frame - 16)
        self._put_frames([L.encode_single(payload)], 0.0)

    def put_batch(self, payloads: Sequence[bytes], timeout: float | None = None) -> None:
        """Put all records in order, waiting for space as needed; RingFull on timeout.

        A batch larger than the ring is written in several frames as the consumer
        frees space; on RingFull the frames already written stay written (a prefix).
        """
        self._put_frames(self._frames(payloads), timeout)

    def put_batch_nowait(self, payloads: Sequence[bytes]) -> None:
        """Put all records now or raise RingFull; all or nothing."""
        frames = self._frames(payloads)
        need = sum(len(f) for f in frames)
        if need > self._free():
            self._tail_seen = self._words[L.W_TAIL]
        if need > self._free():
            raise RingFull(f"{self.name}: {need} bytes needed, {self._free()} free")
        self._put_frames(frames, 0.0)

    def _frames(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Split a batch into frames of at most ``max_frame`` bytes."""
        frames: list[bytes] = []
        chunk: list[bytes] = []
        size = 8
        for p in payloads:
            n = len(p) + 4
            if n + 8 > self.max_frame:
                raise PayloadTooLarge(len(p), self.max_frame - 16)
            if size + n > self.max_frame:
                frames.append(L.encode_frame(chunk))
                chunk, size = [], 8
            chunk.append(p)
            size += n
        if chunk:
            frames.append(L.encode_frame(chunk))
        return frames

    def _free(self) -> int:
        """Free bytes by the producer's cached TAIL (checked: ValueError if the shared
        indices are inconsistent, i.e. the header was scribbled on)."""
        return L.free_bytes(self._words[L.W_HEAD], self._tail_seen, self.capacity)

    def _put_frames(self, frames: list[bytes], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for frame in frames:
            n = len(frame)
            while self._free() < n:
                self._tail_seen = self._words[L.W_TAIL]
                if self._free() >= n:
                    break
                self._wait_space(n, deadline)
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        words = self._words
        head = words[L.W_HEAD]
        off, first, second = L.split(head, len(frame), self.capacity)
        if second:
            self._data[off : off + first] = frame[:first]
            self._data[:second] = frame[first:]
        else:
            self._data[off : off + first] = frame
        words[L.W_HEAD] = head + len(frame)  # publish: one aligned 8-byte store
        fence()
        if words[L.W_CONSUMER_WAITING]:
            words[L.W_CONSUMER_WAITING] = 0
            self._sem_data.release()

    def _wait_space(self, need: int, deadline: float | None) -> None:
        words = self._words
        if words[L.W_CONSUMER_CLOSED]:
            raise RingClosed(f"{self.name}: consumer closed the ring")
        remaining = _SAFETY_WAIT if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            raise RingFull(f"{self.name}: {need} bytes needed, {self._free()} free")
        words[L.W_PRODUCER_WAITING] = 1
        fence()
        self._tail_seen = words[L.W_TAIL]
        if self._free() >= need:
            words[L.W_PRODUCER_WAITING] = 0
            return
        with contextlib.suppress(posix_ipc.BusyError):
            self._sem_space.acquire(min(remaining, _SAFETY_WAIT))
        self._tail_seen = words[L.W_TAIL]

    def close_producer(self) -> None:
        """Tell the consumer no more records will come (it drains, then gets RingClosed)."""
        self._words[L.W_PRODUCER_CLOSED] = 1
        self._sem_data.release()

    # -- consumer --------------------------------------------------------------------
    def get_batch(self, max_n: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Up to ``max_n`` records in order; waits up to ``timeout`` s for the first.

        Returns [] on timeout (timeout=0: never waits). Raises RingClosed once the
        producer closed the ring and every record was returned.
        """
        if not self._pending and not self._drain() and not self._wait_data(timeout):
            return []
        pending = self._pending
        if len(pending) <= max_n:
            self._pending = []
            return pending
        out = pending[:max_n]
        del pending[:max_n]
        return out

    def _drain(self) -> bool:
        """Move every published frame into ``_pending``; True if anything came."""
        words = self._words
        tail = words[L.W_TAIL]
        head = words[L.W_HEAD]
        if head == tail:
            return False
        data, cap = self._data, self.capacity
        out = self._pending
        append = out.append
        unpack_single = L.SINGLE_HEAD.unpack_from
        unpack_head = L.FRAME_HEAD.unpack_from
        pos = tail
        while pos < head:
            off = pos % cap
            if off + 12 <= cap:  # frame head and first length word in one unpack
                total, count, n = unpack_single(data, off)
            else:
                total, count = unpack_head(data, off)
            if total < 8 or total > head - pos:
                raise ValueError(f"{self.name}: corrupt frame head at {pos}")
            end = off + total
            if count == 1 and end <= cap:
                # the common single-record frame: one copy straight out of the ring
                if 12 + n > total:
                    raise ValueError(f"{self.name}: corrupt frame at {pos}")
                append(bytes(data[off + 12 : off + 12 + n]))
            elif end <= cap:
                out.extend(L.decode_frame(bytes(data[off:end])))
            else:
                out.extend(L.decode_frame(bytes(data[off:cap]) + bytes(data[: end - cap])))
            pos += total
        words[L.W_TAIL] = pos
        fence()
        if words[L.W_PRODUCER_WAITING]:
            words[L.W_PRODUCER_WAITING] = 0
            self._sem_space.release()
        return True

    def _wait_data(self, timeout: float | None) -> bool:
        words = self._words
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            words[L.W_CONSUMER_WAITING] = 1
            fence()
            if self._drain():
                words[L.W_CONSUMER_WAITING] = 0
                return True
            if words[L.W_PRODUCER_CLOSED]:
                words[L.W_CONSUMER_WAITING] = 0
                raise RingClosed(f"{self.name}: producer closed the ring")
            wait = _SAFETY_WAIT if deadline is None else deadline - time.monotonic()
            if wait <= 0 or timeout == 0 or self._interrupted:
                words[L.W_CONSUMER_WAITING] = 0
                return False
            with contextlib.suppress(posix_ipc.BusyError):
                self._sem_data.acquire(min(wait, _SAFETY_WAIT))

    def interrupt(self) -> None:
        """Consumer side, from another thread of this process: make a blocked (and
        every later) ``get_batch`` return at once; used to stop a draining thread."""
        self._interrupted = True
        self._sem_data.release()

    def consumer_closed(self) -> bool:
        """Producer: whether the consumer side said it will read no more."""
        return bool(self._words[L.W_CONSUMER_CLOSED])

    def close_consumer(self) -> None:
        """Tell a blocked producer nobody will read any more."""
        self._words[L.W_CONSUMER_CLOSED] = 1
        self._sem_space.release()

    # -- acknowledgements (consumer -> producer) --------------------------------------
    def ack(self, count: int, last_seq: int, rejected: int = 0, reason: int = 0) -> None:
        """Consumer: ``count`` records were handled in all, ``rejected`` of them refused
        (the latest refusal for ``reason``, a code the two sides agree on); the last
        record stored got ``last_seq``.

        The other words are stored first, then count: a producer that sees the count
        sees those values (or later ones).
        """
        words = self._words
        words[L.W_ACK_SEQ] = last_seq
        words[L.W_ACK_REJECTED] = rejected
        words[L.W_ACK_REASON] = reason
        words[L.W_ACK_COUNT] = count

    def acked(self) -> tuple[int, int, int, int]:
        """Producer: (records handled, seq of the last stored, records refused, reason)."""
        words = self._words
        count = words[L.W_ACK_COUNT]
        return (
            int(count),
            int(words[L.W_ACK_SEQ]),
            int(words[L.W_ACK_REJECTED]),
            int(words[L.W_ACK_REASON]),
        )

    # -- lifetime --------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes written and not yet consumed (0 once this end is closed)."""
        if self._closed:
            return 0
        return int(self._words[L.W_HEAD] - self._words[L.W_TAIL])

    def close(self) -> None:
        """Unmap this end and close its semaphores; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._words.release()
        self._data.release()
        self._mm.close()
        self._sem_data.close()
        self._sem_space.close()

    def unlink(self) -> None:
        """Remove the names (creator's duty); mappings stay valid until closed."""
        self._unlink_names()

    def _unlink_names(self) -> None:
        unlink_ring(self.name)

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unlink_ring(name: str) -> None:
    """Remove a ring's names without mapping it (cleanup of a dead run)."""
    if not name.startswith("/"):
        name = "/" + name
    for unlink, n in (
        (posix_ipc.unlink_shared_memory, name),
        (posix_ipc.unlink_semaphore, name + "-d"),
        (posix_ipc.unlink_semaphore, name + "-s"),
    ):
        with contextlib.suppress(posix_ipc.ExistentialError):
            unlink(n)

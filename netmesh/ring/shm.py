"""ShmRing: a single-producer single-consumer ring over POSIX shared memory.

Layout and framing live in :mod:`netmesh.ring.layout`; this module maps the block
(posix_ipc.SharedMemory + mmap) and adds blocking with two POSIX semaphores:

* ``data``: the consumer sleeps on it only when the ring is empty; the producer posts
  it after publishing a frame only if the consumer said it is waiting;
* ``space``: the producer sleeps on it only when the ring is full; the consumer posts
  it after freeing space only if the producer said it is waiting.

A consumer driven by an event loop instead registers a **wake socket**
(:meth:`ShmRing.wake_socket`: a datagram socket with an autobound Linux abstract
address, published in the header's WAKE_ADDR word): producers then wake it with one
datagram instead of the semaphore, and the loop sleeps in ``epoll`` on it, with no
thread in between (issue 17 §3: one wake-up per hop, not two).

"Said it is waiting" is a flag word in the header. The waiter stores its flag and then
re-reads the index; the other side stores the index and then reads the flag. On x86
a store may pass a later load, so each side puts a full fence between its store and its
load (an uncontended lock round trip, a locked instruction). A wake-up can therefore
not be lost; waits still carry a timeout as a last resort.

The producer's calls have ``_nowait`` twins that raise RingFull instead of waiting
(the consumer's ``get_batch(timeout=0)`` never waits); batch calls move many records per frame, one
memcpy and at most one semaphore post per batch. The creator owns the names and must
``unlink()`` them; both sides ``close()`` their mapping.

Hot paths (issue 17 §3: per batch, not per event). ``put`` of a record that fits
without wrapping is one Python frame: a header ``pack_into`` and one slice copy
straight into shared memory. ``put_batch`` packs a whole frame with one compiled
``struct`` per length signature (:class:`~netmesh.ring.layout.StructCache`) straight
into the ring, and ``get_batch`` unpacks a frame's records with one C call, each
record a ``bytes`` copied once out of shared memory; ``take_frames`` (a node's drain)
makes no object per record at all: every frame it takes is copied out in one piece
(:class:`Frames`), and the node's log keeps that copy. Frames that wrap around the end
of the data area, and length signatures seen for the first time, take the general
path (a frame built in memory, copied in up to two pieces).
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import struct
import threading
import time
from array import array
from collections.abc import Sequence
from itertools import accumulate, pairwise

import posix_ipc

from netmesh.errors import PayloadTooLarge, RingClosed, RingFull
from netmesh.ring import layout as L

_fence_lock = threading.Lock()
if (L.W_HEAD, L.W_CONSUMER_WAITING) != (8, 24):  # ShmRing.put spells them as literals
    raise ImportError("netmesh.ring.layout header words moved; update ShmRing.put")
_SAFETY_WAIT = 0.05  # a lost wake-up (should be impossible) costs at most this


_wake_out: list[socket.socket] = []  # the process's one wake sender (see _wake_sender)
_wake_lock = threading.Lock()


def _wake_sender() -> socket.socket:
    """The unbound, non-blocking datagram socket this process sends every ring's wake
    datagrams from (made on first use, open for the process's life: datagram sends
    from several threads are atomic, and a socket per ring would outlive producers
    that are never closed)."""
    if not _wake_out:
        with _wake_lock:
            if not _wake_out:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                _wake_out.append(sock)
    return _wake_out[0]


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
        self._pack_single = L.SINGLE_HEAD.pack_into
        self._single_structs: dict[int, struct.Struct] = {}
        self._fence_acquire = _fence_lock.acquire
        self._fence_release = _fence_lock.release
        # producer: frame head + payload struct per length signature; consumer: structs
        self._write_structs = L.StructCache()
        self._frame_writers: dict[bytes, tuple[bytes, struct.Struct, int, int]] = {}
        self._read_structs = L.StructCache()
        self._closed = False
        self._interrupted = False
        self._wake_to: tuple[int, bytes] = (0, b"")  # (WAKE_ADDR word, its address)
        self._wake_in: socket.socket | None = None  # consumer: its wake socket

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
        """Put one record, waiting up to ``timeout`` s for space (None: forever).

        Raises PayloadTooLarge (record + 16 bytes of framing over ``max_frame``),
        RingFull (no space within ``timeout``), RingClosed (the consumer closed the
        ring while this waited for space).
        """
        n = len(payload)
        total = (n + 19) & ~7  # align(12 + n): frame head, one length, the payload
        words = self._words
        head = words[8]  # W_HEAD (literal indices: this is the per-event hot path)
        cap = self.capacity
        off = head % cap
        if (
            total <= cap - head + self._tail_seen <= cap
            and off + total <= cap
            and n + 16 <= self.max_frame
        ):
            st = self._single_structs.get(n)
            if st is None:
                st = self._single_struct(n)
            try:  # frame head, length and payload in one C call
                st.pack_into(self._data, off, total, 1, n, payload)
            except struct.error:  # not bytes/bytearray: copy it in through a view
                self._pack_single(self._data, off, total, 1, n)
                self._data[off + 12 : off + 12 + n] = payload
            words[8] = head + total  # publish: one aligned 8-byte store
            self._fence_acquire()  # full fence (see fence())
            self._fence_release()
            if words[24]:  # W_CONSUMER_WAITING
                self._wake()
            return
        if n + 16 > self.max_frame:
            raise PayloadTooLarge(n, self.max_frame - 16)
        self._put_frames([L.encode_single(payload)], timeout)

    def _single_struct(self, n: int) -> struct.Struct:
        """The struct of a one-record frame's head and payload of ``n`` bytes (cached,
        at most 256 lengths)."""
        if len(self._single_structs) >= 256:
            self._single_structs.clear()
        st = self._single_structs[n] = struct.Struct(f"<III{n}s")
        return st

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
        if not self.try_put_batch(payloads, timeout):
            self._put_frames(self._frames(payloads), timeout)

    def try_put_batch(
        self, payloads: Sequence[bytes], timeout: float | None = None, limit: int | None = None
    ) -> bool:
        """Put ``payloads`` as one frame packed by a compiled struct, if that applies.

        Applies when their length signature was seen before (see
        :class:`~netmesh.ring.layout.StructCache`), the frame fits ``max_frame``, every
        payload is ``bytes``/``bytearray`` and none is longer than ``limit`` (None: no
        limit); otherwise returns False having written nothing, and the caller takes
        the general path (``put_batch``), which also raises the errors that apply.
        When it applies it waits up to ``timeout`` s (None: forever) for room like
        ``put`` (RingFull, RingClosed) and returns True once the frame is published.
        Cost: one ``len`` pass, one dict look-up, two copies into the ring.
        """
        try:
            lens = array("I", map(len, payloads))
        except OverflowError:  # a payload of 4 GiB or more: the general path refuses it
            return False
        key = lens.tobytes()
        entry = self._frame_writers.get(key)
        if entry is None:
            entry = self._frame_writer(key, lens)
            if entry is None:
                return False
        head_bytes, st, total, biggest = entry
        if limit is not None and biggest > limit:
            return False
        words = self._words
        head = words[L.W_HEAD]
        cap = self.capacity
        off = head % cap
        if not total <= cap - head + self._tail_seen <= cap:
            self._reserve(total, timeout)
        data = self._data
        if off + total > cap:  # the frame wraps: build it, then copy it in two pieces
            try:
                body = st.pack(*payloads)
            except struct.error:
                return False
            pad = total - len(head_bytes) - len(body)
            self._write(b"".join((head_bytes, body, bytes(pad))))
            return True
        start = off + len(head_bytes)
        data[off:start] = head_bytes
        try:
            st.pack_into(data, start, *payloads)
        except struct.error:  # not bytes/bytearray: the general path copies them
            return False
        words[L.W_HEAD] = head + total
        self._fence_acquire()
        self._fence_release()
        if words[L.W_CONSUMER_WAITING]:
            self._wake()
        return True

    def _reserve(self, n: int, timeout: float | None) -> None:
        """Wait up to ``timeout`` s (None: forever) until ``n`` bytes are free; raises
        RingFull on timeout, RingClosed if the consumer closed the ring."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._free() < n:
            self._tail_seen = self._words[L.W_TAIL]
            if self._free() >= n:
                break
            self._wait_space(n, deadline)

    def _frame_writer(
        self, key: bytes, lens: array[int]
    ) -> tuple[bytes, struct.Struct, int, int] | None:
        """(frame head + lengths, payload struct, frame size, longest payload) for a
        length signature seen before that fits one frame; None otherwise."""
        count = len(lens)
        if not count:
            return None
        total = L.frame_size(count, sum(lens))
        if total > self.max_frame:
            return None
        st = self._write_structs.get(key)
        if st is None:
            return None
        if len(self._frame_writers) >= self._write_structs.max_entries:
            self._frame_writers.clear()
        entry = (L.FRAME_HEAD.pack(total, count) + key, st, total, max(lens))
        self._frame_writers[key] = entry
        return entry

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
            self._wake()

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
        fence()
        self._wake()

    def _wake(self) -> None:
        """Producer: the consumer said it waits; wake it: one datagram to its wake
        socket if it registered one (the semaphore as well if that fails: the consumer
        is gone, or its socket's queue is full, so it is awake anyway), else the data
        semaphore."""
        words = self._words
        words[L.W_CONSUMER_WAITING] = 0
        word = words[L.W_WAKE_ADDR]
        if word:
            if word != self._wake_to[0]:
                self._wake_to = (word, L.decode_wake_addr(word))
            try:
                _wake_sender().sendto(b"\x01", self._wake_to[1])
                return
            except (OSError, ValueError):
                pass
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
        """Move every published frame into ``_pending``; True if anything came.

        Raises ValueError for a frame whose own counts do not add up (shared memory
        was scribbled on); the frames before it are kept.
        """
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
        structs = self._read_structs
        mm, base = self._mm, L.HEADER_BYTES + 12  # a single record's payload: mm[base + off:]
        pos = tail
        try:
            while pos < head:
                off = pos % cap
                if off + 12 <= cap:  # frame head and first length word in one unpack
                    total, count, n = unpack_single(data, off)
                else:
                    total, count = unpack_head(data, off)
                if total < 8 or total > head - pos:
                    raise ValueError(f"{self.name}: corrupt frame head at {pos}")
                end = off + total
                if end > cap:  # the frame wraps: join its two pieces first
                    out.extend(L.decode_frame(bytes(data[off:cap]) + bytes(data[: end - cap])))
                elif count == 1:  # the common single-record frame: one copy out of the ring
                    if 12 + n > total:
                        raise ValueError(f"{self.name}: corrupt frame at {pos}")
                    at = base + off
                    append(mm[at : at + n])  # mmap slices are bytes: no view in between
                else:
                    start = off + 8 + 4 * count
                    st = structs.get(bytes(data[off + 8 : start])) if start <= end else None
                    if st is None:
                        out.extend(L.decode_frame(bytes(data[off:end])))
                    elif start + st.size > end:
                        raise ValueError(f"{self.name}: corrupt frame at {pos}")
                    else:  # every record of the frame in one C call
                        out += st.unpack_from(data, start)
                pos += total
        finally:
            if pos != tail:
                self._release(pos)
        return True

    def take_frames(self, max_n: int = 1 << 14) -> Frames | None:
        """Consumer: whole published frames, at least one and about ``max_n`` records
        (whole frames: the frame that reaches ``max_n`` is the last one), copied out of
        shared memory **in one piece** (:class:`Frames`: one ``bytes`` for the region,
        the lengths of every record, where each frame's payloads start); the space is
        released before this returns. None when the ring is empty (never waits; use
        :meth:`wait_readable`). No object per record is made: the caller keeps the
        frames as they are (a log stores the region) or unpacks them
        (:meth:`Frames.payloads`).

        Raises ValueError for a frame whose own counts do not add up (shared memory
        was scribbled on); the frames before it are returned first. Do not mix with
        :meth:`get_batch` on one ring (records it decoded are not seen here)."""
        words = self._words
        tail = words[L.W_TAIL]
        head = words[L.W_HEAD]
        if head == tail:
            return None
        data, cap = self._data, self.capacity
        firsts = array("I")
        offs = array("Q")
        lens = array("I")
        add_first, add_off = firsts.append, offs.append
        add_len, add_lens = lens.append, lens.frombytes
        unpack_single = L.SINGLE_HEAD.unpack_from
        unpack_head = L.FRAME_HEAD.unpack_from
        pos, got, room, frames = tail, 0, 0, 0
        while pos < head and got < max_n:
            off = pos % cap
            if off + 12 <= cap:  # frame head and first length word in one unpack
                total, count, n = unpack_single(data, off)
            else:
                (total, count), n = unpack_head(data, off), -1
            start = 8 + 4 * count  # payloads, from the frame's start
            if total < 8 or total > head - pos or start > total or (count == 0) != (total == 8):
                if frames:
                    break  # return what came before it; the next call raises
                raise ValueError(f"{self.name}: corrupt frame head at {pos}")
            if count == 1 and n >= 0:
                add_len(n)
            elif off + start <= cap:
                add_lens(data[off + 8 : off + start])
            else:  # the lengths wrap around the end of the data area
                add_lens(bytes(data[off + 8 : cap]) + bytes(data[: off + start - cap]))
            add_first(got)
            add_off(pos - tail + start)
            got += count
            room += total - start
            frames += 1
            pos += total
        size = sum(lens)
        if not room - (L.ALIGN - 1) * frames <= size <= room:  # lengths vs frame sizes
            raise ValueError(f"{self.name}: corrupt frame lengths between {tail} and {pos}")
        off, n = tail % cap, pos - tail
        base = L.HEADER_BYTES
        if off + n <= cap:
            blob = self._mm[base + off : base + off + n]  # one copy out of shared memory
        else:
            blob = b"".join((data[off:cap], data[: off + n - cap]))
        self._release(pos)
        return Frames(blob, firsts, offs, lens, size)

    def _release(self, pos: int) -> None:
        """Consumer: frames up to stream position ``pos`` are consumed; wake a producer
        that waits for space."""
        words = self._words
        words[L.W_TAIL] = pos
        fence()
        if words[L.W_PRODUCER_WAITING]:
            words[L.W_PRODUCER_WAITING] = 0
            self._sem_space.release()

    def _wait_data(self, timeout: float | None) -> bool:
        return self.wait_readable(timeout) and self._drain()

    def wait_readable(self, timeout: float | None = None) -> bool:
        """Consumer: wait up to ``timeout`` s (None: forever) until there is something
        to take, without taking it; True if there is. Sleeps on the data semaphore
        (no spinning); ``interrupt()`` makes it return False at once. Raises
        RingClosed once the producer closed the ring and every record was taken.

        One thread may wait here while another takes records with
        ``get_batch(timeout=0)``, as long as they never take records at the same time.
        """
        words = self._words
        if self._pending or words[L.W_HEAD] != words[L.W_TAIL]:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            words[L.W_CONSUMER_WAITING] = 1
            fence()
            if words[L.W_HEAD] != words[L.W_TAIL]:
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

    def wake_socket(self) -> socket.socket:
        """Consumer: a non-blocking datagram socket producers wake this end through
        from now on, instead of the data semaphore (for an event loop: watch it, read
        what arrives, then :meth:`take_frames`; after taking nothing, :meth:`arm`).
        Created once; closed by :meth:`close`. A wake that cannot be sent falls back
        to the semaphore, so :meth:`wait_readable` keeps working, late by at most its
        50 ms safety wait."""
        if self._wake_in is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind("")  # Linux autobind: a unique abstract address
                self._words[L.W_WAKE_ADDR] = L.encode_wake_addr(sock.getsockname())
            except BaseException:
                sock.close()
                raise
            self._wake_in = sock
        return self._wake_in

    def arm(self) -> bool:
        """Consumer with a wake socket, after taking nothing: say it waits, then look
        again. True if there is something to take after all (it does not wait then);
        False: the next frame sends a wake datagram. Raises RingClosed once the
        producer closed the ring and every record was taken."""
        words = self._words
        words[L.W_CONSUMER_WAITING] = 1
        fence()
        if self._pending or words[L.W_HEAD] != words[L.W_TAIL]:
            words[L.W_CONSUMER_WAITING] = 0
            return True
        if words[L.W_PRODUCER_CLOSED]:
            words[L.W_CONSUMER_WAITING] = 0
            raise RingClosed(f"{self.name}: producer closed the ring")
        return False

    def readable(self) -> bool:
        """Consumer: whether there is something to take (never waits)."""
        words = self._words
        return bool(self._pending) or words[L.W_HEAD] != words[L.W_TAIL]

    def interrupt(self) -> None:
        """Consumer side, from another thread of this process: make a blocked (and
        every later) ``get_batch`` return at once; used to stop a draining thread."""
        self._interrupted = True
        self._sem_data.release()

    def header_words(self) -> memoryview:
        """A new view of the header's u64 words (indices ``layout.W_*``), for a wrapper's
        per-event checks without a method call; release it before ``close()``."""
        return memoryview(self._mm)[: L.HEADER_BYTES].cast("Q")

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
        fence()
        if words[L.W_ACK_WAITING]:  # a flush sleeps on it: one post, only then
            words[L.W_ACK_WAITING] = 0
            self._sem_space.release()

    def wait_acked(self, count: int, timeout: float) -> None:
        """Producer: sleep until ``acked()`` reaches ``count`` records, the consumer
        closes, or ``timeout`` seconds (at most 50 ms: a lost wake-up costs no more)
        pass; the caller re-reads :meth:`acked`. The producer says it waits (a flag
        word, then a fence and a re-check, as for space) and :meth:`ack` posts the
        space semaphore for it: a waiting flush wakes on the ack instead of polling
        with back-off (which added up to a millisecond to every quorum flush). A
        wake-up may be spurious (a space post): callers loop."""
        words = self._words
        words[L.W_ACK_WAITING] = 1
        fence()
        if words[L.W_ACK_COUNT] >= count or words[L.W_CONSUMER_CLOSED] or timeout <= 0:
            words[L.W_ACK_WAITING] = 0
            return
        with contextlib.suppress(posix_ipc.BusyError):
            self._sem_space.acquire(min(timeout, _SAFETY_WAIT))
        words[L.W_ACK_WAITING] = 0

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
    @property
    def closed(self) -> bool:
        """Whether this end was closed (unmapped)."""
        return self._closed

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
        if self._wake_in is not None:
            self._words[L.W_WAKE_ADDR] = 0
            self._wake_in.close()
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


class Frames:
    """Records :meth:`ShmRing.take_frames` copied out of a ring, still framed.

    ``blob``: the ring's bytes of whole frames, as they were (one copy, owned here:
    never shared memory); frame ``i`` holds records ``firsts[i]`` up to ``firsts[i + 1]``
    (or ``count``), its payloads back to back from ``blob[offs[i]:]``, their lengths in
    ``lens`` (all records, in order); ``size``: payload bytes in all (checked against
    the frames' own sizes). Each frame's ``lens`` part followed by its payloads is
    byte for byte a log batch record's body (:mod:`netmesh.log.record`)."""

    __slots__ = ("blob", "count", "firsts", "lens", "offs", "size")

    def __init__(
        self, blob: bytes, firsts: array[int], offs: array[int], lens: array[int], size: int
    ) -> None:
        self.blob = blob
        self.firsts = firsts
        self.offs = offs
        self.lens = lens
        self.size = size
        self.count = len(lens)

    def __len__(self) -> int:
        return self.count

    def payloads(self) -> list[bytes]:
        """Every record as its own ``bytes`` (copies of ``blob``'s slices), in order."""
        blob, lens, offs, firsts = self.blob, self.lens, self.offs, self.firsts
        out: list[bytes] = []
        nf = len(firsts)
        for i in range(nf):
            a = firsts[i]
            b = firsts[i + 1] if i + 1 < nf else self.count
            ends = list(accumulate(lens[a:b], initial=offs[i]))
            out += [blob[x:y] for x, y in pairwise(ends)]
        return out


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

"""Ingest peers: what a producer process could use instead of netmesh's ring to a node.

Each trial: this process is the producer, a forked child the consumer; ``n`` events of
``size`` bytes go across, one per call or ``batch`` per call, and the trial's time runs
from the first send until the consumer has acknowledged the last event (what
``Producer.flush`` waits for in netmesh). The consumer materialises every event as its
own ``bytes`` object, as a node must. Process start-up is outside the timing.

* :class:`PyRing`: a small pure-Python shared-memory ring (posix_ipc SharedMemory +
  mmap) with the textbook bounded-buffer semaphores (``free`` counts empty slots,
  ``full`` counts filled ones): the producer blocks when the ring is full, the consumer
  sleeps when it is empty: the same blocking semantics as ``netmesh.ring.ShmRing``
  without its framing layers. ``batch`` > 1 puts ``batch`` records into one slot.
* ``multiprocessing.Pipe``: ``send_bytes`` per event, or ``send`` of a list of
  ``batch`` events (pickled).
* pyzmq PUSH/PULL over ``ipc://``: ``send`` per event or ``send_multipart`` of
  ``batch`` frames (default high-water marks: a full queue blocks the sender).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import struct
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

import posix_ipc

from benchmarks.trials import Unavailable

_HDR = 64  # header bytes: u64 events consumed (the ack word) at offset 0
_LEN = struct.Struct("<I")
_ACK = struct.Struct("<Q")
_END = 0xFFFFFFFF  # a slot whose count is this ends the stream


class PyRing:
    """A fixed-slot SPSC ring in POSIX shared memory with two counting semaphores.

    ``slots`` slots of ``slot_bytes`` each; a slot holds a u32 record count followed by
    that many (u32 length, payload) records. The creator (``create=True``) owns and
    unlinks the names. Not thread-safe; one producer process, one consumer process.
    """

    def __init__(self, name: str, slots: int, slot_bytes: int, create: bool) -> None:
        flags = posix_ipc.O_CREX if create else 0
        self.name, self.slots, self.slot_bytes = name, slots, slot_bytes
        self.shm = posix_ipc.SharedMemory(
            name, flags, size=_HDR + slots * slot_bytes if create else 0
        )
        self.free = posix_ipc.Semaphore(name + "-f", flags, initial_value=slots)
        self.full = posix_ipc.Semaphore(name + "-u", flags, initial_value=0)
        import mmap

        self.mm = mmap.mmap(self.shm.fd, self.shm.size)
        self.shm.close_fd()
        self.i = 0

    # producer side
    def put(self, payload: bytes) -> None:
        """One record in one slot; blocks while the ring is full."""
        self.free.acquire()
        off = _HDR + (self.i % self.slots) * self.slot_bytes
        n = len(payload)
        self.mm[off : off + 8] = struct.pack("<II", 1, n)
        self.mm[off + 8 : off + 8 + n] = payload
        self.i += 1
        self.full.release()

    def put_batch(self, payloads: list[bytes]) -> None:
        """All ``payloads`` in one slot (one semaphore round per batch)."""
        self.free.acquire()
        off = _HDR + (self.i % self.slots) * self.slot_bytes
        body = b"".join(_LEN.pack(len(p)) + p for p in payloads)
        self.mm[off : off + 4] = _LEN.pack(len(payloads))
        self.mm[off + 4 : off + 4 + len(body)] = body
        self.i += 1
        self.full.release()

    def end(self) -> None:
        self.free.acquire()
        off = _HDR + (self.i % self.slots) * self.slot_bytes
        self.mm[off : off + 4] = _LEN.pack(_END)
        self.i += 1
        self.full.release()

    def acked(self) -> int:
        return int(_ACK.unpack_from(self.mm, 0)[0])

    # consumer side
    def consume(self) -> int:
        """Take slots until the end marker, one ``bytes`` per record; the ack word
        counts consumed records. Returns the count."""
        mm, slots, slot_bytes = self.mm, self.slots, self.slot_bytes
        full, free = self.full, self.free
        unpack = _LEN.unpack_from
        got = 0
        out: list[bytes] = []
        while True:
            full.acquire()
            off = _HDR + (self.i % slots) * slot_bytes
            self.i += 1
            (k,) = unpack(mm, off)
            if k == _END:
                free.release()
                return got
            p = off + 4
            for _ in range(k):
                (n,) = unpack(mm, p)
                out.append(mm[p + 4 : p + 4 + n])  # one bytes object per event
                p += 4 + n
            out.clear()
            free.release()
            got += k
            _ACK.pack_into(mm, 0, got)

    def close(self) -> None:
        self.mm.close()

    def unlink(self) -> None:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(self.name)
        for suffix in ("-f", "-u"):
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_semaphore(self.name + suffix)


def _ring_consumer(name: str, slots: int, slot_bytes: int, ready: Connection) -> None:
    ring = PyRing(name, slots, slot_bytes, create=False)
    ready.send(b"ready")
    ring.consume()
    ring.close()


def _wait_ack(get: Any, n: int, timeout: float = 60.0) -> None:
    """Poll the consumer's ack word until it reaches ``n`` (backoff, as Producer.flush)."""
    deadline = time.monotonic() + timeout
    pause = 20e-6
    while get() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer acknowledged {get()} of {n} events")
        time.sleep(pause)  # backoff poll of the ack word, like netmesh's flush
        pause = min(pause * 2, 1e-3)


def ring_rate(n: int, size: int, batch: int, ring_bytes: int = 1 << 22) -> float:
    """Events/s through :class:`PyRing` (4 MiB of slots by default, as netmesh's rings)."""
    slot_bytes = 4 + batch * (4 + size)
    slot_bytes += -slot_bytes % 64
    slots = max(8, ring_bytes // slot_bytes)
    name = f"/netmesh-pyring-{os.getpid()}-{time.monotonic_ns()}"
    ring = PyRing(name, slots, slot_bytes, create=True)
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_ring_consumer, args=(name, slots, slot_bytes, child), daemon=True)
    try:
        proc.start()
        parent.recv()
        payload = b"x" * size
        chunk = [payload] * batch
        t0 = time.perf_counter()
        if batch == 1:
            put = ring.put
            for _ in range(n):
                put(payload)
            total = n
        else:
            for _ in range(n // batch):
                ring.put_batch(chunk)
            total = n // batch * batch
        _wait_ack(ring.acked, total)
        elapsed = time.perf_counter() - t0
        ring.end()
        proc.join(10)
        return total / elapsed
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        ring.close()
        ring.unlink()
        parent.close()
        child.close()


def _pipe_consumer(conn: Connection, n: int, batch: int) -> None:
    got = 0
    conn.send_bytes(b"ready")
    if batch == 1:
        recv = conn.recv_bytes
        while got < n:
            recv()
            got += 1
    else:
        while got < n:
            got += len(conn.recv())
    conn.send_bytes(b"ack")


def pipe_rate(n: int, size: int, batch: int) -> float:
    """Events/s through ``multiprocessing.Pipe`` (duplex: the ack comes back on it)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    total = n if batch == 1 else n // batch * batch
    proc = ctx.Process(target=_pipe_consumer, args=(child, total, batch), daemon=True)
    try:
        proc.start()
        parent.recv_bytes()
        payload = b"x" * size
        # distinct objects: pickle would send one copy of a list of 64 references
        chunk = [os.urandom(size) for _ in range(batch)]
        t0 = time.perf_counter()
        if batch == 1:
            send = parent.send_bytes
            for _ in range(n):
                send(payload)
        else:
            for _ in range(n // batch):
                parent.send(chunk)
        parent.recv_bytes()
        elapsed = time.perf_counter() - t0
        proc.join(10)
        return total / elapsed
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
        child.close()


def _zmq_consumer(addr: str, n: int, batch: int, ack: Connection) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(addr)
    ack.send_bytes(b"ready")
    got = 0
    if batch == 1:
        recv = sock.recv
        while got < n:
            recv()
            got += 1
    else:
        while got < n:
            got += len(sock.recv_multipart())
    ack.send_bytes(b"ack")
    sock.close(linger=0)
    ctx.term()


def zmq_rate(n: int, size: int, batch: int) -> float:
    """Events/s through pyzmq PUSH -> PULL over ``ipc://`` (Unavailable without pyzmq)."""
    try:
        import zmq
    except ImportError as exc:
        raise Unavailable("pyzmq not installed (pip install pyzmq)") from exc
    tmp = tempfile.mkdtemp(prefix="netmesh-bench-zmq-")
    addr = f"ipc://{tmp}/s"
    mctx = mp.get_context("fork")
    parent, child = mctx.Pipe()
    total = n if batch == 1 else n // batch * batch
    proc = mctx.Process(target=_zmq_consumer, args=(addr, total, batch, child), daemon=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        proc.start()
        parent.recv_bytes()
        sock.connect(addr)
        payload = b"x" * size
        t0 = time.perf_counter()
        if batch == 1:
            send = sock.send
            for _ in range(n):
                send(payload)
        else:
            chunk = [payload] * batch
            for _ in range(n // batch):
                sock.send_multipart(chunk)
        parent.recv_bytes()
        elapsed = time.perf_counter() - t0
        proc.join(10)
        return total / elapsed
    finally:
        sock.close(linger=0)
        ctx.term()
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
        child.close()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)

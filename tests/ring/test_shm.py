"""Real shared-memory rings between real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import struct
import zlib

import posix_ipc
import pytest

from netmesh.errors import PayloadTooLarge, RingClosed, RingFull
from netmesh.ring import layout as L
from netmesh.ring.shm import ShmRing, unlink_ring
from tests.conftest import wait_until

CTX = mp.get_context("fork")
BLOCK = random.Random(7).randbytes(8192)


def payload(i: int, rng: random.Random) -> bytes:
    """Record i: 8-byte index + 4-byte crc + body of random length (1 B .. 4 KiB total)."""
    size = rng.randint(1, 4096)
    if size < 12:
        return struct.pack("<Q", i)[:size]
    start = (i * 131) % 4096
    body = BLOCK[start : start + size - 12]
    return struct.pack("<QI", i, zlib.crc32(body)) + body


def check(i: int, rec: bytes, rng: random.Random) -> None:
    expected = payload(i, rng)
    assert rec == expected, f"record {i}: got {len(rec)} bytes, expected {len(expected)}"
    if len(rec) >= 12:
        idx, crc = struct.unpack_from("<QI", rec)
        assert idx == i and zlib.crc32(rec[12:]) == crc


def produce(name: str, n: int, seed: int) -> None:
    ring = ShmRing.attach(name)
    rng, sizes = random.Random(seed), random.Random(seed + 1)
    i = 0
    while i < n:
        k = min(n - i, sizes.randint(1, 64))
        batch = [payload(i + j, rng) for j in range(k)]
        if k == 1:
            ring.put(batch[0], timeout=30)
        else:
            ring.put_batch(batch, timeout=30)
        i += k
    ring.close_producer()
    ring.close()


@pytest.fixture
def ring_name() -> str:
    name = f"/netmesh-test-{os.getpid()}-{random.getrandbits(32):x}"
    yield name
    unlink_ring(name)


def test_million_records_across_processes_in_order(ring_name: str) -> None:
    n, seed = 1_000_000, 11
    ring = ShmRing.create(ring_name, 1 << 20)
    proc = CTX.Process(target=produce, args=(ring_name, n, seed))
    proc.start()
    rng = random.Random(seed)
    got = 0
    total_bytes = 0
    try:
        while True:
            for rec in ring.get_batch(4096, timeout=30):
                check(got, rec, rng)
                got += 1
                total_bytes += len(rec)
    except RingClosed:
        pass
    proc.join(30)
    assert proc.exitcode == 0
    assert got == n
    assert total_bytes > 20 * ring.capacity  # many wraps
    assert ring.used_bytes() == 0
    ring.close()
    ring.unlink()


def produce_forever(name: str) -> None:
    ring = ShmRing.attach(name)
    rng = random.Random(3)
    i = 0
    while True:
        batch = [payload(i + j, rng) for j in range(16)]
        ring.put_batch(batch, timeout=None)
        i += 16


def test_sigkilled_producer_leaves_only_whole_records(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 1 << 18)
    proc = CTX.Process(target=produce_forever, args=(ring_name,))
    proc.start()
    rng = random.Random(3)
    got = 0
    for _ in range(50):  # let it wrap a few times, then kill it while it writes
        for rec in ring.get_batch(64, timeout=10):
            check(got, rec, rng)
            got += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    while recs := ring.get_batch(4096, timeout=0.2):
        for rec in recs:
            check(got, rec, rng)
            got += 1
    assert got > 50 and got % 16 == 0  # whole batches only: frames are atomic
    assert ring.used_bytes() == 0
    ring.close()
    ring.unlink()


def test_nowait_full_ring_raises_and_writes_nothing(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    peer = ShmRing.attach(ring_name)
    ring.put_batch_nowait([b"a" * 1500])
    with pytest.raises(RingFull):
        ring.put_batch_nowait([b"b" * 1000] * 4)
    ring.put_nowait(b"c" * 1500)
    with pytest.raises(RingFull):
        ring.put_nowait(b"e" * 1500)
    with pytest.raises(RingFull):
        ring.put(b"d" * 1500, timeout=0.05)
    assert peer.get_batch(10, timeout=0) == [b"a" * 1500, b"c" * 1500]
    ring.put(b"d" * 1500, timeout=0.05)
    assert peer.get_batch(10, timeout=1) == [b"d" * 1500]
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_oversized_record_rejected(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    with pytest.raises(PayloadTooLarge):
        ring.put(b"x" * 4000)
    with pytest.raises(PayloadTooLarge):
        ring.put_batch([b"ok", b"x" * 4000])
    assert ring.used_bytes() == 0
    ring.close()
    ring.unlink()


def test_get_batch_times_out_empty_and_respects_max_n(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 1 << 16)
    assert ring.get_batch(10, timeout=0.01) == []
    ring.put_batch([bytes([i]) for i in range(10)])
    assert ring.get_batch(3, timeout=0) == [b"\0", b"\1", b"\2"]
    assert ring.get_batch(100, timeout=0) == [bytes([i]) for i in range(3, 10)]
    ring.close()
    ring.unlink()


def consume_slowly(name: str, n: int, q: mp.Queue) -> None:
    ring = ShmRing.attach(name)
    got: list[bytes] = []
    while len(got) < n:
        got.extend(ring.get_batch(1, timeout=10))
    q.put(got)
    ring.close()


def test_blocked_producer_is_woken_by_consumer(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    q: mp.Queue = CTX.Queue()
    proc = CTX.Process(target=consume_slowly, args=(ring_name, 200, q))
    proc.start()
    items = [i.to_bytes(2, "little") * 100 for i in range(200)]  # 200 B each, ring holds ~18
    ring.put_batch(items, timeout=30)  # must block on space repeatedly and be woken
    assert q.get(timeout=30) == items
    proc.join(10)
    q.close()
    q.join_thread()
    ring.close()
    ring.unlink()


def test_unlink_removes_every_name(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    short = ring_name.lstrip("/")
    names = set(os.listdir("/dev/shm"))
    assert {short, f"sem.{short}-d", f"sem.{short}-s"} <= names
    ring.close()
    ring.unlink()
    left = {n for n in os.listdir("/dev/shm") if short in n}
    assert left == set()
    with pytest.raises(posix_ipc.ExistentialError):
        ShmRing.attach(ring_name)


def test_consumer_close_unblocks_producer(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    ring.put_batch_nowait([b"x" * 1500, b"x" * 1500])
    peer = ShmRing.attach(ring_name)
    peer.close_consumer()
    with pytest.raises(RingClosed):
        ring.put(b"y" * 1500, timeout=None)  # would block forever without the close
    wait_until(lambda: peer.used_bytes() > 0)
    peer.close()
    ring.close()
    ring.unlink()


def test_nowait_sees_space_freed_by_the_consumer(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    peer = ShmRing.attach(ring_name)
    for _ in range(2):
        ring.put_batch_nowait([b"z" * 1500])
        assert peer.get_batch(10, timeout=0) == [b"z" * 1500]
    ring.put_batch_nowait([b"z" * 1500])  # the producer's cached tail is stale here
    assert ring.used_bytes() == 1512  # one frame: 8 head + 4 length + 1500, aligned
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_the_producer_uses_the_checked_free_space_function(ring_name: str) -> None:
    """One free-space function (layout.free_bytes): a scribbled header is an error,
    not a negative free count that lets the producer overwrite unread frames."""
    ring = ShmRing.create(ring_name, 4096)
    peer = ShmRing.attach(ring_name)
    peer._words[L.W_HEAD] = 10_000  # more written than the ring holds: corrupt
    with pytest.raises(ValueError, match="inconsistent ring indices"):
        ring.put_batch_nowait([b"x" * 100])
    for r in (peer, ring):
        r.close()
    ring.unlink()


def raw_frames(ring: ShmRing) -> bytes:
    """The bytes between TAIL and HEAD (no wrap in these tests)."""
    tail, head = ring._words[L.W_TAIL], ring._words[L.W_HEAD]
    return bytes(ring._data[tail % ring.capacity : head % ring.capacity or ring.capacity])


def test_known_signatures_are_packed_by_struct_with_the_same_wire_bytes(ring_name: str) -> None:
    """A batch whose length signature was seen before is packed by one compiled struct;
    its frame is byte for byte encode_frame's (padding aside), so both ends agree."""
    ring = ShmRing.create(ring_name, 1 << 16)
    peer = ShmRing.attach(ring_name)
    batches = [[bytes([i]) * 5, bytes([i]) * 11, b""] for i in range(4)]
    for b in batches:
        ring.put_batch(b)
    assert ring._write_structs.structs  # the second sighting compiled a struct
    frames = raw_frames(ring)
    expected = b"".join(L.encode_frame(b) for b in batches)
    assert len(frames) == len(expected)
    pos = 0
    for b in batches:  # compare each frame up to its padding
        n = L.FRAME_HEAD.size + 4 * len(b) + sum(map(len, b))
        assert frames[pos : pos + n] == L.encode_frame(b)[:n]
        pos += L.frame_size(len(b), sum(map(len, b)))
    assert peer.get_batch(100, timeout=0) == [p for b in batches for p in b]
    assert peer._read_structs.structs  # and the reader unpacked with one too
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_struct_path_across_wraps_and_payload_types(ring_name: str) -> None:
    """Frames of known signatures that wrap around the end of the ring, bytearrays and
    memoryviews (not struct-packable: the general path) all arrive intact, in order."""
    ring = ShmRing.create(ring_name, 4096)
    peer = ShmRing.attach(ring_name)
    rng = random.Random(5)
    sent: list[bytes] = []
    got: list[bytes] = []
    for i in range(400):
        kind = i % 3
        base = [rng.randbytes(100), rng.randbytes(37), rng.randbytes(250)]
        batch: list[bytes] = (
            base
            if kind == 0
            else [bytearray(p) for p in base]  # type: ignore[misc]
            if kind == 1
            else [memoryview(p) for p in base]  # type: ignore[misc]
        )
        ring.put_batch(batch, timeout=0)
        sent += base
        got += peer.get_batch(1000, timeout=0)
    assert got == sent
    assert ring._words[L.W_HEAD] > 10 * ring.capacity  # it wrapped many times
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_try_put_batch_declines_unknown_signatures_and_payloads_over_the_limit(
    ring_name: str,
) -> None:
    ring = ShmRing.create(ring_name, 1 << 16)
    batch = [b"a" * 10, b"b" * 20]
    assert ring.try_put_batch(batch) is False  # first sighting: the general path's job
    assert ring.used_bytes() == 0
    ring.put_batch(batch)  # the general path, which notes the signature
    used = ring.used_bytes()
    assert ring.try_put_batch(batch, limit=19) is False  # one payload over the limit
    assert ring.used_bytes() == used
    assert ring.try_put_batch(batch, limit=20) is True
    assert ring.used_bytes() == 2 * used
    ring.close()
    ring.unlink()


def test_a_corrupt_frame_after_good_ones_keeps_the_good_ones(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 1 << 16)
    peer = ShmRing.attach(ring_name)
    good = [b"x" * 8, b"y" * 8]
    for _ in range(3):
        ring.put_batch(good)  # the third one goes through the struct path
    off = ring._words[L.W_HEAD]
    ring.put_batch(good)
    ring._data[off : off + 4] = (16).to_bytes(4, "little")  # too short for its payloads
    with pytest.raises(ValueError, match="corrupt frame"):  # the struct path's check
        peer.get_batch(100, timeout=0)
    assert peer.get_batch(100, timeout=0) == good * 3  # what came before stays
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_wait_readable_waits_without_taking(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    peer = ShmRing.attach(ring_name)
    assert peer.wait_readable(0.01) is False
    ring.put(b"hello")
    assert peer.wait_readable(0) is True
    assert peer.used_bytes() > 0  # nothing was taken
    ring.put(bytearray(b"ba"))  # the one-struct path takes bytes and bytearray
    ring.put(memoryview(b"mv"))  # anything else is copied in through a view
    assert peer.get_batch(10, timeout=0) == [b"hello", b"ba", b"mv"]
    peer.interrupt()
    assert peer.wait_readable(None) is False  # interrupted: returns at once
    ring.close_producer()
    with pytest.raises(RingClosed):
        peer.wait_readable(0)
    for r in (peer, ring):
        r.close()
    ring.unlink()


def test_an_ack_wakes_a_waiting_flush_and_only_a_waiting_one(ring_name: str) -> None:
    """wait_acked says it waits (a flag word); ack posts the space semaphore only then
    and clears the flag, so a flush sleeps until the ack instead of polling with
    back-off, and acks nobody waits for cost no system call."""
    ring = ShmRing.create(ring_name, 4096)  # the producer end in this test
    node = ShmRing.attach(ring_name)
    sem = posix_ipc.Semaphore(ring_name + "-s")
    try:
        node.ack(1, 0)  # nobody waits: no post
        with pytest.raises(posix_ipc.BusyError):
            sem.acquire(0)
        ring.wait_acked(1, 1.0)  # already acked: returns without sleeping
        assert node._words[L.W_ACK_WAITING] == 0
        ring._words[L.W_ACK_WAITING] = 1  # as wait_acked leaves it while it sleeps
        node.ack(2, 1)
        assert node._words[L.W_ACK_WAITING] == 0
        sem.acquire(0)  # posted exactly once for the waiting flush
        with pytest.raises(posix_ipc.BusyError):
            sem.acquire(0)
        assert ring.acked()[0] == 2
    finally:
        sem.close()
        for r in (node, ring):
            r.close()
        ring.unlink()


def test_a_flush_waiting_in_another_process_wakes_on_the_ack(ring_name: str) -> None:
    ring = ShmRing.create(ring_name, 4096)
    node = ShmRing.attach(ring_name)
    proc = CTX.Process(target=_flush_waiter, args=(ring_name,))
    proc.start()
    try:
        wait_until(lambda: node._words[L.W_ACK_WAITING] == 1, 10, message="the flush waits")
        node.ack(5, 4)
        proc.join(10)
        assert proc.exitcode == 0, "the waiting flush saw the ack"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        for r in (node, ring):
            r.close()
        ring.unlink()


def _flush_waiter(name: str) -> None:
    ring = ShmRing.attach(name)
    while ring.acked()[0] < 5:
        ring.wait_acked(5, 30.0)
    ring.close()

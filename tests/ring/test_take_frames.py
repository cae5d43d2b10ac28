"""ShmRing.take_frames: whole frames copied out in one piece (issue 17 §3), across
the end of the data area, bounded by max_n, checked against scribbles."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from netmesh.errors import RingClosed
from netmesh.ring import layout as L
from netmesh.ring.shm import ShmRing, unlink_ring


@pytest.fixture
def ring() -> Iterator[ShmRing]:
    name = f"/netmesh-test-tf-{os.getpid()}-{random.getrandbits(32):x}"
    r = ShmRing.create(name, 4096)
    try:
        yield r
    finally:
        r.close()
        unlink_ring(name)


def test_empty_ring_gives_none(ring: ShmRing) -> None:
    assert ring.take_frames() is None


def test_frames_across_the_wrap_match_what_was_put(ring: ShmRing) -> None:
    rng = random.Random(3)
    sent: list[bytes] = []
    got: list[bytes] = []
    for i in range(400):  # ~100 times round a 4 KiB ring, at every alignment
        k = rng.randint(1, 12)
        batch = [rng.randbytes(rng.randint(0, 150)) for _ in range(k)]
        if k == 1:
            ring.put(batch[0], timeout=1)
        else:
            ring.put_batch(batch, timeout=1)
        sent += batch
        if i % 3 == 2:
            frames = ring.take_frames()
            assert frames is not None
            assert type(frames.blob) is bytes and len(frames) == frames.count
            assert frames.size == sum(frames.lens) == sum(map(len, frames.payloads()))
            got += frames.payloads()
    while (frames := ring.take_frames()) is not None:
        got += frames.payloads()
    assert got == sent
    assert ring.used_bytes() == 0


def test_max_n_takes_whole_frames(ring: ShmRing) -> None:
    for i in range(5):
        ring.put_batch([bytes([i])] * 10)
    first = ring.take_frames(15)
    assert first is not None and first.count == 20 and list(first.firsts) == [0, 10]
    rest = ring.take_frames(1)
    assert rest is not None and rest.payloads() == [b"\x02"] * 10
    rest = ring.take_frames()
    assert rest is not None and rest.payloads() == [b"\x03"] * 10 + [b"\x04"] * 10


def test_a_corrupt_frame_head_is_refused_after_the_frames_before_it(ring: ShmRing) -> None:
    ring.put_batch([b"a", b"b"])
    ring.put_batch([b"c", b"d"])
    words = ring.header_words()
    try:
        second = L.frame_size(2, 2)
        ring._data[second : second + 4] = (10_000).to_bytes(4, "little")  # total too big
        frames = ring.take_frames()
        assert frames is not None and frames.payloads() == [b"a", b"b"]
        with pytest.raises(ValueError, match="corrupt frame head"):
            ring.take_frames()
        assert words[L.W_TAIL] == second  # nothing past the corrupt frame was released
    finally:
        words.release()


def test_lengths_that_disagree_with_the_frame_are_refused(ring: ShmRing) -> None:
    ring.put_batch([b"a" * 40, b"b" * 40])
    ring._data[8:12] = (70).to_bytes(4, "little")  # 70 + 40 > the frame's 80 bytes
    with pytest.raises(ValueError, match="corrupt frame lengths"):
        ring.take_frames()


def test_a_wake_socket_gets_one_datagram_per_armed_wait(ring: ShmRing) -> None:
    sock = ring.wake_socket()
    assert ring.wake_socket() is sock and ring.header_words()[L.W_WAKE_ADDR]
    assert ring.arm() is False  # empty: it waits
    ring.put(b"a")  # the consumer said it waits: one datagram
    ring.put(b"b")  # it did not say so again: none
    assert sock.recv(16) == b"\x01"
    with pytest.raises(BlockingIOError):
        sock.recv(16)
    assert ring.arm() is True  # frames are there: it does not wait
    frames = ring.take_frames()
    assert frames is not None and frames.payloads() == [b"a", b"b"]
    assert ring.arm() is False
    ring.close_producer()
    assert sock.recv(16) == b"\x01"  # the close wakes it too
    with pytest.raises(RingClosed):
        ring.arm()


def test_a_wake_to_a_closed_socket_falls_back_to_the_semaphore(ring: ShmRing) -> None:
    peer = ShmRing.attach(ring.name)
    try:
        sock = peer.wake_socket()
        addr = ring.header_words()[L.W_WAKE_ADDR]
        sock.close()  # the consumer's socket is gone, its address still published
        ring.header_words()[L.W_WAKE_ADDR] = addr
        assert peer.arm() is False
        ring.put(b"x")  # ECONNREFUSED: the semaphore is posted instead
        peer._sem_data.acquire(0)  # posted (BusyError otherwise)
    finally:
        peer.close()


def test_encoded_wake_addresses_round_trip() -> None:
    for addr in (b"\x000fb07", b"\x00a", b"\x001234567"):
        assert L.decode_wake_addr(L.encode_wake_addr(addr)) == addr
    for bad in (b"/tmp/x", b"\x00", b"\x0012345678"):
        with pytest.raises(ValueError):
            L.encode_wake_addr(bad)

"""Ring arithmetic and framing, checked against a collections.deque model."""

from __future__ import annotations

from array import array
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netmesh.ring import layout as L


class ByteRing:
    """A ring built only from ring_layout's pure functions over a bytearray."""

    def __init__(self, capacity: int) -> None:
        self.cap = capacity
        self.data = bytearray(capacity)
        self.head = 0
        self.tail = 0

    def put(self, payloads: list[bytes]) -> bool:
        frame = L.encode_frame(payloads)
        if len(frame) > L.free_bytes(self.head, self.tail, self.cap):
            return False
        off, first, second = L.split(self.head, len(frame), self.cap)
        self.data[off : off + first] = frame[:first]
        self.data[:second] = frame[first:]
        self.head += len(frame)
        return True

    def get_all(self) -> list[bytes]:
        out: list[bytes] = []
        while self.tail < self.head:
            off = self.tail % self.cap
            total = L.FRAME_HEAD.unpack_from(self.data, off)[0]
            off, first, second = L.split(self.tail, total, self.cap)
            frame = bytes(self.data[off : off + first]) + bytes(self.data[:second])
            out.extend(L.decode_frame(frame))
            self.tail += total
        return out


class RingVsDeque(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ring = ByteRing(4096)
        self.model: deque[bytes] = deque()
        self.rejected = 0

    @rule(payloads=st.lists(st.binary(max_size=700), min_size=1, max_size=5))
    def put(self, payloads: list[bytes]) -> None:
        used = self.ring.head - self.ring.tail
        fits = L.frame_size(len(payloads), sum(map(len, payloads))) <= self.ring.cap - used
        assert self.ring.put(payloads) is fits
        if fits:
            self.model.extend(payloads)

    @precondition(lambda self: self.ring.head > self.ring.tail)
    @rule()
    def get(self) -> None:
        got = self.ring.get_all()
        expected = [self.model.popleft() for _ in range(len(got))]
        assert got == expected
        assert not self.model

    @invariant()
    def indices_consistent(self) -> None:
        assert 0 <= self.ring.head - self.ring.tail <= self.ring.cap
        assert self.ring.head % L.ALIGN == 0


TestRingVsDeque = RingVsDeque.TestCase
TestRingVsDeque.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)


@given(payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=30))
def test_frame_round_trip(payloads: list[bytes]) -> None:
    frame = L.encode_frame(payloads)
    assert len(frame) == L.frame_size(len(payloads), sum(map(len, payloads)))
    assert len(frame) % L.ALIGN == 0
    assert L.decode_frame(frame) == payloads


@given(payload=st.binary(max_size=300))
def test_single_frame_equals_batch_of_one(payload: bytes) -> None:
    assert L.encode_single(payload) == L.encode_frame([payload])


@given(pos=st.integers(0, 2**40), n=st.integers(0, 4096), cap=st.sampled_from([4096, 8192]))
def test_split_covers_exactly_n_bytes(pos: int, n: int, cap: int) -> None:
    off, first, second = L.split(pos, n, cap)
    assert first + second == n
    assert off + first <= cap
    assert second == 0 or off + first == cap


def test_free_bytes_rejects_inconsistent_indices() -> None:
    with pytest.raises(ValueError):
        L.free_bytes(10, 20, 4096)
    with pytest.raises(ValueError):
        L.free_bytes(5000, 0, 4096)
    assert L.free_bytes(100, 36, 4096) == 4032


def test_decode_rejects_inconsistent_frame() -> None:
    frame = bytearray(L.encode_frame([b"abc", b"de"]))
    frame[8] = 200  # first length overruns the frame
    with pytest.raises(ValueError):
        L.decode_frame(bytes(frame))


def test_struct_cache_compiles_on_the_second_sighting_and_stays_bounded() -> None:
    cache = L.StructCache(max_entries=2, max_count=3)
    payloads = [b"ab", b"", b"cdef"]
    key = array("I", map(len, payloads)).tobytes()
    assert cache.get(key) is None  # first sighting
    st = cache.get(key)
    assert st is not None
    frame = L.encode_frame(payloads)
    assert list(st.unpack_from(frame, 8 + 4 * len(payloads))) == L.decode_frame(frame)
    assert cache.get(key) is st
    big = array("I", [1] * 4).tobytes()
    assert cache.get(big) is None and cache.get(big) is None  # over max_count: never
    for n in range(5):  # more signatures than max_entries: the cache is reset, not grown
        k = array("I", [n]).tobytes()
        cache.get(k)
        cache.get(k)
        assert len(cache.structs) <= 2

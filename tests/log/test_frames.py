"""RedexFile.append_frames (issue 17 §3: ring frames kept as one ``bytes`` per batch)
against a model list: reads of any range across frames, packed batches and lists,
retention by bytes/events, truncation, reset, refusals; and the retention search
(_bytes_to_drop) against the obvious loop."""

from __future__ import annotations

import os
import tempfile
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netmesh.config import RedexFileConfig
from netmesh.errors import NotLeader, OutOfOrder, PayloadTooLarge
from netmesh.log.file import RedexFile
from netmesh.log.packed import PackedPayloads
from netmesh.ring import layout as L
from netmesh.ring.shm import Frames


def frames_of(*chunks: list[bytes]) -> Frames:
    """What ShmRing.take_frames returns for these frames written in order (each chunk
    one frame, as ``put_batch`` writes them)."""
    blob = b""
    firsts, offs, lens = array("I"), array("Q"), array("I")
    got = 0
    for chunk in chunks:
        firsts.append(got)
        offs.append(len(blob) + 8 + 4 * len(chunk))
        lens.extend(map(len, chunk))
        blob += L.encode_frame(chunk)
        got += len(chunk)
    return Frames(blob, firsts, offs, lens, sum(lens))


def payloads(seed: int, n: int, size: int | None = None) -> list[bytes]:
    return [
        bytes([(seed + i) % 256]) * ((seed * 7 + i * 13) % 40 if size is None else size)
        for i in range(n)
    ]


def test_frames_read_back_as_copies_across_frames_and_lists() -> None:
    f = RedexFile("frames/a")
    a, b, c = payloads(1, 5), payloads(2, 64, 64), payloads(3, 3)
    assert f.append_frames(frames_of(a, b, c)) == 0
    d = payloads(4, 10)
    assert f.append_batch(d) == 72
    assert f.append(b"single") == 82
    e = payloads(5, 64, 64)
    assert f.append_frames(frames_of(e)) == 83
    model = a + b + c + d + [b"single"] + e
    for lo in range(0, len(model), 7):
        for hi in (lo + 1, lo + 13, lo + 64, len(model) + 5):
            got, first = f.read_payloads(lo, hi)
            assert first == lo and got == model[lo:hi]
            assert all(type(p) is bytes for p in got)
    assert f.retained_bytes == sum(map(len, model)) and f.next_seq == len(model)
    assert [e.entry.payload_len for e in f.read_range(0, len(model))] == list(map(len, model))


def test_reads_never_share_memory_with_the_ring() -> None:
    import random

    from netmesh.ring.shm import ShmRing, unlink_ring

    name = f"/netmesh-test-frames-{os.getpid()}-{random.getrandbits(32):x}"
    ring = ShmRing.create(name, 4096)
    try:
        f = RedexFile("frames/alias")
        ring.put_batch([b"a" * 100, b"b" * 200])
        ring.put(b"c" * 50)
        frames = ring.take_frames()
        assert frames is not None and type(frames.blob) is bytes
        f.append_frames(frames)
        for _ in range(20):  # overwrite the whole ring several times
            ring.put_batch([b"z" * 300] * 4)
            assert ring.take_frames() is not None
        assert f.read_payloads(0, 3)[0] == [b"a" * 100, b"b" * 200, b"c" * 50]
    finally:
        ring.close()
        unlink_ring(name)


def test_refusals_and_listener_like_append_batch() -> None:
    f = RedexFile("frames/b", RedexFileConfig(max_payload=100))
    calls: list[int] = []

    def listener() -> None:
        calls.append(f.next_seq)
        f.append_pending = False

    f.on_append = listener
    f.append_frames(frames_of([b"x" * 100, b"y"]))
    assert calls == [2]
    with pytest.raises(PayloadTooLarge):
        f.append_frames(frames_of([b"x"], [b"y" * 101]))
    assert f.next_seq == 2 and f.retained_bytes == 101
    f.refusal = NotLeader("frames/b")
    with pytest.raises(NotLeader):
        f.append_frames(frames_of([b"z"]))
    f.refusal = None
    f.append_term = 3
    f.append_frames(frames_of([b"t"]))
    assert f.epochs == ((0, 0), (3, 2))
    f.append_term = 2
    with pytest.raises(OutOfOrder):
        f.append_frames(frames_of([b"u"]))
    assert f.read_payloads(0, 10)[0] == [b"x" * 100, b"y", b"t"]


def test_retention_frees_packed_batches_and_lists() -> None:
    f = RedexFile("frames/c", RedexFileConfig(retention_max_bytes=64 * 100))
    model: list[bytes] = []
    for i in range(300):
        batch = payloads(i, 1 + i % 70, 64)
        if i % 3:
            f.append_frames(frames_of(batch[: len(batch) // 2], batch[len(batch) // 2 :]))
        else:
            f.append_batch(batch)
        model += batch
        assert f.retained_bytes <= 64 * 100
        assert f.first_retained_seq == max(0, len(model) - 100)
        got, first = f.read_payloads(0, len(model))
        assert first == max(0, len(model) - 100) and got == model[first:]
    mem = f._mem
    assert len(mem.chunks) - mem.head < 100  # dropped chunks are let go
    assert all(c == [] for c in mem.chunks[: mem.head])


def test_truncation_inside_a_packed_batch_then_appends() -> None:
    f = RedexFile("frames/d")
    a = payloads(1, 50)
    f.append_frames(frames_of(a[:20], a[20:]))
    f.append(b"open")
    assert f.truncate_from(30) == 21
    assert f.read_payloads(0, 100)[0] == a[:30]
    f.append(b"after")
    f.append_frames(frames_of([b"p", b"q"]))
    assert f.read_payloads(0, 100)[0] == [*a[:30], b"after", b"p", b"q"]
    assert f.truncate_from(0) == 33 and f.read_payloads(0, 10) == ([], 0)
    f.append_frames(frames_of([b"r"]))
    f.reset_to(10, 0)
    f.append_frames(frames_of([b"s", b"t"]))
    f.append(b"u")
    assert f.read_payloads(0, 100) == ([b"s", b"t", b"u"], 10)


def test_persisted_and_idempotent_files_store_the_payloads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = RedexFile("frames/e", RedexFileConfig(path=tmp, fsync="never"))
        f.append_frames(frames_of([b"a", b"bb"], [b"ccc"]))
        f.close()
        g = RedexFile("frames/e", RedexFileConfig(path=tmp, fsync="never"))
        assert g.read_payloads(0, 10) == ([b"a", b"bb", b"ccc"], 0)
        g.close()
    h = RedexFile("frames/f", RedexFileConfig(idempotence=True))
    h.append_frames(frames_of([b"a"], [b"b"]))
    assert h.read_published(0, 10) == ([b"a", b"b"], 0)


@settings(max_examples=300, deadline=None)
@given(
    lens=st.lists(st.integers(0, 300), min_size=1, max_size=400),
    uniform=st.booleans(),
    cut=st.integers(1, 10**6),
    head=st.integers(0, 50),
)
def test_bytes_to_drop_is_the_obvious_loop(
    lens: list[int], uniform: bool, cut: int, head: int
) -> None:
    if uniform:
        lens = [lens[0]] * len(lens)
    f = RedexFile("frames/g")
    f._lens = array("I", [7] * head + lens)
    f._head = head
    f._retained_bytes = sum(lens)
    if not f._retained_bytes:
        return
    excess = 1 + cut % f._retained_bytes
    i = freed = 0
    while freed < excess:
        freed += lens[i]
        i += 1
    assert f._bytes_to_drop(excess) == (i, freed)


class FramesMachine(RuleBasedStateMachine):
    """Random appends of all three kinds, truncations, resets and retention against a
    list; every read of a range must match."""

    def __init__(self) -> None:
        super().__init__()
        self.max_events: int | None = None
        self.f = RedexFile("frames/m", RedexFileConfig(retention_max_bytes=3000))
        self.model: list[bytes] = []  # index = seq
        self.first = 0
        self.n = 0

    def _retain(self) -> None:
        total = sum(map(len, self.model[self.first :]))
        while total > 3000:
            total -= len(self.model[self.first])
            self.first += 1

    @rule(k=st.integers(1, 5), size=st.integers(0, 90))
    def single(self, k: int, size: int) -> None:
        for _ in range(k):
            p = bytes([self.n % 256]) * size
            self.n += 1
            assert self.f.append(p) == len(self.model)
            self.model.append(p)
            self._retain()

    @rule(k=st.integers(1, 30), size=st.integers(0, 90))
    def batch(self, k: int, size: int) -> None:
        ps = [bytes([(self.n + i) % 256]) * ((size + i) % 91) for i in range(k)]
        self.n += k
        assert self.f.append_batch(ps) == len(self.model)
        self.model += ps
        self._retain()

    @rule(sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4), size=st.integers(0, 90))
    def frames(self, sizes: list[int], size: int) -> None:
        chunks = []
        for k in sizes:
            chunks.append([bytes([(self.n + i) % 256]) * ((size * i) % 91) for i in range(k)])
            self.n += k
        assert self.f.append_frames(frames_of(*chunks)) == len(self.model)
        for c in chunks:
            self.model += c
        self._retain()

    @rule(k=st.integers(1, 30), size=st.integers(0, 90))
    def packed(self, k: int, size: int) -> None:
        """A replicated batch, stored as it came (apply_packed)."""
        ps = [bytes([(self.n + i) % 256]) * ((size + 3 * i) % 91) for i in range(k)]
        self.n += k
        body = PackedPayloads.of(ps).body()
        got = self.f.apply_packed(PackedPayloads.from_body(k, body), len(self.model), 0)
        assert got == len(self.model)
        self.model += ps
        self._retain()

    @precondition(lambda self: len(self.model) > self.first)
    @rule(back=st.integers(0, 60))
    def truncate(self, back: int) -> None:
        seq = max(self.first, len(self.model) - back)
        assert self.f.truncate_from(seq) == len(self.model) - seq
        del self.model[seq:]

    @rule(gap=st.integers(0, 5))
    def reset(self, gap: int) -> None:
        seq = len(self.model) + gap
        self.f.reset_to(seq, self.f.last_term)
        self.model += [b"?"] * gap
        self.first = seq

    @rule(a=st.integers(0, 400), b=st.integers(0, 400))
    def read(self, a: int, b: int) -> None:
        got, first = self.f.read_payloads(a, b)
        lo, hi = max(a, self.first), min(b, len(self.model))
        packed, pfirst = self.f.read_packed(a, b)
        if hi <= lo:
            assert got == [] and len(packed) == 0
        else:
            assert first == lo and got == self.model[lo:hi]
            assert pfirst == lo and packed.to_list() == got
            assert PackedPayloads.from_body(len(got), packed.body()) == got

    @rule(a=st.integers(0, 400), max_bytes=st.integers(0, 500))
    def read_packed_bytes(self, a: int, max_bytes: int) -> None:
        """A push's read: at most max_bytes of payloads, at least one event."""
        packed, first = self.f.read_packed(a, a + 4096, max_bytes)
        got, first2 = self.f.read_payloads(a, a + 4096, max_bytes)
        assert first == first2 and packed == got and packed.size == sum(map(len, got))

    @invariant()
    def bounds(self) -> None:
        assert self.f.next_seq == len(self.model)
        assert self.f.first_retained_seq == self.first
        assert self.f.retained_bytes == sum(map(len, self.model[self.first :]))


FramesMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_frames_machine = FramesMachine.TestCase

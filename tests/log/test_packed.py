"""PackedPayloads (issue 17 §3: a replicated batch as one body, lengths then payloads):
it behaves as the tuple of its events, its wire body is a batch record's body, and
from_body accepts exactly the well-formed bodies (DecodeError for anything else)."""

from __future__ import annotations

import struct
import tempfile
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.config import RedexFileConfig
from netmesh.errors import DecodeError, OutOfOrder, PayloadTooLarge
from netmesh.log import record
from netmesh.log.file import RedexFile
from netmesh.log.packed import PackedPayloads, payload_size

events = st.lists(st.binary(max_size=40), max_size=30)


@given(events)
def test_behaves_as_the_tuple_of_its_events(ps: list[bytes]) -> None:
    p = PackedPayloads.of(ps)
    assert len(p) == len(ps) and p.size == payload_size(ps) == payload_size(p)
    assert p == tuple(ps) and tuple(ps) == p and p == ps and hash(p) == hash(tuple(ps))
    assert list(p) == ps and p.to_list() == ps
    assert all(type(x) is bytes for x in p)
    for i in range(-len(ps), len(ps)):
        assert p[i] == ps[i]
    for a in range(len(ps) + 1):
        for b in (a, a + 1, a + 5, len(ps) + 3):
            sub = p[a:b]
            assert isinstance(sub, PackedPayloads) and sub == ps[a:b]
            assert PackedPayloads.from_body(len(sub), sub.body()) == ps[a:b]
    assert p[::2] == ps[::2]
    with pytest.raises(IndexError):
        p[len(ps)]


def test_the_body_is_a_batch_records_body() -> None:
    ps = [b"a", b"", b"xyz" * 30]
    body = PackedPayloads.of(ps).body()
    assert body == struct.pack("<3I", 1, 0, 90) + b"".join(ps)
    rec = record.encode_batch(5, ps)
    assert rec.endswith(body) and len(rec) == record.RECORD_HEADER_SIZE + len(body)


def test_from_body_adopts_the_body_without_a_copy() -> None:
    body = PackedPayloads.of([b"ab", b"c"]).body()
    p = PackedPayloads.from_body(2, body)
    assert p.data is body and p.body() is body and p.start == 8 and p.size == 3


@given(st.integers(0, 40), st.binary(max_size=120))
def test_from_body_accepts_only_well_formed_bodies(count: int, body: bytes) -> None:
    try:
        p = PackedPayloads.from_body(count, body)
    except DecodeError:
        ok = len(body) >= 4 * count and 4 * count + sum(array("I", body[: 4 * count])) == len(body)
        assert not ok
        return
    assert len(p) == count and p.body() == body
    assert sum(map(len, p)) == len(body) - 4 * count


@pytest.mark.parametrize(
    "count, body",
    [
        (1, b""),  # no room for the length
        (1, struct.pack("<I", 5) + b"abcd"),  # one byte short
        (1, struct.pack("<I", 3) + b"abcd"),  # one byte over
        (2, struct.pack("<2I", 0xFFFFFFFF, 1) + b"a"),  # lengths past the body
        (1 << 40, b"\x00" * 16),  # a count no body can hold (nothing allocated for it)
        (0, b"x"),  # payload bytes without events
    ],
)
def test_malformed_bodies_are_decode_errors(count: int, body: bytes) -> None:
    with pytest.raises(DecodeError):
        PackedPayloads.from_body(count, body)


def test_apply_packed_stores_the_body_whole_and_checks_like_apply_batch() -> None:
    f = RedexFile("packed/a", RedexFileConfig(max_payload=100))
    f.append_batch([b"x", b"y"])
    body = PackedPayloads.of([b"a" * 10, b"b" * 20, b""]).body()
    p = PackedPayloads.from_body(3, body)
    assert f.apply_packed(p, expect_seq=2, term=4) == 2
    assert f._mem.chunks[-1].blob is body  # stored as it came: no object per event
    assert f.read_payloads(0, 10) == ([b"x", b"y", b"a" * 10, b"b" * 20, b""], 0)
    assert f.epochs == ((0, 0), (4, 2)) and f.retained_bytes == 32
    with pytest.raises(OutOfOrder):
        f.apply_packed(p, expect_seq=4, term=4)  # not where the log ends
    with pytest.raises(OutOfOrder):
        f.apply_packed(p, expect_seq=5, term=3)  # a term lower than the last
    with pytest.raises(PayloadTooLarge):
        f.apply_packed(PackedPayloads.of([b"z" * 101, b""]), term=4)
    assert f.next_seq == 5 and f.apply_packed(PackedPayloads.of([]), expect_seq=5) == 5
    f.append_term = 4
    f.append(b"after")  # single appends open a list after a packed batch
    assert f.read_payloads(4, 10) == ([b"", b"after"], 4)


def test_read_packed_joins_frames_lists_and_packed_batches() -> None:
    f = RedexFile("packed/b")
    f.append_batch([b"1", b"22"])
    f.apply_packed(PackedPayloads.of([b"333", b"4444"]), term=0)
    f.append(b"5")
    p, first = f.read_packed(1, 10)
    assert first == 1 and p == [b"22", b"333", b"4444", b"5"]
    assert PackedPayloads.from_body(4, p.body()) == p
    p, first = f.read_packed(0, 10, max_bytes=6)  # 1 + 2 + 3 bytes fit, 4 would not
    assert first == 0 and p == [b"1", b"22", b"333"]
    assert f.read_packed(0, 10, max_bytes=0)[0] == [b"1"]  # at least one event
    assert len(f.read_packed(7, 9)[0]) == 0


def test_persisted_files_take_the_events_as_a_list() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = RedexFile("packed/c", RedexFileConfig(path=tmp, fsync="never"))
        f.apply_packed(PackedPayloads.of([b"a", b"bb"]), expect_seq=0, term=2)
        assert f.read_packed(0, 10)[0] == [b"a", b"bb"]
        f.close()
        g = RedexFile("packed/c", RedexFileConfig(path=tmp, fsync="never"))
        assert g.read_payloads(0, 10) == ([b"a", b"bb"], 0) and g.epochs == ((2, 0),)
        g.close()


@settings(max_examples=300, deadline=None)
@given(
    lens=st.lists(st.sampled_from([0, 1, 64, 100, 1000, 4000]), min_size=1, max_size=2000),
    lo=st.integers(0, 2000),
    span=st.integers(1, 2100),
    max_bytes=st.integers(0, 300_000),
)
def test_a_sized_read_takes_the_events_whose_running_total_fits(
    lens: list[int], lo: int, span: int, max_bytes: int
) -> None:
    """read_packed(max_bytes): at least one event, then while the running total of
    payload bytes stays within max_bytes (the obvious loop), and the size it reports
    is theirs."""
    f = RedexFile("packed/fit")
    f.append_batch([b"x" * n for n in lens])
    lo = lo % len(lens)
    hi = min(len(lens), lo + span)
    count, total = 0, 0
    for n in lens[lo:hi]:
        if count and total + n > max_bytes:
            break
        count, total = count + 1, total + n
        if total > max_bytes:
            break
    got, first = f.read_packed(lo, hi, max_bytes)
    assert first == lo and len(got) == count and got.size == total
    assert got == [b"x" * n for n in lens[lo : lo + count]]

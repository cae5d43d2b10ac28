"""Record format: round trips, every truncation point, every bit flip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.log import record
from netmesh.log.record import ScanEnd

payload_lists = st.lists(st.binary(max_size=300), max_size=20)
batches = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=4), min_size=1, max_size=4)


@given(first=st.integers(0, 2**62), term=st.integers(0, 2**62), payloads=payload_lists)
def test_round_trip(first: int, term: int, payloads: list[bytes]) -> None:
    buf = record.encode_batch(first, payloads, term)
    res = record.scan(buf, expect_seq=first)
    assert res.end is ScanEnd.CLEAN
    assert res.payloads == payloads
    assert res.seqs == list(range(first, first + len(payloads)))
    assert res.consumed == len(buf)
    assert all(b.term == term for b in res.batches)
    assert len(buf) == (record.record_size(payloads) if payloads else 0)


def test_encode_record_matches_batch_of_one() -> None:
    assert record.encode_record(7, b"abc", 2) == record.encode_batch(7, [b"abc"], 2)


def _encode(groups: list[list[bytes]]) -> tuple[bytes, list[int]]:
    """Batches with consecutive seqs and rising terms; the record end offsets."""
    out, ends, seq = b"", [0], 0
    for term, g in enumerate(groups):
        out += record.encode_batch(seq, g, term)
        seq += len(g)
        ends.append(len(out))
    return out, ends


@settings(max_examples=30)
@given(groups=batches)
def test_every_truncation_recovers_the_whole_records_before_it(groups: list[list[bytes]]) -> None:
    buf, ends = _encode(groups)
    for cut in range(len(buf) + 1):
        res = record.scan(buf[:cut], expect_seq=0)
        whole = max(i for i, e in enumerate(ends) if e <= cut)
        assert res.payloads == [p for g in groups[:whole] for p in g], cut
        assert [b.term for b in res.batches] == list(range(whole))
        assert res.consumed == ends[whole]
        assert res.end is (ScanEnd.CLEAN if cut == ends[whole] else ScanEnd.TORN), cut


def test_zero_filled_tail_is_torn_not_corrupt() -> None:
    buf = record.encode_batch(0, [b"a", b"b"]) + bytes(100)
    res = record.scan(buf, expect_seq=0)
    assert res.end is ScanEnd.TORN and res.payloads == [b"a", b"b"]


def test_last_record_with_unwritten_sectors_is_torn() -> None:
    """The blocks of an unfinished write read back as zeros: a tear, not corruption."""
    first = record.encode_batch(0, [b"x" * 100])
    last = bytearray(record.encode_batch(1, [bytes(range(256)) * 8], 1))
    buf = bytearray(first + last)
    sector = (len(first) + record.RECORD_HEADER_SIZE + 511) // 512 * 512
    buf[sector:] = bytes(len(buf) - sector)  # the blocks from there on never written
    res = record.scan(bytes(buf), expect_seq=0)
    assert res.end is ScanEnd.TORN and res.payloads == [b"x" * 100]
    assert res.consumed == len(first)


def test_zeros_that_start_off_a_block_boundary_are_damage() -> None:
    """Found by hypothesis: a bit flip that leaves a small body all zeros is not a tear."""
    buf = bytearray(record.encode_batch(0, [bytes(4)]))
    buf[record.RECORD_HEADER_SIZE] ^= 0x04  # the length 4 -> 0: the body reads all zeros
    assert record.scan(bytes(buf), expect_seq=0).end is ScanEnd.CORRUPT
    middle = bytearray(
        record.encode_batch(0, [b"x" * 100]) + record.encode_batch(1, [bytes(range(256)) * 8], 1)
    )
    middle[1024:1536] = bytes(512)  # one zero sector with written bytes after it
    assert record.scan(bytes(middle), expect_seq=0).end is ScanEnd.CORRUPT


def test_complete_last_record_with_a_bad_byte_is_corrupt_not_torn() -> None:
    """Issue 10 §7: a whole last record whose payload changed is damage to an event that
    may have been acknowledged (fsync="batch"): LogCorrupt, never dropped as torn."""
    buf = bytearray(record.encode_batch(0, [b"one"]) + record.encode_batch(1, [b"two"], 1))
    buf[-1] ^= 0x01
    res = record.scan(bytes(buf), expect_seq=0)
    assert res.end is ScanEnd.CORRUPT and "body checksum" in res.reason
    assert res.payloads == [b"one"]


@settings(max_examples=15)
@given(groups=batches)
def test_every_bit_flip_is_detected_as_corruption(groups: list[list[bytes]]) -> None:
    buf, _ = _encode(groups)
    for i in range(len(buf)):
        for bit in range(8):
            bad = bytearray(buf)
            bad[i] ^= 1 << bit
            res = record.scan(bytes(bad), expect_seq=0)
            assert res.end is ScanEnd.CORRUPT, (i, bit)
            # the records before the damaged one are intact and nothing else is returned
            got = res.payloads
            assert got == [p for g in groups for p in g][: len(got)]


def test_sequence_gap_is_corrupt() -> None:
    buf = record.encode_batch(0, [b"a"]) + record.encode_batch(2, [b"c"])
    res = record.scan(buf, expect_seq=0)
    assert res.end is ScanEnd.CORRUPT and "expected 1" in res.reason


def test_term_going_backwards_is_corrupt() -> None:
    buf = record.encode_batch(0, [b"a"], 5) + record.encode_batch(1, [b"b"], 4)
    res = record.scan(buf, expect_seq=0)
    assert res.end is ScanEnd.CORRUPT and "term 4 after term 5" in res.reason
    assert record.scan(buf[: len(buf) // 2 + 20], min_term=6).end is ScanEnd.CORRUPT


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", "short file header"),
        (b"XXXX\x01\0\0\0", "bad magic"),
        (b"NMRX\x01\0\0\0", "unsupported version 1"),
    ],
)
def test_file_header_checks(head: bytes, reason: str) -> None:
    result = record.check_file_header(head)
    assert result is not None and reason in result
    assert record.check_file_header(record.FILE_HEADER) is None


@settings(max_examples=60)
@given(groups=batches, cut=st.integers(0, 10_000), flip=st.integers(-1, 10_000))
def test_scan_index_agrees_with_scan(groups: list[list[bytes]], cut: int, flip: int) -> None:
    """The array-based index scan sees exactly what the full scan sees, damaged or not."""
    buf, _ = _encode(groups)
    data = bytearray(buf[: min(cut, len(buf))] if cut < len(buf) else buf)
    if 0 <= flip < len(data):
        data[flip] ^= 0x10
    full = record.scan(bytes(data), expect_seq=0)
    idx = record.scan_index(bytes(data), expect_seq=0)
    assert (idx.end, idx.consumed, idx.reason) == (full.end, full.consumed, full.reason)
    assert list(idx.first_seqs) == [b.first_seq for b in full.batches]
    assert list(idx.offsets) == [b.offset for b in full.batches]
    assert list(idx.terms) == [b.term for b in full.batches]
    assert list(idx.lengths) == [len(p) for p in full.payloads]
    for b in full.batches:
        assert record.peek_first_seq(bytes(data[b.offset : b.offset + 40])) == b.first_seq

"""Record format: round trips, every truncation point, every bit flip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.log import record
from netmesh.log.record import ScanEnd

payload_lists = st.lists(st.binary(max_size=300), max_size=20)


@given(first=st.integers(0, 2**63), payloads=payload_lists)
def test_round_trip(first: int, payloads: list[bytes]) -> None:
    buf = record.encode_batch(first, payloads)
    res = record.scan(buf, expect_seq=first)
    assert res.end is ScanEnd.CLEAN
    assert res.payloads == payloads
    assert res.seqs == list(range(first, first + len(payloads)))
    assert res.consumed == len(buf)


def test_encode_record_matches_batch_of_one() -> None:
    assert record.encode_record(7, b"abc") == record.encode_batch(7, [b"abc"])


def _boundaries(payloads: list[bytes]) -> list[int]:
    ends, pos = [0], 0
    for p in payloads:
        pos += record.RECORD_HEADER_SIZE + len(p)
        ends.append(pos)
    return ends


@settings(max_examples=30)
@given(payloads=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6))
def test_every_truncation_recovers_the_whole_records_before_it(payloads: list[bytes]) -> None:
    buf = record.encode_batch(0, payloads)
    ends = _boundaries(payloads)
    for cut in range(len(buf) + 1):
        res = record.scan(buf[:cut], expect_seq=0)
        whole = max(i for i, e in enumerate(ends) if e <= cut)
        assert res.payloads == payloads[:whole], cut
        assert res.consumed == ends[whole]
        assert res.end is (ScanEnd.CLEAN if cut == ends[whole] else ScanEnd.TORN), cut


def test_zero_filled_tail_is_torn_not_corrupt() -> None:
    buf = record.encode_batch(0, [b"a", b"b"]) + bytes(100)
    res = record.scan(buf, expect_seq=0)
    assert res.end is ScanEnd.TORN and res.payloads == [b"a", b"b"]


@settings(max_examples=15)
@given(payloads=st.lists(st.binary(min_size=1, max_size=24), min_size=2, max_size=4))
def test_every_bit_flip_is_detected(payloads: list[bytes]) -> None:
    buf = record.encode_batch(0, payloads)
    last_start = _boundaries(payloads)[-2]
    for i in range(len(buf)):
        for bit in range(8):
            bad = bytearray(buf)
            bad[i] ^= 1 << bit
            res = record.scan(bytes(bad), expect_seq=0)
            assert res.end is not ScanEnd.CLEAN, (i, bit)
            # the records before the damaged one are intact and nothing else is returned
            assert res.payloads == payloads[: len(res.payloads)]
            if i < last_start:
                assert res.end is ScanEnd.CORRUPT, (i, bit)


def test_sequence_gap_is_corrupt() -> None:
    buf = record.encode_batch(0, [b"a"]) + record.encode_batch(2, [b"c"])
    res = record.scan(buf, expect_seq=0)
    assert res.end is ScanEnd.CORRUPT and "expected 1" in res.reason


@pytest.mark.parametrize(
    ("head", "reason"),
    [(b"", "short file header"), (b"XXXX\x01\0\0\0", "bad magic"), (b"NMRX\x09\0\0\0", "version")],
)
def test_file_header_checks(head: bytes, reason: str) -> None:
    result = record.check_file_header(head)
    assert result is not None and reason in result
    assert record.check_file_header(record.FILE_HEADER) is None

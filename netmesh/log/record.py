"""Event-file record format (pure: bytes in, records out).

A segment file is an 8-byte file header followed by **batch records**, one per
``append_batch`` (or per replicated batch)::

    file header  : magic b"NMRX" | version u8 (=2) | 3 reserved zero bytes
    batch record : header (40 B) | lengths u32[count] | payloads, back to back
    header       : body_len u32 | first_seq u64 | term u64 | time_ns u64 | count u32
                   | body_crc u32 | header_crc u32

All integers little-endian. ``body_crc`` is CRC32C of the body (lengths and payloads);
``header_crc`` is CRC32C of the 36 header bytes before it, so a flipped bit in a length,
seq or term is detected before the length is trusted. ``time_ns`` is the append time
(Unix nanoseconds; retention by age reads it). Every batch carries the **term**
of the leader that wrote it, so the log describes itself: the epochs (term, first seq)
of a log are rebuilt from its records on open, and no crash between a log write and a
hard-state save can mislabel events (Raft §5.3 stores a term with every entry; we store
it once per batch, whose events all share one term).

One CRC, one ``struct`` call for the lengths and one join per batch: the cost per event
is a slice, not a header (DESIGN.md: hot paths work per batch).

Scanning rules (``scan``), applied from the start of a buffer:

* fewer bytes left than a header -> **torn tail** (a write cut short);
* header CRC wrong -> torn tail if every remaining byte is zero (a zero-filled tail
  left by a crash), otherwise **corrupt**;
* body extends past the end of the buffer -> torn tail;
* body CRC wrong on the last record -> torn tail only if its bytes from a 512-byte
  boundary to its end are all zeros (the trailing blocks of an unfinished write read
  back as zeros; etcd's WAL tests sectors the same way), otherwise **corrupt**: a
  complete record whose bytes changed after it was written is damage to an event that
  may have been acknowledged, never a tear;
* body CRC wrong on an earlier record -> corrupt;
* first seq not exactly the previous record's end, or a term lower than the previous
  record's -> corrupt.

A torn tail is truncated by the caller and counted; corruption is never skipped.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from enum import Enum
from itertools import accumulate

from crc32c import crc32c

FILE_MAGIC = b"NMRX"
FILE_VERSION = 2
FILE_HEADER = FILE_MAGIC + bytes([FILE_VERSION, 0, 0, 0])
FILE_HEADER_SIZE = len(FILE_HEADER)

_HEAD = struct.Struct("<IQQQII")  # body_len, first_seq, term, time_ns, count, body_crc
_HEAD_CRC = struct.Struct("<I")
_LEN = struct.Struct("<I")
RECORD_HEADER_SIZE = _HEAD.size + _HEAD_CRC.size  # 40
LENGTH_SIZE = 4
MAX_BODY = (1 << 32) - 1
SECTOR = 512
_BIG_ENDIAN = sys.byteorder == "big"  # arrays are native-endian; the format is little


class ScanEnd(Enum):
    """How a scan stopped."""

    CLEAN = "clean"  # the buffer ended exactly after a whole record
    TORN = "torn"  # an incomplete last record; truncate at ``consumed``
    CORRUPT = "corrupt"  # a bad record; see ``reason``


@dataclass(frozen=True)
class Batch:
    """One decoded batch record: ``offset`` in the scanned buffer, ``size`` in bytes,
    ``lengths`` of its payloads; ``payloads`` is empty when scanned without them."""

    first_seq: int
    term: int
    time_ns: int
    offset: int
    size: int
    lengths: tuple[int, ...]
    payloads: list[bytes]

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.lengths)


@dataclass
class ScanResult:
    """Records found by :func:`scan`.

    ``batches`` in file order; ``consumed`` is the offset just after the last good
    record; for TORN and CORRUPT, ``reason`` says what failed at offset ``consumed``.
    """

    batches: list[Batch] = field(default_factory=list)
    consumed: int = 0
    end: ScanEnd = ScanEnd.CLEAN
    reason: str = ""

    @property
    def payloads(self) -> list[bytes]:
        return [p for b in self.batches for p in b.payloads]

    @property
    def seqs(self) -> list[int]:
        return [s for b in self.batches for s in range(b.first_seq, b.end_seq)]


def encode_record(seq: int, payload: bytes, term: int = 0, time_ns: int = 0) -> bytes:
    """One event as a batch record of one."""
    return encode_batch(seq, [payload], term, time_ns)


def encode_batch(first_seq: int, payloads: list[bytes], term: int = 0, time_ns: int = 0) -> bytes:
    """Frame ``payloads`` (seqs ``first_seq``, ``first_seq + 1``, ...) written in
    ``term`` at ``time_ns`` as batch records: one record, or several when the body
    would pass 4 GiB. An empty list encodes to ``b""``."""
    if not payloads:
        return b""
    n = len(payloads)
    lens = list(map(len, payloads))
    body_len = LENGTH_SIZE * n + sum(lens)
    if body_len > MAX_BODY:
        half = n // 2
        return encode_batch(first_seq, payloads[:half], term, time_ns) + encode_batch(
            first_seq + half, payloads[half:], term, time_ns
        )
    body = struct.pack(f"<{n}I", *lens) + b"".join(payloads)
    head = _HEAD.pack(body_len, first_seq, term, time_ns, n, crc32c(body))
    return head + _HEAD_CRC.pack(crc32c(head)) + body


def slice_record(
    buf: bytes | memoryview, offset: int, offs: list[int], lo: int, hi: int
) -> list[bytes | memoryview]:
    """Events ``lo <= i < hi`` (indices within the record) of the record at ``offset``
    in ``buf``, which :func:`scan` or :func:`scan_index` checked, framed as one record
    of their own (first seq ``first_seq + lo``, the same term and time):
    ``[header, lengths, payloads]``, the last two slices of ``buf`` (no copy; join
    them or write them in order). ``offs``: the prefix sums of the record's lengths
    (``offs[0] == 0``, count + 1 items).

    The body CRC is computed over the slice (C, no object per event), so a slice of a
    checked record is as trustworthy as the record. Raises ValueError for an empty or
    out-of-range slice."""
    mv = memoryview(buf)
    _, first, term, time_ns, n, _ = _HEAD.unpack_from(mv, offset)
    if not 0 <= lo < hi <= n or len(offs) != n + 1:
        raise ValueError(f"bad slice [{lo}, {hi}) of a record of {n} events")
    body = offset + RECORD_HEADER_SIZE
    lens_end = body + LENGTH_SIZE * n
    lens = mv[body + LENGTH_SIZE * lo : body + LENGTH_SIZE * hi]
    data = mv[lens_end + offs[lo] : lens_end + offs[hi]]
    bcrc = crc32c(data, crc32c(lens))
    head = _HEAD.pack(len(lens) + len(data), first + lo, term, time_ns, hi - lo, bcrc)
    return [head + _HEAD_CRC.pack(crc32c(head)), lens, data]


def record_size(payloads: list[bytes]) -> int:
    """Bytes :func:`encode_batch` produces for ``payloads`` in one record."""
    return RECORD_HEADER_SIZE + LENGTH_SIZE * len(payloads) + sum(map(len, payloads))


def check_file_header(buf: bytes | memoryview) -> str | None:
    """None if ``buf`` starts with a valid file header, else the reason."""
    if len(buf) < FILE_HEADER_SIZE:
        return "short file header"
    if bytes(buf[:4]) != FILE_MAGIC:
        return "bad magic"
    if buf[4] != FILE_VERSION:
        return f"unsupported version {buf[4]} (this netmesh reads version {FILE_VERSION})"
    return None


def _has_zero_sector(mv: memoryview, start: int, end: int) -> bool:
    """True if the record's bytes from some 512-byte boundary (a buffer offset, which is
    the file offset in a recovery scan) in [start, end) to its end are all zeros: the
    trailing blocks of an unfinished write. Zeros that begin off a block boundary are
    damage, not a tear."""
    a = -(-start // SECTOR) * SECTOR  # the first boundary at or after start
    return a < end and not any(mv[a:end])


def scan(
    buf: bytes | memoryview,
    start: int = 0,
    expect_seq: int | None = None,
    min_term: int = 0,
    payloads: bool = True,
) -> ScanResult:
    """Decode batch records from ``buf[start:]``; stop at the first problem (see the
    module rules). ``expect_seq``: the seq the first record must start at (None accepts
    any); ``min_term``: the lowest term the first record may carry; ``payloads=False``
    checks every byte but keeps only the lengths (rebuilding an index).
    """
    want = payloads
    mv = memoryview(buf)
    total = len(mv)
    pos = start
    res = ScanResult(consumed=start)
    nxt = expect_seq
    term_floor = min_term
    head_size = _HEAD.size
    while pos < total:
        if total - pos < RECORD_HEADER_SIZE:
            res.end, res.reason = ScanEnd.TORN, "partial header"
            return res
        (hcrc,) = _HEAD_CRC.unpack_from(mv, pos + head_size)
        if crc32c(mv[pos : pos + head_size]) != hcrc:
            if not any(mv[pos:]):
                res.end, res.reason = ScanEnd.TORN, "zero-filled tail"
            else:
                res.end, res.reason = ScanEnd.CORRUPT, "header checksum mismatch"
            return res
        body_len, first, term, time_ns, count, bcrc = _HEAD.unpack_from(mv, pos)
        body = pos + RECORD_HEADER_SIZE
        end = body + body_len
        if end > total:
            res.end, res.reason = ScanEnd.TORN, "partial body"
            return res
        if crc32c(mv[body:end]) != bcrc:
            torn = end == total and _has_zero_sector(mv, body, end)
            res.end = ScanEnd.TORN if torn else ScanEnd.CORRUPT
            res.reason = "body checksum mismatch" + (" (unwritten sectors)" if torn else "")
            return res
        if nxt is not None and first != nxt:
            res.end, res.reason = ScanEnd.CORRUPT, f"batch starts at seq {first}, expected {nxt}"
            return res
        if term < term_floor:
            res.end, res.reason = ScanEnd.CORRUPT, f"term {term} after term {term_floor}"
            return res
        lens_end = body + LENGTH_SIZE * count
        if lens_end > end:
            res.end, res.reason = ScanEnd.CORRUPT, f"{count} lengths overrun the body"
            return res
        lens = struct.unpack_from(f"<{count}I", mv, body)
        offs = list(accumulate(lens, initial=0))
        if lens_end + offs[-1] != end:
            res.end, res.reason = ScanEnd.CORRUPT, "lengths do not add up to the body"
            return res
        got: list[bytes] = []
        if want:
            raw = bytes(mv[lens_end:end])
            got = list(map(raw.__getitem__, map(slice, offs[:-1], offs[1:])))
        res.batches.append(Batch(first, term, time_ns, pos, end - pos, lens, got))
        nxt = first + count
        term_floor = term
        pos = end
        res.consumed = pos
    return res


@dataclass
class IndexScan:
    """What :func:`scan_index` found: per record ``first_seqs``, ``offsets``, ``terms``,
    ``times`` (parallel), every event's length in ``lengths``; ``consumed``, ``end`` and
    ``reason`` as in :class:`ScanResult`."""

    first_seqs: array[int] = field(default_factory=lambda: array("Q"))
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    terms: array[int] = field(default_factory=lambda: array("Q"))
    times: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("I"))
    consumed: int = 0
    end: ScanEnd = ScanEnd.CLEAN
    reason: str = ""


def scan_index(
    buf: bytes | memoryview, start: int = 0, expect_seq: int | None = None, min_term: int = 0
) -> IndexScan:
    """:func:`scan` for rebuilding an index: the same checks on every byte, but no
    payload objects and no object per record (arrays), so a log of millions of small
    records reopens in a fraction of a second per million."""
    mv = memoryview(buf)
    total = len(mv)
    pos = start
    out = IndexScan(consumed=start)
    nxt = expect_seq
    floor = min_term
    head_size = _HEAD.size
    unpack_head, unpack_crc = _HEAD.unpack_from, _HEAD_CRC.unpack_from
    unpack_len = _LEN.unpack_from
    firsts, offsets, terms, times = out.first_seqs, out.offsets, out.terms, out.times
    lengths = out.lengths
    while pos < total:
        if total - pos < RECORD_HEADER_SIZE:
            out.end, out.reason = ScanEnd.TORN, "partial header"
            return out
        if crc32c(mv[pos : pos + head_size]) != unpack_crc(mv, pos + head_size)[0]:
            if not any(mv[pos:]):
                out.end, out.reason = ScanEnd.TORN, "zero-filled tail"
            else:
                out.end, out.reason = ScanEnd.CORRUPT, "header checksum mismatch"
            return out
        body_len, first, term, time_ns, count, bcrc = unpack_head(mv, pos)
        body = pos + RECORD_HEADER_SIZE
        end = body + body_len
        if end > total:
            out.end, out.reason = ScanEnd.TORN, "partial body"
            return out
        if crc32c(mv[body:end]) != bcrc:
            torn = end == total and _has_zero_sector(mv, body, end)
            out.end = ScanEnd.TORN if torn else ScanEnd.CORRUPT
            out.reason = "body checksum mismatch" + (" (unwritten sectors)" if torn else "")
            return out
        if (nxt is not None and first != nxt) or term < floor:
            why = (
                f"batch starts at seq {first}, expected {nxt}"
                if nxt is not None and (first != nxt)
                else f"term {term} after term {floor}"
            )
            out.end, out.reason = ScanEnd.CORRUPT, why
            return out
        lens_end = body + LENGTH_SIZE * count
        if lens_end > end:
            out.end, out.reason = ScanEnd.CORRUPT, f"{count} lengths overrun the body"
            return out
        if count == 1:  # the single-event record: no slice, no sum
            if unpack_len(mv, body)[0] != end - lens_end:
                out.end, out.reason = ScanEnd.CORRUPT, "lengths do not add up to the body"
                return out
            lengths.append(end - lens_end)
        else:
            n0 = len(lengths)
            lengths.frombytes(mv[body:lens_end])
            if _BIG_ENDIAN:
                tail = lengths[n0:]
                tail.byteswap()
                lengths[n0:] = tail
            if lens_end + sum(lengths[n0:]) != end:
                del lengths[n0:]
                out.end, out.reason = ScanEnd.CORRUPT, "lengths do not add up to the body"
                return out
        firsts.append(first)
        offsets.append(pos)
        terms.append(term)
        times.append(time_ns)
        nxt = first + count
        floor = term
        pos = end
        out.consumed = pos
    return out


def peek_first_seq(head: bytes) -> int | None:
    """The first seq of the record whose header is ``head``, or None if the header is
    short or fails its CRC (used to check an index against the records)."""
    if len(head) < RECORD_HEADER_SIZE:
        return None
    if crc32c(head[: _HEAD.size]) != _HEAD_CRC.unpack_from(head, _HEAD.size)[0]:
        return None
    return int(_HEAD.unpack_from(head)[1])

"""Event-file record format (pure: bytes in, records out).

A segment file is a 8-byte file header followed by records::

    file header : magic b"NMRX" | version u8 (=1) | 3 reserved zero bytes
    record      : length u32 | seq u64 | payload_crc u32 | header_crc u32 | payload

All integers little-endian. ``payload_crc`` is CRC32C of the payload; ``header_crc`` is
CRC32C of the 16 header bytes before it, so a flipped bit in a length or seq field is
detected before the length is trusted.

Scanning rules (``scan``), applied from the start of a buffer:

* fewer bytes left than a header -> **torn tail** (a write cut short);
* header CRC wrong -> torn tail if every remaining byte is zero (a zero-filled tail
  left by a crash), otherwise **corrupt**;
* payload extends past the end of the buffer -> torn tail;
* payload CRC wrong -> torn tail if the record ends exactly at the end of the buffer
  (the last write was partial), otherwise corrupt;
* seq not exactly previous + 1 -> corrupt.

A torn tail is truncated by the caller and counted; corruption is never skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from crc32c import crc32c

FILE_MAGIC = b"NMRX"
FILE_VERSION = 1
FILE_HEADER = FILE_MAGIC + bytes([FILE_VERSION, 0, 0, 0])
FILE_HEADER_SIZE = len(FILE_HEADER)

_HEAD = struct.Struct("<IQI")  # length, seq, payload_crc
_HEAD_CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = _HEAD.size + _HEAD_CRC.size  # 20
MAX_RECORD_PAYLOAD = (1 << 32) - 1


class ScanEnd(Enum):
    """How a scan stopped."""

    CLEAN = "clean"  # the buffer ended exactly after a whole record
    TORN = "torn"  # an incomplete last record; truncate at ``consumed``
    CORRUPT = "corrupt"  # a bad record that is not the tail; see ``reason``


@dataclass(frozen=True)
class ScanResult:
    """Records found by :func:`scan`.

    ``seqs``/``payloads`` are parallel lists; ``consumed`` is the offset just after the
    last good record; for CORRUPT, ``reason`` says what failed at offset ``consumed``.
    """

    seqs: list[int]
    payloads: list[bytes]
    consumed: int
    end: ScanEnd
    reason: str = ""


def encode_record(seq: int, payload: bytes) -> bytes:
    """One framed record."""
    return encode_batch(seq, [payload])


def encode_batch(first_seq: int, payloads: list[bytes]) -> bytes:
    """Frame ``payloads`` with consecutive seqs starting at ``first_seq``, as one buffer."""
    size = sum(len(p) for p in payloads) + RECORD_HEADER_SIZE * len(payloads)
    out = bytearray(size)
    pos = 0
    pack_head = _HEAD.pack_into
    pack_crc = _HEAD_CRC.pack_into
    for i, p in enumerate(payloads):
        n = len(p)
        pack_head(out, pos, n, first_seq + i, crc32c(p))
        pack_crc(out, pos + 16, crc32c(out[pos : pos + 16]))
        pos += RECORD_HEADER_SIZE
        out[pos : pos + n] = p
        pos += n
    return bytes(out)


def check_file_header(buf: bytes | memoryview) -> str | None:
    """None if ``buf`` starts with a valid file header, else the reason."""
    if len(buf) < FILE_HEADER_SIZE:
        return "short file header"
    if bytes(buf[:4]) != FILE_MAGIC:
        return "bad magic"
    if buf[4] != FILE_VERSION:
        return f"unsupported version {buf[4]}"
    return None


def scan(buf: bytes | memoryview, start: int = 0, expect_seq: int | None = None) -> ScanResult:
    """Decode records from ``buf[start:]``; stop at the first problem (see module rules).

    ``expect_seq``: the seq the first record must carry (None accepts any).
    """
    mv = memoryview(buf)
    total = len(mv)
    pos = start
    seqs: list[int] = []
    payloads: list[bytes] = []
    nxt = expect_seq
    while pos < total:
        if total - pos < RECORD_HEADER_SIZE:
            return ScanResult(seqs, payloads, pos, ScanEnd.TORN, "partial header")
        head = mv[pos : pos + 16]
        (hcrc,) = _HEAD_CRC.unpack_from(mv, pos + 16)
        if crc32c(head) != hcrc:
            if not any(mv[pos:]):
                return ScanResult(seqs, payloads, pos, ScanEnd.TORN, "zero-filled tail")
            return ScanResult(seqs, payloads, pos, ScanEnd.CORRUPT, "header checksum mismatch")
        length, seq, pcrc = _HEAD.unpack_from(mv, pos)
        body = pos + RECORD_HEADER_SIZE
        end = body + length
        if end > total:
            return ScanResult(seqs, payloads, pos, ScanEnd.TORN, "partial payload")
        payload = mv[body:end]
        if crc32c(payload) != pcrc:
            kind = ScanEnd.TORN if end == total else ScanEnd.CORRUPT
            return ScanResult(seqs, payloads, pos, kind, "payload checksum mismatch")
        if nxt is not None and seq != nxt:
            return ScanResult(seqs, payloads, pos, ScanEnd.CORRUPT, f"seq {seq}, expected {nxt}")
        seqs.append(seq)
        payloads.append(bytes(payload))
        nxt = seq + 1
        pos = end
    return ScanResult(seqs, payloads, pos, ScanEnd.CLEAN)

"""Geometry and framing of a single-producer single-consumer byte ring (pure).

Shared block = 512-byte header + ``capacity`` data bytes (capacity a multiple of 8).
The header is an array of native u64 words; each word the other side polls sits on
its own 64-byte line so producer and consumer do not false-share::

    word  0 MAGIC            word  1 CAPACITY  word  2 WAKE_ADDR (consumer's wake socket)
    word  8 HEAD             (bytes ever written; only the producer stores it)
    word 16 TAIL             (bytes ever consumed; only the consumer stores it)
    word 24 CONSUMER_WAITING (consumer sleeps on the data semaphore or its wake socket)
    word 32 PRODUCER_WAITING (producer sleeps on the space semaphore)
    word 33 ACK_WAITING      (producer sleeps on the space semaphore for an ack: flush)
    word 40 PRODUCER_CLOSED  word 48 CONSUMER_CLOSED
    word 56 ACK_SEQ  word 57 ACK_COUNT  word 58 ACK_REJECTED  word 59 ACK_REASON
                                         (consumer -> producer acknowledgements)

HEAD and TAIL only grow, so ``used = head - tail`` never needs a wrap flag and a
position's offset in the data area is ``pos % capacity``.

Data is a sequence of **frames**, one per ``put_batch`` chunk, each 8-byte aligned::

    frame: total u32 | count u32 | count x length u32 | payloads... | pad to 8

``total`` covers the whole frame including padding (whose bytes are unspecified: a
writer may leave what the ring held there). The part between the 8-byte frame head
and the padding, ``lengths u32[count] | payloads``, is byte for byte the **body of a
log batch record** (:mod:`netmesh.log.record`), so a frame can become a record
without re-encoding. A frame may wrap around the end of
the data area (it is then copied in two pieces); the 8-byte frame head never wraps
because frames and capacity are 8-aligned. The producer publishes HEAD only after the
whole frame is in place, so a consumer never sees a partial frame, even if the
producer dies mid-write.
"""

from __future__ import annotations

import struct
from array import array
from itertools import accumulate, pairwise

MAGIC = 0x4E4D52494E470001  # "NMRING" + version 1
HEADER_BYTES = 512
W_MAGIC, W_CAPACITY, W_WAKE_ADDR = 0, 1, 2
W_HEAD, W_TAIL = 8, 16
W_CONSUMER_WAITING, W_PRODUCER_WAITING, W_ACK_WAITING = 24, 32, 33
W_PRODUCER_CLOSED, W_CONSUMER_CLOSED = 40, 48
W_ACK_SEQ, W_ACK_COUNT, W_ACK_REJECTED, W_ACK_REASON = 56, 57, 58, 59

FRAME_HEAD = struct.Struct("<II")
ALIGN = 8
MIN_CAPACITY = 4096


def encode_wake_addr(addr: bytes) -> int:
    """A Linux abstract socket address (``b"\\0"`` + up to 7 bytes, e.g. an autobound
    ``b"\\x000fb07"``) as the WAKE_ADDR word: length in the top byte. ValueError for
    other addresses."""
    if not addr.startswith(b"\0") or not 2 <= len(addr) <= 8:
        raise ValueError(f"not a short abstract socket address: {addr!r}")
    return len(addr) << 56 | int.from_bytes(addr[1:], "little")


def decode_wake_addr(word: int) -> bytes:
    """Inverse of :func:`encode_wake_addr` (the word is non-zero)."""
    n = word >> 56
    return b"\0" + (word & ((1 << 56) - 1)).to_bytes(n - 1, "little")


def align(n: int) -> int:
    """Round ``n`` up to the frame alignment."""
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def frame_size(count: int, payload_bytes: int) -> int:
    """Bytes a frame of ``count`` payloads totalling ``payload_bytes`` occupies."""
    return align(FRAME_HEAD.size + 4 * count + payload_bytes)


def max_frame(capacity: int) -> int:
    """Largest frame a ring accepts: half its capacity, so two frames always fit."""
    return capacity // 2


def free_bytes(head: int, tail: int, capacity: int) -> int:
    """Bytes the producer may still write."""
    used = head - tail
    if not 0 <= used <= capacity:
        raise ValueError(f"inconsistent ring indices head={head} tail={tail} cap={capacity}")
    return capacity - used


def split(pos: int, n: int, capacity: int) -> tuple[int, int, int]:
    """Where ``n`` bytes at stream position ``pos`` go: (offset, first_len, second_len).

    The second piece, if any, starts at offset 0 of the data area.
    """
    off = pos % capacity
    first = min(n, capacity - off)
    return off, first, n - first


def encode_frame(payloads: list[bytes]) -> bytes:
    """One frame holding ``payloads`` in order."""
    lens = array("I", map(len, payloads))
    body = b"".join(payloads)
    total = align(FRAME_HEAD.size + 4 * len(lens) + len(body))
    pad = total - FRAME_HEAD.size - 4 * len(lens) - len(body)
    return b"".join((FRAME_HEAD.pack(total, len(lens)), lens.tobytes(), body, bytes(pad)))


def encode_single(payload: bytes) -> bytes:
    """A frame holding one payload (the fast path of ``put``)."""
    n = len(payload)
    total = align(12 + n)
    return b"".join((SINGLE_HEAD.pack(total, 1, n), payload, bytes(total - 12 - n)))


SINGLE_HEAD = struct.Struct("<III")  # total, count (= 1), length of the one payload


class StructCache:
    """Compiled ``struct.Struct`` per length signature, for one C call per frame.

    A frame's payloads, given their lengths, unpack with one ``Struct("<64s64s...")``
    (each a ``bytes``) or pack from the payloads the same way, instead of a Python
    slice per event. ``key`` is the frame's lengths array as bytes (what the frame
    itself holds). A struct is built on a signature's **second** sighting, so batches
    whose lengths never repeat cost one dict look-up each, not a compile; at most
    ``max_entries`` structs are kept (all dropped when full) and frames of more than
    ``max_count`` records are never compiled.
    """

    def __init__(self, max_entries: int = 128, max_count: int = 4096) -> None:
        self.max_entries = max_entries
        self.max_count = max_count
        self.structs: dict[bytes, struct.Struct] = {}
        self._seen: set[bytes] = set()

    def get(self, key: bytes) -> struct.Struct | None:
        """The struct for lengths ``key`` (u32 array bytes), or None on its first sighting."""
        st = self.structs.get(key)
        if st is not None:
            return st
        if key not in self._seen:
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
            self._seen.add(key)
            return None
        lens = memoryview(key).cast("I")
        if len(lens) > self.max_count:
            return None
        if len(self.structs) >= self.max_entries:
            self.structs.clear()
        st = self.structs[key] = struct.Struct("<" + "".join(map("{}s".format, lens)))
        return st


def decode_frame(frame: bytes) -> list[bytes]:
    """Payloads of one whole frame (as produced by ``encode_frame``).

    Raises ValueError if the frame's own counts do not add up (never for frames this
    module wrote; a check against shared-memory scribbles).
    """
    total, count = FRAME_HEAD.unpack_from(frame, 0)
    start = FRAME_HEAD.size + 4 * count
    if total != len(frame) or start > total:
        raise ValueError(f"bad frame: total={total} count={count} len={len(frame)}")
    lens = memoryview(frame)[FRAME_HEAD.size : start].cast("I")
    if count == 1:
        end = start + lens[0]
        if end > total:
            raise ValueError("bad frame: payload overruns frame")
        return [frame[start:end]]
    ends = list(accumulate(lens, initial=start))
    if ends[-1] > total:
        raise ValueError("bad frame: payloads overrun frame")
    return [frame[a:b] for a, b in pairwise(ends)]

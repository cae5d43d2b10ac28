"""On-disk format of a channel's replication hard state (pure).

``magic b"NMHS" | version u8 (=1) | length u32 | crc32c u32 | msgpack body``; the body
is ``[term, voted_for or None, [[term, start_seq], ...]]``, with a fourth element
``true`` while the node is recovering (older files have three). ``decode`` checks every
byte and type and raises only DecodeError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack
from crc32c import crc32c

from netmesh.errors import DecodeError

#: Bounds of terms and seqs everywhere (wire, file, hard state): 2**62, so both fit
#: msgpack's int64 and every sum of two stays below 2**63.
MAX_TERM = 1 << 62
MAX_SEQ = 1 << 62

#: (term, first seq): the leader of ``term`` wrote the events from ``first seq`` on.
Epoch = tuple[int, int]


@dataclass(frozen=True)
class HardState:
    """What must survive a restart: pass it back as ``hard_state=`` with the log's tail.

    ``recovering``: saved by a node that started without its state and has not yet
    learned the current one (the coordinator's "Lost state"); a restart before it did
    must not take the term it adopted meanwhile for an intact history.
    """

    term: int = 0
    voted_for: int | None = None
    epochs: tuple[Epoch, ...] = ()
    recovering: bool = False


MAGIC = b"NMHS"
VERSION = 1
_HEAD = struct.Struct("<4sBII")
_MAX_U64 = (1 << 64) - 1


def encode(state: HardState) -> bytes:
    fields: list[object] = [state.term, state.voted_for, [list(e) for e in state.epochs]]
    if state.recovering:
        fields.append(True)
    body: bytes = msgpack.packb(fields)
    return _HEAD.pack(MAGIC, VERSION, len(body), crc32c(body)) + body


def decode(data: bytes) -> HardState:
    if len(data) < _HEAD.size:
        raise DecodeError(f"hard state of {len(data)} bytes is shorter than its header")
    magic, version, length, crc = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise DecodeError(f"bad hard state header {magic!r} v{version}")
    body = data[_HEAD.size :]
    if len(body) != length or crc32c(body) != crc:
        raise DecodeError("hard state length or checksum mismatch")
    try:
        fields = msgpack.unpackb(body)
        if type(fields) is not list or fields[3:] not in ([], [True]):
            raise ValueError("a hard state body is [term, vote, epochs(, true)]")
        recovering = len(fields) == 4
        term, voted_for, epochs = fields[:3]
        epochs = tuple((int(t), int(s)) for t, s in epochs)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"bad hard state body: {exc}") from None
    if not (_u64(term) and term <= MAX_TERM) or not (voted_for is None or _u64(voted_for)):
        raise DecodeError("hard state term or vote out of range")
    if any(not (_u64(t) and t <= MAX_TERM and _u64(s) and s <= MAX_SEQ) for t, s in epochs):
        raise DecodeError("hard state epoch out of range")
    return HardState(term, voted_for, epochs, recovering)


def _u64(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_U64

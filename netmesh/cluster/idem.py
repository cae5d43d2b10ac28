"""Idempotent producer batches in a producer ring (pure).

An idempotent producer (``client.producer(channel, idempotent=True)``) puts a header
record before each batch: ``MAGIC (16 B) | producer id u64 | batch seq u64 | count u32``,
then the batch's ``count`` records. The node's ring drainer may merge several frames
into one list; :func:`split` cuts it back into batches. A plain producer's records
(never starting with the 16 magic bytes in practice) form batches of producer id 0.
"""

from __future__ import annotations

import struct

MAGIC = b"\x00NMIDEMPOTENT\x00v1"
_HEAD = struct.Struct("<16sQQI")


def header(producer: int, batch_seq: int, count: int) -> bytes:
    return _HEAD.pack(MAGIC, producer, batch_seq, count)


def split(records: list[bytes]) -> list[tuple[int, int, list[bytes]]]:
    """``[(producer id, batch seq, payloads)]`` in order; producer id 0: plain records.
    A header promising more records than follow keeps what follows (the rest of the
    batch never arrived: the producer's flush reports it)."""
    out: list[tuple[int, int, list[bytes]]] = []
    i, n = 0, len(records)
    plain: list[bytes] = []
    while i < n:
        r = records[i]
        if len(r) == _HEAD.size and r[:16] == MAGIC:
            if plain:
                out.append((0, 0, plain))
                plain = []
            _, producer, batch_seq, count = _HEAD.unpack(r)
            out.append((producer, batch_seq, records[i + 1 : i + 1 + count]))
            i += 1 + count
        else:
            plain.append(r)
            i += 1
    if plain:
        out.append((0, 0, plain))
    return out

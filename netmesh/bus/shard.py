"""Shard choice: a stable hash of the key (or of the event bytes) reduced to a shard.

The hash is CRC-32C (Castagnoli, RFC 3720 §B.4; the ``crc32c`` package, already a
netmesh dependency), reduced with Lemire's multiply-shift (``(h * n) >> 32``), as the
reference reduces its xxh3 (``mesh_spec.md`` §6.3). Python's ``hash()`` is salted per
process, so it would send one key to different shards in different producers; CRC-32C is
the same everywhere, so events with one key keep their order across processes and
restarts. Pure: no IO.
"""

from __future__ import annotations

import crc32c

Key = str | bytes | int


def key_bytes(key: Key) -> bytes:
    """The bytes a key hashes as: UTF-8 for ``str``, decimal text for ``int``."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise TypeError(f"a bus key is str, bytes or int, not {type(key).__name__}")


def shard_for(data: bytes, num_shards: int) -> int:
    """Shard in ``range(num_shards)`` for ``data`` (a key's bytes or the payload)."""
    return (crc32c.crc32c(data) * num_shards) >> 32

"""De-duplication ids and the producer identity behind them.

Every stored event carries ``"{producer nonce}:{shard}:{batch seq}:{i}"`` (the
reference's ``dedup_id``, ``mesh_spec.md`` §6.5). A bus retries a failed ``on_batch``
with the identical batch, so a backend that already stored part of it (the reply was lost,
the connection dropped, the leader died after committing) can skip what it holds:

- JetStream: the id is the ``Nats-Msg-Id`` header; the server drops a repeat inside
  the stream's duplicate window.
- Redis Streams: a Lua script stores a batch and moves a per-producer high-water mark
  ``(batch seq, i)`` in one atomic step; a repeat at or below the mark is skipped
  (:mod:`netmesh.bus.adapters.redis_streams` says why this beats a consumer-side filter).
- Memory: the same high-water mark, in process.

Producer identity. The nonce is 64 random bits (16 hex digits). With
``producer_nonce_path`` it is kept in that file, together with a session counter bumped
at every open; batch sequences of session ``k`` start at ``k << 32``. So one producer
keeps one nonce (the backends' de-duplication state stays one entry per producer and
shard) and its batch sequences only grow, across restarts too: a new event can never be
taken for a repeat of an old one. What the file cannot do is replay: events still in a
crashed process's rings are gone with it (they were only in memory).

The file is JSON ``{"nonce": "<16 hex>", "session": <int>}``, written to a temp file,
fsynced, renamed over, and the directory fsynced (tidwall/wal ``atomicWrite``).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from netmesh.errors import ConfigError

SESSION_SHIFT = 32  # batch seq of session k starts at k << 32: 4e9 batches per session


@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    """``nonce``: 16 hex digits; ``session``: how many times the nonce file was opened
    before (0 without a file); ``first_seq``: the first batch sequence of this session."""

    nonce: str
    session: int

    @property
    def first_seq(self) -> int:
        return self.session << SESSION_SHIFT


def new_nonce() -> str:
    """A fresh random producer nonce (64 bits from ``secrets``), as 16 hex digits."""
    return secrets.token_bytes(8).hex()


def load_identity(path: str | os.PathLike[str] | None) -> ProducerIdentity:
    """The producer identity for a new bus: fresh when ``path`` is None; otherwise read
    from ``path`` (created if missing), with its session counter bumped and saved.

    Raises :class:`ConfigError` naming the file when it exists but is not ours.
    """
    if path is None:
        return ProducerIdentity(new_nonce(), 0)
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        nonce, session = doc["nonce"], doc["session"] + 1
        if not (isinstance(nonce, str) and len(nonce) == 16 and int(nonce, 16) >= 0):
            raise ValueError(nonce)
        if not isinstance(session, int) or session >= 1 << 20:
            raise ValueError(session)
    except FileNotFoundError:
        nonce, session = new_nonce(), 0
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"producer_nonce_path {path!r} is not a bus nonce file: {exc}") from exc
    _atomic_write(path, json.dumps({"nonce": nonce, "session": session}).encode())
    return ProducerIdentity(nonce, session)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def split_dedup_id(dedup_id: str) -> tuple[str, int, int, int]:
    """``(nonce, shard, batch seq, i)`` of a de-duplication id; ValueError if malformed."""
    nonce, shard, seq, i = dedup_id.split(":")
    return nonce, int(shard), int(seq), int(i)

"""MemoryAdapter: the default backend, a list per shard in this process.

Unlike the reference's default (a Noop adapter that discards events, so ``poll`` returns
nothing; ``mesh_spec.md`` §0.1), this one stores and polls. It keeps the same
per-producer high-water mark as the Redis script, so a retried batch is stored once.
Events live as long as the adapter; ``max_events`` per shard (oldest first out, like
Redis ``MAXLEN``) bounds the memory. Ids are the event's index in its shard, as decimal
strings; trimmed events keep their ids (the index does not restart).
"""

from __future__ import annotations

import threading

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.types import Batch, StoredEvent
from netmesh.errors import BadCursor, ConfigError


def _position(after: str) -> int:
    if not after.isdigit():
        raise BadCursor(f"{after!r} is not a memory adapter position")
    return int(after)


class MemoryAdapter(Adapter):
    """In-process storage; ``max_events``: per-shard bound (None: unbounded)."""

    name = "memory"

    def __init__(self, max_events: int | None = None) -> None:
        if max_events is not None and max_events < 1:
            raise ConfigError(f"MemoryAdapter.max_events must be >= 1, got {max_events}")
        self.max_events = max_events
        self._lock = threading.Lock()
        self._shards: list[list[StoredEvent]] = []
        self._first: list[int] = []  # index of each deque's first event
        self._marks: dict[tuple[str, int], tuple[int, int]] = {}  # (nonce, shard) -> (seq, i)

    def init(self, num_shards: int) -> None:
        # idempotent, so one MemoryAdapter can outlive a bus and serve the next one
        with self._lock:
            while len(self._shards) < num_shards:
                self._shards.append([])
                self._first.append(0)

    def on_batch(self, batch: Batch) -> None:
        key = (batch.nonce, batch.shard)
        with self._lock:
            mark = self._marks.get(key, (-1, -1))
            store = self._shards[batch.shard]
            nxt = self._first[batch.shard] + len(store)
            prefix = batch.id_prefix
            for i, (raw, ts) in enumerate(zip(batch.payloads, batch.timestamps, strict=True)):
                if (batch.seq, i) > mark:
                    store.append(StoredEvent(str(nxt), raw, ts, batch.shard, f"{prefix}{i}"))
                    nxt += 1
            if len(batch):
                self._marks[key] = max(mark, (batch.seq, len(batch) - 1))
            if self.max_events is not None:
                excess = len(store) - self.max_events
                if excess > 0:
                    del store[:excess]
                    self._first[batch.shard] += excess

    def poll_shard(self, shard: int, after: str | None, limit: int) -> list[StoredEvent]:
        with self._lock:
            store, first = self._shards[shard], self._first[shard]
            start = 0 if after is None else max(_position(after) + 1 - first, 0)
            return store[start : start + limit]

    def shutdown(self) -> None:
        pass

    def is_healthy(self) -> bool:
        return True

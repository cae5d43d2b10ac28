"""NetmeshAdapter: one netmesh channel per shard on a running cluster or node daemon.

It is a client (:func:`netmesh.connect`) of the cluster named ``name``:

- ``init(n)`` opens channels ``{prefix}/shard/{i}`` (``replication``: a
  :class:`~netmesh.config.ReplicationConfig`, default factor 3 with ``ack="quorum"``,
  capped at the cluster's size) unless they are open already;
- ``on_batch`` appends the batch through a producer (a shared-memory ring to the shard
  channel's leader) and returns once the append is acknowledged (quorum: committed).
  Each stored event is ``msgpack [dedup_id, insertion_ts, raw]``;
- de-duplication, like an idempotent producer's sequence numbers: per (shard, producer
  nonce) the adapter knows the highest batch sequence stored (rebuilt from the last
  ``DEDUP_WINDOW`` events of the shard channel when it starts), so a repeat of a batch
  already stored is skipped; when an append fails (a leader change: ``NotLeader`` with
  the unacknowledged count), the retry first reads the channel's committed tail and
  appends only the events of the batch whose dedup ids are not there. So a retry, a lost
  reply or a late repeat stores nothing twice, within the window;
- ``poll_shard(shard, after, limit)`` is ``read_range(after + 1, after + 1 + limit)``
  with the channel seq as the event id;
- ``is_healthy`` asks the cluster for its channels.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import msgpack

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.types import Batch, StoredEvent
from netmesh.config import ReplicationConfig
from netmesh.errors import AdapterError, ConfigError, NetmeshError

COMMIT_WAIT_S = 5.0
DEDUP_WINDOW = 10_000  # events read back per shard to rebuild the batch sequences


class NetmeshAdapter(Adapter):
    """Stores each shard in a channel of the netmesh cluster ``name`` (see module doc)."""

    name = "netmesh"

    def __init__(
        self,
        name: str = "default",
        prefix: str = "bus",
        replication: ReplicationConfig | None = None,
    ) -> None:
        from netmesh.client.client import connect

        self.cluster = name
        self.prefix = prefix
        self.replication = replication
        try:
            self.client = connect(name)
        except NetmeshError as exc:
            raise AdapterError("netmesh", f"cluster {name!r}: {exc}", exc) from exc
        self._producers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._attempted: set[tuple[int, str, int]] = set()  # batches whose append failed
        self._high: dict[tuple[int, str], int] = {}  # (shard, nonce) -> highest batch seq
        self._loaded: set[int] = set()  # shards whose batch sequences were rebuilt
        self.deduplicated = 0

    def channel(self, shard: int) -> str:
        return f"{self.prefix}/shard/{shard}"

    def init(self, num_shards: int) -> None:
        try:
            open_now = {c.name for c in self.client.channels()}
            nodes = int(self.client.info.get("nodes", 1))
            cfg = self.replication or ReplicationConfig(factor=min(3, nodes), ack="quorum")
            for i in range(num_shards):
                if self.channel(i) not in open_now:
                    self.client.open_channel(self.channel(i), cfg)
        except ConfigError:
            raise
        except NetmeshError as exc:
            raise AdapterError("netmesh", f"cannot open the shard channels: {exc}", exc) from exc

    def _producer(self, shard: int) -> Any:
        with self._lock:
            p = self._producers.get(shard)
            if p is None:
                p = self._producers[shard] = self.client.producer(self.channel(shard))
            return p

    def on_batch(self, batch: Batch) -> None:
        ids = [batch.dedup_id(i) for i in range(len(batch))]
        records = [
            msgpack.packb([d, ts, raw], use_bin_type=True)
            for d, ts, raw in zip(ids, batch.timestamps, batch.payloads, strict=True)
        ]
        try:
            p = self._producer(batch.shard)
            if batch.shard not in self._loaded:
                self._rebuild(batch.shard)
            if batch.seq <= self._high.get((batch.shard, batch.nonce), -1):
                self.deduplicated += len(records)  # stored already (a lost reply, a repeat)
                return
            key = (batch.shard, batch.nonce, batch.seq)
            if key in self._attempted:  # a retry: store only what is not there yet
                stored = self._stored_ids(batch.shard, len(records))
                keep = [r for d, r in zip(ids, records, strict=True) if d not in stored]
                self.deduplicated += len(records) - len(keep)
                records = keep
            self._attempted.add(key)
            if records:
                p.append_batch(records)
                p.flush()
            self._attempted.discard(key)
            self._high[(batch.shard, batch.nonce)] = batch.seq
        except NetmeshError as exc:
            raise AdapterError("netmesh", f"shard {batch.shard}: {exc}", exc) from exc

    def _rebuild(self, shard: int) -> None:
        """Highest batch seq per producer nonce among the shard's last DEDUP_WINDOW events."""
        from netmesh.bus.dedup import split_dedup_id

        for dedup in self._stored_ids(shard, DEDUP_WINDOW):
            nonce, _, seq, _ = split_dedup_id(dedup)
            key = (shard, nonce)
            self._high[key] = max(self._high.get(key, -1), seq)
        self._loaded.add(shard)

    def _stored_ids(self, shard: int, n: int) -> set[str]:
        """Dedup ids among the last ``n`` committed events of the shard (after waiting,
        briefly, for the leader to commit what it holds)."""
        ch = self.channel(shard)
        deadline = time.monotonic() + COMMIT_WAIT_S
        info = None
        while time.monotonic() < deadline:
            info = next((c for c in self.client.channels() if c.name == ch), None)
            if info is not None and info.leader is not None and info.commit >= info.next_seq:
                break
            time.sleep(0.02)
        if info is None:
            return set()
        end = info.commit
        events = self.client.read_range(ch, max(0, end - n), end)
        return {msgpack.unpackb(ev.payload, raw=False)[0] for ev in events}

    def poll_shard(self, shard: int, after: str | None, limit: int) -> list[StoredEvent]:
        start = 0 if after is None else int(after) + 1
        try:
            events = self.client.read_range(self.channel(shard), start, start + limit)
        except NetmeshError as exc:
            raise AdapterError("netmesh", f"shard {shard}: {exc}", exc) from exc
        out = []
        for ev in events:
            dedup, ts, raw = msgpack.unpackb(ev.payload, raw=False)
            out.append(StoredEvent(str(ev.entry.seq), raw, ts, shard, dedup))
        return out

    def shutdown(self) -> None:
        with self._lock:
            producers, self._producers = list(self._producers.values()), {}
        for p in producers:
            with contextlib.suppress(NetmeshError):
                p.close()
        self.client.close()

    def is_healthy(self) -> bool:
        try:
            self.client.channels()
            return True
        except NetmeshError:
            return False

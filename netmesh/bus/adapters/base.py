"""The adapter interface: where a shard's batches go and where ``poll`` reads them back.

Contract (the reference's adapter trait, ``mesh_spec.md`` §6.5):

- ``init(num_shards)`` once, before any other call; it may create streams/keys and
  raise :class:`AdapterError` if the backend is unreachable (then the bus is not built).
- ``on_batch(batch)`` stores the batch's events in order at the end of shard
  ``batch.shard``. It is called by that shard's worker thread only, one batch at a time, so
  per-shard order is the call order; different shards call concurrently. It returns
  when the backend acknowledged every event (the bus counts them as stored), or raises
  :class:`AdapterError` (the bus retries the *same* batch with back-off). It must be
  idempotent under such retries: events of the batch that were stored by an earlier
  attempt are not stored again (use ``batch.dedup_id(i)``).
- ``poll_shard(shard, after, limit)`` returns up to ``limit`` stored events of ``shard``
  that come after the event whose id is ``after`` (``None``: from the first), in order.
  Thread-safe; raises :class:`AdapterError` when the backend fails.
- ``flush()`` makes everything acknowledged durable where the backend buffers.
- ``shutdown()`` releases connections and threads; idempotent.
- ``is_healthy()`` is True when the backend answers (cheap; may ping).

An adapter translates its client library's exceptions into :class:`AdapterError` at
this edge (the trio habit of translating OS errors once). Writing a new one, e.g. the
netmesh-channel adapter of issue 11, means these six methods and nothing in the bus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from netmesh.bus.types import Batch, StoredEvent


class Adapter(ABC):
    """Base class of the event bus adapters; see the module docstring for the contract."""

    #: short name used in errors and stats ("memory", "redis", "jetstream")
    name: str = "adapter"

    @abstractmethod
    def init(self, num_shards: int) -> None:
        """Prepare ``num_shards`` shards (ids ``0..num_shards-1``)."""

    @abstractmethod
    def on_batch(self, batch: Batch) -> None:
        """Store ``batch`` idempotently, in order; raise AdapterError to be retried."""

    @abstractmethod
    def poll_shard(self, shard: int, after: str | None, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events of ``shard`` after id ``after`` (None: from the start)."""

    def flush(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Make acknowledged events durable where the backend buffers (default: nothing)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Release connections and threads; idempotent."""

    @abstractmethod
    def is_healthy(self) -> bool:
        """True when the backend answers."""

"""NetmeshAdapter: one netmesh channel per shard on a running cluster or node daemon.

Placeholder. It needs the client API of issue 11 (``netmesh.connect(name)``,
``cl.open_channel``, ``cl.producer(channel, idempotent=True)``, ``cl.subscribe``), which
is not built yet; constructing it raises :class:`AdapterNotAvailable`.

How it will map onto :class:`netmesh.bus.adapters.base.Adapter` (nothing in the bus
changes): ``init(n)`` opens channels ``{name}/shard/{i}``; ``on_batch`` appends the batch
through an idempotent producer (the dedup id travels with each event, so a retry after a
leader change stores nothing twice) and returns once the append is acknowledged
(``ack="quorum"`` for replicated channels); ``poll_shard(shard, after, limit)`` is
``read_range(after + 1, after + 1 + limit)`` with the channel seq as the event id;
``is_healthy`` asks the client whether the channel has a reachable leader.
"""

from __future__ import annotations

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.types import Batch, StoredEvent
from netmesh.errors import AdapterNotAvailable


class NetmeshAdapter(Adapter):
    """Not available yet: raises :class:`AdapterNotAvailable` (needs issue 11's client)."""

    name = "netmesh"

    def __init__(self, name: str = "bus", **options: object) -> None:
        raise AdapterNotAvailable("NetmeshAdapter needs the netmesh client API of issue 11")

    def init(self, num_shards: int) -> None:  # pragma: no cover - unreachable
        raise AdapterNotAvailable("issue 11")

    def on_batch(self, batch: Batch) -> None:  # pragma: no cover - unreachable
        raise AdapterNotAvailable("issue 11")

    def poll_shard(
        self, shard: int, after: str | None, limit: int
    ) -> list[StoredEvent]:  # pragma: no cover - unreachable
        raise AdapterNotAvailable("issue 11")

    def shutdown(self) -> None:  # pragma: no cover - unreachable
        pass

    def is_healthy(self) -> bool:  # pragma: no cover - unreachable
        return False

"""The event bus: sharded rings, batching workers and pluggable storage adapters
(``mesh_spec.md`` §6). Start with :class:`EventBus`; see README "Event bus"."""

from typing import Any

from netmesh.bus.adapters import Adapter, MemoryAdapter, NetmeshAdapter
from netmesh.bus.bus import EventBus, EventStream, encode_event
from netmesh.bus.filter import compile_filter
from netmesh.bus.types import (
    Batch,
    BatchConfig,
    BusStats,
    PollResponse,
    Receipt,
    ShardStats,
    StoredEvent,
)

_LAZY = {
    "RedisStreamsAdapter": "netmesh.bus.adapters.redis_streams",
    "JetStreamAdapter": "netmesh.bus.adapters.jetstream",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netmesh.bus' has no attribute {name!r}")


__all__ = [
    "Adapter",
    "Batch",
    "BatchConfig",
    "BusStats",
    "EventBus",
    "EventStream",
    "JetStreamAdapter",
    "MemoryAdapter",
    "NetmeshAdapter",
    "PollResponse",
    "Receipt",
    "RedisStreamsAdapter",
    "ShardStats",
    "StoredEvent",
    "compile_filter",
    "encode_event",
]

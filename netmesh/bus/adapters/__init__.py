"""Event bus adapters. ``MemoryAdapter`` loads at once; the Redis and JetStream adapters
load on first use, so their client libraries (the ``bus`` extra) are needed only then."""

from typing import Any

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.adapters.memory import MemoryAdapter
from netmesh.bus.adapters.netmesh import NetmeshAdapter

_LAZY = {
    "RedisStreamsAdapter": "netmesh.bus.adapters.redis_streams",
    "JetStreamAdapter": "netmesh.bus.adapters.jetstream",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netmesh.bus.adapters' has no attribute {name!r}")


__all__ = ["Adapter", "JetStreamAdapter", "MemoryAdapter", "NetmeshAdapter", "RedisStreamsAdapter"]

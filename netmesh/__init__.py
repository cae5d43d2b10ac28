"""netmesh: a multi-process, encrypted, replicated event log and event bus."""

__version__ = "0.1.0"  # keep equal to [project] version in pyproject.toml (tested)

from typing import Any

from netmesh.channel import ChannelName
from netmesh.config import (
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
)
from netmesh.errors import (
    AuthenticationError,
    ChannelNameError,
    ChannelNotOpen,
    Closed,
    ClusterNotFound,
    ConfigError,
    DecodeError,
    HandshakeError,
    InvalidTransition,
    Lagged,
    LocalProtocolError,
    LogCorrupt,
    LogLocked,
    NameTaken,
    NetmeshError,
    NodeError,
    NodeUnresponsive,
    NotLeader,
    OutOfOrder,
    PayloadTooLarge,
    ProtocolError,
    RemoteProtocolError,
    Replayed,
    RingClosed,
    RingFull,
    StorageFailed,
    TransportError,
    Truncated,
)
from netmesh.identity import EntityKeypair
from netmesh.link.node import MeshNode
from netmesh.log.file import RedexEvent, RedexFile
from netmesh.replication.registry import Redex
from netmesh.replication.roles import ReplicaRole, TransitionSignal

# process-level pieces load on first use (they pull in the worker and rich)
_LAZY = {
    "Cluster": "netmesh.cluster.cluster",
    "Producer": "netmesh.cluster.producer",
    "ShmRing": "netmesh.ring.shm",
    "connect": "netmesh.client.client",
    "Client": "netmesh.client.client",
    "Subscription": "netmesh.client.client",
    # the event bus (issue 14) and its errors
    "EventBus": "netmesh.bus",
    "BatchConfig": "netmesh.bus",
    "PollResponse": "netmesh.bus",
    "Receipt": "netmesh.bus",
    "StoredEvent": "netmesh.bus",
    "MemoryAdapter": "netmesh.bus",
    "NetmeshAdapter": "netmesh.bus",
    "RedisStreamsAdapter": "netmesh.bus",
    "JetStreamAdapter": "netmesh.bus",
    "AdapterError": "netmesh.errors",
    "AdapterNotAvailable": "netmesh.errors",
    "Backpressure": "netmesh.errors",
    "BadCursor": "netmesh.errors",
    "FilterError": "netmesh.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netmesh' has no attribute {name!r}")


__all__ = [
    "AuthenticationError",
    "ChannelName",
    "ChannelNameError",
    "ChannelNotOpen",
    "Client",
    "Closed",
    "Cluster",
    "ClusterNotFound",
    "ConfigError",
    "DecodeError",
    "EntityKeypair",
    "HandshakeError",
    "InvalidTransition",
    "Lagged",
    "LocalProtocolError",
    "LogCorrupt",
    "LogLocked",
    "MeshNode",
    "MeshNodeConfig",
    "NameTaken",
    "NetmeshError",
    "NodeError",
    "NodeUnresponsive",
    "NotLeader",
    "OutOfOrder",
    "PayloadTooLarge",
    "PlacementStrategy",
    "Producer",
    "ProtocolError",
    "Redex",
    "RedexEvent",
    "RedexFile",
    "RedexFileConfig",
    "RemoteProtocolError",
    "Replayed",
    "ReplicaRole",
    "ReplicationConfig",
    "RingClosed",
    "RingFull",
    "ShmRing",
    "StorageFailed",
    "Subscription",
    "TransitionSignal",
    "TransportError",
    "Truncated",
    "connect",
]

# the event bus (issue 14)
__all__ += [
    "AdapterError",
    "AdapterNotAvailable",
    "Backpressure",
    "BadCursor",
    "BatchConfig",
    "EventBus",
    "FilterError",
    "JetStreamAdapter",
    "MemoryAdapter",
    "NetmeshAdapter",
    "PollResponse",
    "Receipt",
    "RedisStreamsAdapter",
    "StoredEvent",
]

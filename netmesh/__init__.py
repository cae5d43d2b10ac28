"""netmesh: a multi-process, encrypted, replicated event log and event bus."""

from typing import Any

from netmesh.channel import ChannelName
from netmesh.config import (
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
)
from netmesh.core.roles import ReplicaRole, TransitionSignal
from netmesh.errors import (
    ChannelNameError,
    Closed,
    ConfigError,
    DecodeError,
    HandshakeError,
    InvalidTransition,
    LogCorrupt,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
    OutOfOrder,
    PayloadTooLarge,
    RingClosed,
    RingFull,
)
from netmesh.identity import EntityKeypair
from netmesh.node import MeshNode
from netmesh.redex import Redex
from netmesh.redex_file import RedexEvent, RedexFile

# process-level pieces load on first use (they pull in the worker and rich)
_LAZY = {
    "Cluster": "netmesh.cluster",
    "Producer": "netmesh.producer",
    "ShmRing": "netmesh.shm_ring",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netmesh' has no attribute {name!r}")


__all__ = [
    "ChannelName",
    "ChannelNameError",
    "Closed",
    "Cluster",
    "ConfigError",
    "DecodeError",
    "EntityKeypair",
    "HandshakeError",
    "InvalidTransition",
    "LogCorrupt",
    "MeshNode",
    "MeshNodeConfig",
    "NetmeshError",
    "NodeUnresponsive",
    "NotLeader",
    "OutOfOrder",
    "PayloadTooLarge",
    "PlacementStrategy",
    "Producer",
    "Redex",
    "RedexEvent",
    "RedexFile",
    "RedexFileConfig",
    "ReplicaRole",
    "ReplicationConfig",
    "RingClosed",
    "RingFull",
    "ShmRing",
    "TransitionSignal",
]

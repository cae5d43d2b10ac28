"""netmesh: a multi-process, encrypted, replicated event log and event bus."""

from netmesh.channel import ChannelName
from netmesh.config import (
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
)
from netmesh.errors import (
    ChannelNameError,
    Closed,
    ConfigError,
    DecodeError,
    HandshakeError,
    InvalidTransition,
    LogCorrupt,
    NetmeshError,
    PayloadTooLarge,
    RingClosed,
    RingFull,
)
from netmesh.identity import EntityKeypair
from netmesh.node import MeshNode

__all__ = [
    "ChannelName",
    "ChannelNameError",
    "Closed",
    "ConfigError",
    "DecodeError",
    "EntityKeypair",
    "HandshakeError",
    "InvalidTransition",
    "LogCorrupt",
    "MeshNode",
    "MeshNodeConfig",
    "NetmeshError",
    "PayloadTooLarge",
    "PlacementStrategy",
    "RedexFileConfig",
    "ReplicationConfig",
    "RingClosed",
    "RingFull",
]

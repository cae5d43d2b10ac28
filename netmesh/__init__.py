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

__all__ = [
    "ChannelName",
    "ChannelNameError",
    "Closed",
    "ConfigError",
    "DecodeError",
    "HandshakeError",
    "InvalidTransition",
    "LogCorrupt",
    "MeshNodeConfig",
    "NetmeshError",
    "PayloadTooLarge",
    "PlacementStrategy",
    "RedexFileConfig",
    "ReplicationConfig",
    "RingClosed",
    "RingFull",
]

"""Clients of a running cluster or node daemon: ``netmesh.connect(name)``."""

from netmesh.client.client import (
    ChannelInfo,
    Client,
    ClientProducer,
    Subscription,
    connect,
)

__all__ = ["ChannelInfo", "Client", "ClientProducer", "Subscription", "connect"]

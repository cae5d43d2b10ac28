"""Bus test fixtures: real servers (netmesh.testing.servers) and one adapter factory
parametrized over every backend, so a contract test runs unchanged on each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netmesh.bus import Adapter, MemoryAdapter
from netmesh.testing.servers import (  # noqa: F401 - fixtures
    nats_cluster,
    nats_server,
    redis_pair,
    redis_server,
)

AdapterFactory = Callable[[], Adapter]


@pytest.fixture
def netmesh_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real 3-node netmesh cluster serving clients; yields its name."""
    from netmesh import Cluster

    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path / "run"))
    with Cluster(nodes=3, heartbeat_ms=100, name="bus"):
        yield "bus"


@pytest.fixture(params=["memory", "redis", "jetstream", "netmesh"])
def make_adapter(request: pytest.FixtureRequest) -> AdapterFactory:
    """A factory of fresh adapters on one backend (all share the backend's data)."""
    if request.param == "memory":
        shared = MemoryAdapter()
        return lambda: shared
    if request.param == "netmesh":
        from netmesh.bus.adapters.netmesh import NetmeshAdapter

        name = request.getfixturevalue("netmesh_cluster")
        return lambda: NetmeshAdapter(name)
    if request.param == "redis":
        from netmesh.bus.adapters.redis_streams import RedisStreamsAdapter

        url = request.getfixturevalue("redis_server").url
        return lambda: RedisStreamsAdapter(url)
    from netmesh.bus.adapters.jetstream import JetStreamAdapter

    url = request.getfixturevalue("nats_server").url
    return lambda: JetStreamAdapter(url)

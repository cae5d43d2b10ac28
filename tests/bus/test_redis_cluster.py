"""RedisStreamsAdapter against a real Redis Cluster (issue 14): three primaries on
loopback; shards spread over the cluster's slots; emit, poll, retries, cursors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.bus import BatchConfig, EventBus
from netmesh.bus.types import Batch
from netmesh.testing.servers import free_port
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


def _cli(port: int, *args: str) -> str:
    r = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return r.stdout


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is a valid, free port too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            with socket.socket() as s:  # take one from the lower range instead
                for cand in range(20000 + port % 20000, 40000):
                    try:
                        s.bind(("127.0.0.1", cand))
                        port = cand
                        break
                    except OSError:
                        continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server / redis-cli not on PATH (apt-get install -y redis-server)")
    ports = [_cluster_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            d = tmp_path / str(port)
            d.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(d),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            wait_until(
                lambda p=port: _cli(p, "PING").strip() == "PONG", timeout=20, message="redis up"
            )
        out = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        for port in ports:
            wait_until(
                lambda p=port: "cluster_state:ok" in _cli(p, "CLUSTER", "INFO"),
                timeout=30,
                message="cluster ok",
            )
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_shards_spread_over_the_cluster_and_read_back_in_order(
    redis_cluster: list[int],
) -> None:
    from netmesh.bus.adapters.redis_streams import RedisStreamsAdapter

    url = f"redis://127.0.0.1:{redis_cluster[0]}/0"
    fast = BatchConfig(min_size=16, max_size=256, max_delay=0.002)
    with EventBus(shards=8, batch=fast, adapter=RedisStreamsAdapter(url, cluster=True)) as bus:
        for i in range(2000):
            bus.emit({"k": i % 50, "i": i}, key=str(i % 50))
        bus.flush(timeout=30)
        events, cursor = [], None
        while True:
            r = bus.poll(500, cursor)
            events += r.events
            cursor = r.next_cursor
            if not r.has_more:
                break
        assert sorted(int(e.raw.split(b'"i":')[1].rstrip(b"}")) for e in events) == list(
            range(2000)
        )
        by_key: dict[int, list[int]] = {}
        for e in events:
            k = int(e.raw.split(b'"k":')[1].split(b",")[0])
            by_key.setdefault(k, []).append(int(e.raw.split(b'"i":')[1].rstrip(b"}")))
        assert all(v == sorted(v) for v in by_key.values())  # per-key order
        bus.emit({"k": 0, "i": 2000}, key="0")
        bus.flush(timeout=10)
        assert [e.raw for e in bus.poll(500, cursor).events] == [b'{"k":0,"i":2000}']
    holding = [p for p in redis_cluster if int(_cli(p, "DBSIZE").strip() or 0) > 0]
    assert len(holding) >= 2  # the shards' streams live on several primaries


def test_a_retried_batch_is_stored_once_in_cluster_mode(redis_cluster: list[int]) -> None:
    from netmesh.bus.adapters.redis_streams import RedisStreamsAdapter

    a = RedisStreamsAdapter(f"redis://127.0.0.1:{redis_cluster[1]}/0", cluster=True)
    a.init(2)
    try:
        b = Batch(1, 3, "00000000000000cc", [b"x", b"y"], [1, 2])
        a.on_batch(b)
        a.on_batch(b)
        assert [e.raw for e in a.poll_shard(1, None, 10)] == [b"x", b"y"]
        assert a.stream_key(1) == "net:{shard:1}"
    finally:
        a.shutdown()

"""Issue 10 §8 on real node processes: the supervisor's own commands (restart in any
partition state, partition sequences, one-way cuts, heal) and producers told at once
when their node dies, whoever killed it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from netmesh.cluster.cluster import Cluster
from netmesh.config import ReplicationConfig
from netmesh.errors import ConfigError, NetmeshError, RingClosed
from netmesh.replication.roles import ReplicaRole
from tests.conftest import wait_until

pytestmark = pytest.mark.system
HB = 150


def peers_of(c: Cluster, i: int) -> set[int]:
    """Node indexes node ``i`` has a live session with (its metrics page)."""
    m = c.pages[i].read() or {}
    return {c.node_ids.index(n) for n in m.get("peers", []) if n in c.node_ids}


def test_restart_during_a_partition_then_rejoin_after_heal() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("r", ReplicationConfig(factor=3))
        c.partition([0], [1, 2])
        c.kill(0)
        t0 = time.monotonic()
        c.restart(0)  # used to raise after 3.4 s, leaving node 0 without channels
        assert time.monotonic() - t0 < 3.0
        assert c.next_seq(0, "r") == 0  # its channel is open again
        assert peers_of(c, 0) == set()  # still partitioned
        found = wait_until(
            lambda: [i for i in (1, 2) if c.role(i, "r") is ReplicaRole.LEADER],
            timeout=10,
            message="a leader on the majority side",
        )
        lead = found[0]
        c.append(lead, "r", [b"after-%d" % i for i in range(30)])
        c.heal()
        c.wait_connected(timeout=10)  # peers learnt its new port: it handshook itself
        assert peers_of(c, 0) == {1, 2}
        wait_until(lambda: c.next_seq(0, "r") == 30, timeout=10, message="node 0 catches up")
        assert c.read_range(0, "r", 0, 30) == c.read_range(lead, "r", 0, 30)


def test_restart_of_a_majority_node_during_a_partition() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.partition([0], [1, 2])
        c.kill(2)
        c.restart(2)
        c.wait_until(lambda: peers_of(c, 2) == {1}, timeout=10, message="2 links to 1 only")
        c.heal()
        c.wait_connected(timeout=10)
        assert all(peers_of(c, i) == {0, 1, 2} - {i} for i in range(3))


def test_heal_after_any_sequence_of_partitions() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.partition([0], [1, 2])
        c.partition([1], [0, 2])  # 0 and 2 are on one side now: they must talk again
        assert c.node_ids[2] not in c.blocked[0]
        c.wait_until(lambda: 2 in peers_of(c, 0), timeout=10, message="0 and 2 reconnect")
        c.wait_until(lambda: peers_of(c, 1) == set(), timeout=10, message="1 isolated")
        c.heal()
        c.wait_connected(timeout=10)
        assert all(peers_of(c, i) == {0, 1, 2} - {i} for i in range(3))
        assert all(not c.blocked[i] for i in range(3)) and not c.cuts


def test_one_way_cut_and_both_ways_then_heal() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB, session_timeout=1.0) as c:
        with pytest.raises(ConfigError, match="two different nodes"):
            c.cut(1, 1)
        c.cut(0, 1)  # 0's datagrams to 1 are lost, 1's still reach 0
        c.wait_until(lambda: 0 not in peers_of(c, 1), timeout=10, message="1 stops hearing 0")
        assert 1 in peers_of(c, 0)  # 0 still hears 1's keepalives
        counters = c.metrics(fresh=True)["nodes"][0]["counters"]
        assert counters["link_cut_datagrams"] > 0
        c.cut(2, 0, both=True)
        c.wait_until(
            lambda: 2 not in peers_of(c, 0) and 0 not in peers_of(c, 2),
            timeout=10,
            message="0 and 2 cut both ways",
        )
        assert 1 in peers_of(c, 2) and 2 in peers_of(c, 1)
        c.heal()
        c.wait_connected(timeout=10)
        assert all(peers_of(c, i) == {0, 1, 2} - {i} for i in range(3))


def test_producer_process_gets_ring_closed_within_a_second_of_its_node_dying() -> None:
    with Cluster(nodes=1) as c:
        c.open_channel("p")
        handle = c.spawn_producer(0, "p", events=10**9, batch=16, size=64, rate=20_000)
        c.wait_until(lambda: c.next_seq(0, "p") > 100, timeout=10, message="producer runs")
        t0 = time.monotonic()
        c.kill(0)
        with pytest.raises(NetmeshError, match="RingClosed"):
            handle.wait(timeout=5)  # used to fail after ~130 s with NodeUnresponsive
        assert time.monotonic() - t0 < 1.0


def test_in_process_producer_gets_ring_closed_when_its_node_crashes() -> None:
    with Cluster(nodes=1) as c:
        c.open_channel("p")
        p = c.producer(0, "p")
        p.append_batch([b"a"] * 10)
        assert p.flush() == 9
        t0 = time.monotonic()
        os.kill(c.info[0]["pid"], signal.SIGKILL)  # not through Cluster.kill
        with pytest.raises(RingClosed):
            while True:  # the ring fills once nobody drains it; then it must not hang
                p.append_batch([b"x" * 100] * 10, timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert [i for i, _ in c.check_nodes()] == [0]
        p.close()

"""The reference suite (redex_replication_e2e.rs), scenario by scenario, on real
MeshNodes over loopback UDP with real encryption, in one process (asyncio).

The reference's overhead check (replicated / plain append time <= 1.3) lives in
tests/system/test_overhead.py: in one asyncio process the replication work cannot run
beside a synchronous append loop as tokio's threads do, so it would measure nothing;
there it runs with one process per node, as ``netmesh bench overhead`` does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from netmesh import (
    ChannelName,
    EntityKeypair,
    MeshNode,
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
)
from netmesh.errors import NotLeader
from netmesh.replication.registry import Redex
from netmesh.replication.roles import ReplicaRole, TransitionSignal

PSK = bytes([0x42]) * 32


def mesh_config() -> MeshNodeConfig:
    return MeshNodeConfig(
        "127.0.0.1:0",
        PSK,
        heartbeat_interval=0.2,
        session_timeout=5.0,
        handshake_retries=3,
        handshake_timeout=2.0,
        recv_buffer=256 * 1024,
        send_buffer=256 * 1024,
    )


async def build_nodes(n: int) -> list[MeshNode]:
    nodes = [await MeshNode.create(EntityKeypair.generate(), mesh_config()) for _ in range(n)]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            await asyncio.gather(
                b.accept(a.node_id), a.connect(b.local_addr, b.public_key, b.node_id)
            )
    for node in nodes:
        node.start()
    return nodes


async def poll(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``pred`` every 10 ms until truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def drive_leader_and_replicas(leader: Redex, replicas: list[Redex], name: str) -> None:
    """The reference's manual role drive: A Idle->Replica->Candidate->Leader, others ->Replica."""
    ca = leader.replication_coordinator_for(name)
    await ca.transition_to(ReplicaRole.REPLICA, TransitionSignal.CAPABILITY_SELECTED)
    await ca.transition_to(ReplicaRole.CANDIDATE, TransitionSignal.MISSED_HEARTBEATS)
    await ca.transition_to(ReplicaRole.LEADER, TransitionSignal.ELECTION_WON)
    for r in replicas:
        await r.replication_coordinator_for(name).transition_to(
            ReplicaRole.REPLICA, TransitionSignal.CAPABILITY_SELECTED
        )


def repl_config(nodes: list[MeshNode], hb: int = 150, **kw: Any) -> RedexFileConfig:
    return RedexFileConfig(
        replication=ReplicationConfig(
            factor=len(nodes),
            heartbeat_ms=hb,
            placement=PlacementStrategy.pinned([n.node_id for n in nodes]),
            **kw,
        )
    )


async def setup(n: int, name: str, **kw: Any) -> tuple[list[MeshNode], list[Redex], list[Any]]:
    nodes = await build_nodes(n)
    redexes = [Redex() for _ in nodes]
    files = []
    for node, redex in zip(nodes, redexes, strict=True):
        redex.enable_replication(node)
        files.append(redex.open_file(ChannelName(name), repl_config(nodes, **kw)))
    return nodes, redexes, files


async def teardown(nodes: list[MeshNode], redexes: list[Redex]) -> None:
    for r in redexes:
        r.close()
    for node in nodes:
        await node.shutdown()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_two_node_replication_catches_replica_up() -> None:
    async def body() -> None:
        name = "repl/e2e"
        nodes, (ra, rb), (fa, fb) = await setup(2, name)
        assert ra.replication_runtime_count() == 1 and rb.replication_runtime_count() == 1
        await drive_leader_and_replicas(ra, [rb], name)
        assert ra.replication_coordinator_for(name).role is ReplicaRole.LEADER
        assert rb.replication_coordinator_for(name).role is ReplicaRole.REPLICA
        n = 32
        for i in range(n):
            fa.append(b"event-%d" % i)
        assert fa.next_seq == n and fb.next_seq == 0
        await poll(lambda: fb.next_seq >= n, 5.0, "replica catch-up")
        events = fb.read_range(0, n)
        assert [e.entry.seq for e in events] == list(range(n))
        assert [e.payload for e in events] == [b"event-%d" % i for i in range(n)]
        chan = ra.replication_metrics_snapshot().channel(name)
        assert chan.sync_bytes_total > 0
        assert chan.leader_changes_total == 1
        await teardown(nodes, [ra, rb])

    run(body)


def test_two_node_heartbeat_records_believed_leader() -> None:
    async def body() -> None:
        name = "repl/heartbeat"
        nodes, (ra, rb), _files = await setup(2, name)
        await drive_leader_and_replicas(ra, [rb], name)
        snap_b = rb.replication_metrics_snapshot()
        assert snap_b.channel(name).replica_lag_seconds is None  # nothing heard yet
        await poll(
            lambda: rb.replication_metrics_snapshot().channel(name).replica_lag_seconds is not None,
            3.0,
            "a leader heartbeat on B",
        )
        assert rb.replication_coordinator_for(name).leader_id == nodes[0].node_id
        assert rb.replication_metrics_snapshot().channel(name).heartbeats_received_total > 0
        assert ra.replication_coordinator_for(name).role is ReplicaRole.LEADER
        assert rb.replication_coordinator_for(name).role is ReplicaRole.REPLICA
        await teardown(nodes, [ra, rb])

    run(body)


def test_leader_close_triggers_replica_election_and_promotion() -> None:
    async def body() -> None:
        name = "repl/failover"
        nodes, (ra, rb), _files = await setup(2, name)
        await drive_leader_and_replicas(ra, [rb], name)
        await poll(
            lambda: rb.replication_metrics_snapshot().channel(name).replica_lag_seconds is not None,
            3.0,
            "a leader heartbeat on B",
        )
        ra.close_file(name)
        t0 = time.monotonic()
        await poll(
            lambda: rb.replication_coordinator_for(name).role is ReplicaRole.LEADER,
            3.0,
            "B promoted to leader",
        )
        assert time.monotonic() - t0 < 3.0
        assert rb.replication_metrics_snapshot().channel(name).elections_total >= 1
        await teardown(nodes, [ra, rb])

    run(body)


def test_three_node_replication_fans_out_to_every_replica() -> None:
    async def body() -> None:
        name = "repl/fanout"
        nodes, (ra, rb, rc), (fa, fb, fc) = await setup(3, name)
        await drive_leader_and_replicas(ra, [rb, rc], name)
        n = 24
        for i in range(n):
            fa.append(b"fan-%d" % i)
        await poll(lambda: fb.next_seq >= n and fc.next_seq >= n, 5.0, "B and C catch up")
        expected = [b"fan-%d" % i for i in range(n)]
        assert [e.payload for e in fb.read_range(0, n)] == expected
        assert [e.payload for e in fc.read_range(0, n)] == expected
        await teardown(nodes, [ra, rb, rc])

    run(body)


def test_bandwidth_budget_metric_field_is_plumbed() -> None:
    async def body() -> None:
        name = "perf/bandwidth"
        nodes, (ra, rb), (fa, fb) = await setup(2, name, replication_budget_fraction=0.5)
        await drive_leader_and_replicas(ra, [rb], name)
        for i in range(256):
            fa.append(b"bw-%d" % i)
        await poll(lambda: fb.next_seq >= 256, 3.0, "B holds the burst")
        chan = ra.replication_metrics_snapshot().channel(name)
        assert chan.sync_bytes_total > 0
        assert chan.under_capacity_total == 0
        await teardown(nodes, [ra, rb])

    run(body)


def test_appends_on_a_replica_are_refused() -> None:
    async def body() -> None:
        name = "repl/refuse"
        nodes, (ra, rb), (_fa, fb) = await setup(2, name)
        await drive_leader_and_replicas(ra, [rb], name)
        with pytest.raises(NotLeader):
            fb.append(b"nope")
        assert fb.next_seq == 0
        await teardown(nodes, [ra, rb])

    run(body)


def test_bootstraps_and_elects_pinned_leader_without_manual_drive() -> None:
    async def body() -> None:
        name = "repl/auto"
        nodes = await build_nodes(3)
        redexes = [Redex() for _ in nodes]
        pinned = nodes[1].node_id
        files = []
        for node, redex in zip(nodes, redexes, strict=True):
            redex.enable_replication(node)
            cfg = RedexFileConfig(
                replication=ReplicationConfig(
                    factor=3,
                    heartbeat_ms=100,
                    leader_pinned=pinned,
                    placement=PlacementStrategy.pinned([n.node_id for n in nodes]),
                )
            )
            files.append(redex.open_file(name, cfg))
        await poll(
            lambda: redexes[1].replication_coordinator_for(name).role is ReplicaRole.LEADER,
            5.0,
            "pinned leader elected",
        )
        files[1].append_batch([b"a", b"b", b"c"])
        await poll(lambda: files[0].next_seq == 3 and files[2].next_seq == 3, 5.0, "fan-out")
        roles = [r.replication_coordinator_for(name).role for r in redexes]
        assert roles.count(ReplicaRole.LEADER) == 1
        await teardown(nodes, redexes)

    run(body)


def test_tail_on_a_replica_follows_replicated_events() -> None:
    async def body() -> None:
        name = "repl/tail"
        nodes, (ra, rb), (fa, fb) = await setup(2, name)
        await drive_leader_and_replicas(ra, [rb], name)
        got: list[bytes] = []

        async def subscriber() -> None:
            async for ev in fb.tail(0):
                got.append(ev.payload)
                if len(got) == 20:
                    return

        task = asyncio.create_task(subscriber())
        for i in range(20):
            fa.append(b"live-%d" % i)
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 5)
        assert got == [b"live-%d" % i for i in range(20)]
        await teardown(nodes, [ra, rb])

    run(body)

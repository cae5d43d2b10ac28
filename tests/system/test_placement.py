"""Placement as upstream net-mesh does it (issue 13 §4), on real MeshNodes over
loopback UDP with real encryption, one asyncio loop (the reference's later
``redex_replication_e2e.rs`` placement scenarios, scenario by scenario):

* standard placement, factor 2 of 3: the two lowest node ids, the same set on every
  node, one leader, the third node Idle and empty;
* a member closes its file / leaves the cluster: the set re-resolves and the newly
  selected replica catches up;
* colocation_strict(key): only nodes that announced the chain, even with fewer than
  the factor; others Idle (and a node that announces it later joins);
* a pinned pair without a pinned leader converges on one leader within 5 s and does
  not flap;
* ``Redex.disable_replication`` (idempotent, count 0, Idle, mesh released, local
  appends, no resurrection on re-enable);
* capability announcements are rate-limited by ``min_announce_interval``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from netmesh import (
    EntityKeypair,
    MeshNode,
    MeshNodeConfig,
    NotLeader,
    PlacementStrategy,
    Redex,
    RedexFileConfig,
    ReplicaRole,
    ReplicationConfig,
    TransitionSignal,
)
from netmesh.errors import InvalidTransition
from netmesh.replication.placement import Announcement

pytestmark = pytest.mark.system

PSK = bytes([0x42]) * 32
# short windows keep the placement scenarios quick (the reference's tests use 50 ms)
ANNOUNCE = 0.05
IDLE, LEADER, REPLICA = ReplicaRole.IDLE, ReplicaRole.LEADER, ReplicaRole.REPLICA
_EMPTY = Announcement(0)
_LIVE: list[MeshNode] = []  # nodes of the running test, shut down by run()


def mesh_config(announce: float = ANNOUNCE, session_timeout: float = 5.0) -> MeshNodeConfig:
    return MeshNodeConfig(
        "127.0.0.1:0",
        PSK,
        heartbeat_interval=0.2,
        session_timeout=session_timeout,
        handshake_retries=3,
        handshake_timeout=2.0,
        recv_buffer=256 * 1024,
        send_buffer=256 * 1024,
        min_announce_interval=announce,
    )


async def build_nodes(n: int, **kw: Any) -> list[MeshNode]:
    nodes = [await MeshNode.create(EntityKeypair.generate(), mesh_config(**kw)) for _ in range(n)]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            await asyncio.gather(
                b.accept(a.node_id), a.connect(b.local_addr, b.public_key, b.node_id)
            )
    for node in nodes:
        node.start()
    _LIVE.extend(nodes)
    return nodes


async def mesh(n: int, **kw: Any) -> tuple[list[MeshNode], list[Redex]]:
    nodes = await build_nodes(n, **kw)
    redexes = [Redex() for _ in nodes]
    for r, node in zip(redexes, nodes, strict=True):
        r.enable_replication(node)
    return nodes, redexes


async def teardown(nodes: list[MeshNode], redexes: list[Redex]) -> None:
    for r in redexes:
        r.close()
        r.disable_replication()
    for node in nodes:
        await node.shutdown()


async def poll(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``pred`` every 10 ms until truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def steady(pred: Callable[[], Any], seconds: float, what: str) -> None:
    """Check ``pred`` every 10 ms for ``seconds``: it must hold every time (an
    observation over a period, not a synchronisation)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert pred(), what
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run ``test``; whatever happens, shut down every node it built."""

    async def guarded() -> None:
        try:
            await test()
        finally:
            for node in _LIVE:
                await node.shutdown()
            _LIVE.clear()

    asyncio.run(guarded())


def by_rank(nodes: list[MeshNode]) -> list[int]:
    """Node indexes ordered by node id (rank 0 = lowest id)."""
    return sorted(range(len(nodes)), key=lambda i: nodes[i].node_id)


def roles(redexes: list[Redex], name: str) -> list[ReplicaRole]:
    out = []
    for r in redexes:
        c = r.replication_coordinator_for(name)
        out.append(IDLE if c is None else c.role)
    return out


def settled(redexes: list[Redex], name: str, members: list[int]) -> bool:
    """Exactly one leader among ``members``, every member Leader or Replica, every
    other node Idle (the reference's ``settled``)."""
    r = roles(redexes, name)
    leaders = sum(1 for i in members if r[i] is LEADER)
    all_in = all(r[i] in (LEADER, REPLICA) for i in members)
    others_idle = all(r[i] is IDLE for i in range(len(r)) if i not in members)
    return leaders == 1 and all_in and others_idle


def leader_of(redexes: list[Redex], name: str, members: list[int]) -> tuple[int, int]:
    r = roles(redexes, name)
    (lead,) = [i for i in members if r[i] is LEADER]
    (follow,) = [i for i in members if i != lead]
    return lead, follow


def standard(factor: int, hb: int = 150) -> RedexFileConfig:
    return RedexFileConfig(replication=ReplicationConfig(factor=factor, heartbeat_ms=hb))


def test_standard_placement_selects_factor_replicas_and_replicates() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(3)
        name = "repl/standard"
        files = [r.open_file(name, standard(2)) for r in redexes]
        rank = by_rank(nodes)
        members, outsider = sorted(rank[:2]), rank[2]
        await poll(lambda: settled(redexes, name, members), 8, "the pair settled, one leader")
        ids = tuple(sorted(nodes[i].node_id for i in members))
        for i in members:  # the same set on every member
            assert redexes[i].placement_members(name) == ids
        assert redexes[outsider].placement_members(name) is None
        lead, follow = leader_of(redexes, name, members)
        for i in range(8):
            files[lead].append(f"event-{i}".encode())
        await poll(lambda: files[follow].next_seq == 8, 5, "the other replica caught up")
        assert [e.payload for e in files[follow].read_range(0, 8)] == [
            f"event-{i}".encode() for i in range(8)
        ]
        assert files[outsider].next_seq == 0, "the unselected node holds nothing"
        assert roles(redexes, name)[outsider] is IDLE
        with pytest.raises(NotLeader):
            files[outsider].append(b"not here")
        with pytest.raises(InvalidTransition):
            await (
                redexes[outsider]
                .replication_coordinator_for(name)
                .transition_to(REPLICA, TransitionSignal.CAPABILITY_SELECTED)
            )
        assert files[outsider].next_seq == 0
        assert all(r.replication_runtime_count() == 1 for r in redexes)
        await teardown(nodes, redexes)

    run(body)


def test_standard_placement_reselects_when_a_member_closes_its_file() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(3)
        name = "repl/reselect"
        files = [r.open_file(name, standard(2)) for r in redexes]
        rank = by_rank(nodes)
        first, outsider = sorted(rank[:2]), rank[2]
        await poll(lambda: settled(redexes, name, first), 8, "the first set settled")
        lead, _ = leader_of(redexes, name, first)
        for i in range(8):
            files[lead].append(f"before-{i}".encode())
        await poll(lambda: all(files[i].next_seq == 8 for i in first), 5, "first set holds 8")

        leaving = rank[0]  # the lowest id withdraws its candidacy
        redexes[leaving].close_file(name)
        second = sorted([rank[1], outsider])
        live = [r if i != leaving else Redex() for i, r in enumerate(redexes)]
        await poll(lambda: settled(live, name, second), 8, "the set re-resolved to the outsider")
        lead, follow = leader_of(live, name, second)
        base = files[lead].next_seq
        assert base == 8  # the member that stayed holds the history and leads
        for i in range(4):
            files[lead].append(f"after-{i}".encode())
        await poll(lambda: files[follow].next_seq == base + 4, 5, "the new replica caught up")
        assert [e.payload for e in files[follow].read_range(0, 12)] == [
            e.payload for e in files[lead].read_range(0, 12)
        ]
        want = tuple(sorted(nodes[i].node_id for i in second))
        assert redexes[rank[1]].placement_members(name) == want
        assert redexes[outsider].placement_members(name) == want
        await teardown(nodes, redexes)

    run(body)


def test_standard_placement_reselects_when_a_member_leaves_the_cluster() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(3, session_timeout=1.0)
        name = "repl/leaves"
        files = [r.open_file(name, standard(2)) for r in redexes]
        rank = by_rank(nodes)
        first, outsider = sorted(rank[:2]), rank[2]
        await poll(lambda: settled(redexes, name, first), 8, "the first set settled")
        lead, _ = leader_of(redexes, name, first)
        for i in range(5):
            files[lead].append(f"e-{i}".encode())
        await poll(lambda: all(files[i].next_seq == 5 for i in first), 5, "first set holds 5")

        gone = lead  # the leader's whole node goes away (no withdrawal sent)
        redexes[gone].close()
        await nodes[gone].shutdown()
        second = sorted(i for i in range(3) if i != gone)
        live = [r if i != gone else Redex() for i, r in enumerate(redexes)]
        await poll(lambda: settled(live, name, second), 10, "the survivors re-resolved")
        lead, follow = leader_of(live, name, second)
        assert files[lead].next_seq == 5 and follow == outsider
        files[lead].append(b"after")
        await poll(lambda: files[follow].next_seq == 6, 5, "the newly selected replica caught up")
        await teardown([n for i, n in enumerate(nodes) if i != gone], live)

    run(body)


def test_colocation_strict_selects_only_holders_of_the_named_chain() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(3)
        rank = by_rank(nodes)
        holders, outsider = sorted([rank[0], rank[2]]), rank[1]
        chain = "00c0ffee00000001"
        for i in holders:
            redexes[i].announce_chain(chain)
        name = "repl/colocated"
        cfg = RedexFileConfig(
            replication=ReplicationConfig(
                factor=3, heartbeat_ms=150, placement=PlacementStrategy.colocation_strict(chain)
            )
        )
        files = [r.open_file(name, cfg) for r in redexes]
        await poll(lambda: settled(redexes, name, holders), 8, "the holders settled")
        lead, follow = leader_of(redexes, name, holders)
        # 10 heartbeats later the outsider is still Idle, the holders still settled
        await steady(
            lambda: settled(redexes, name, holders), 1.5, "a node without the chain joined"
        )
        files[lead].append(b"x")
        await poll(lambda: files[follow].next_seq == 1, 5, "the other holder replicated")
        assert files[outsider].next_seq == 0
        # announcing the chain later makes the outsider eligible: the set grows to 3
        redexes[outsider].announce_chain(chain)
        await poll(lambda: settled(redexes, name, [0, 1, 2]), 8, "the outsider joined")
        await poll(lambda: files[outsider].next_seq == 1, 5, "the new holder caught up")
        await teardown(nodes, redexes)

    run(body)


def test_pinned_pair_without_a_pinned_leader_converges_on_one_and_does_not_flap() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(2)
        name = "repl/auto-elect"
        cfg = RedexFileConfig(
            replication=ReplicationConfig(
                factor=2,
                heartbeat_ms=150,
                placement=PlacementStrategy.pinned([n.node_id for n in nodes]),
            )
        )
        files = [r.open_file(name, cfg) for r in redexes]
        t0 = time.monotonic()
        await poll(lambda: settled(redexes, name, [0, 1]), 5, "one leader within 5 s")
        assert time.monotonic() - t0 < 5.0
        lead, follow = leader_of(redexes, name, [0, 1])
        changes = [r.channel_metrics(name)["leader_changes_total"] for r in redexes]
        # 20 heartbeats (3 s) later: the same leader, no leader change on either node
        await steady(
            lambda: leader_of(redexes, name, [0, 1]) == (lead, follow), 3.0, "leadership flapped"
        )
        assert [r.channel_metrics(name)["leader_changes_total"] for r in redexes] == changes
        for i in range(8):
            files[lead].append(f"event-{i}".encode())
        await poll(lambda: files[follow].next_seq == 8, 5, "the replica caught up")
        await teardown(nodes, redexes)

    run(body)


def test_disable_replication_stops_runtimes_and_releases_the_mesh() -> None:
    async def body() -> None:
        nodes, redexes = await mesh(2)
        node, redex = nodes[0], redexes[0]
        other = redexes[1]
        redex.disable_replication()  # start from a Redex that never held the node
        gc.collect()
        baseline = sys.getrefcount(node)
        redex.enable_replication(node)
        pinned = RedexFileConfig(
            replication=ReplicationConfig(
                factor=1, heartbeat_ms=150, placement=PlacementStrategy.pinned([node.node_id])
            )
        )
        f = redex.open_file("repl/disable", pinned)
        g = redex.open_file("repl/disable-std", standard(2))
        other.open_file("repl/disable-std", standard(2))
        coords = [redex.replication_coordinator_for("repl/disable")]
        await poll(lambda: coords[0].role is LEADER, 5, "the lone pinned member leads")
        await poll(lambda: settled(redexes, "repl/disable-std", [0, 1]), 8, "the pair settled")
        coords.append(redex.replication_coordinator_for("repl/disable-std"))
        assert redex.replication_runtime_count() == 2
        assert sys.getrefcount(node) > baseline

        redex.disable_replication()
        redex.disable_replication()  # idempotent
        assert redex.replication_runtime_count() == 0
        assert redex.replication_coordinator_for("repl/disable") is None
        t0 = time.monotonic()
        await poll(lambda: all(c.role is IDLE for c in coords), 2, "coordinators Idle")
        assert time.monotonic() - t0 < 2.0
        coords.clear()  # the handles refer to the stopped runtimes (and so to the node)

        def released() -> bool:
            gc.collect()
            return sys.getrefcount(node) == baseline

        await poll(released, 2, "the Redex released the mesh")
        # still local logs: appends succeed, on the former leader and the former replica
        assert f.append(b"local") == 0
        g.append(b"local too")
        # the peer re-resolves without this node's withdrawn candidacy: it leads alone
        alone = (nodes[1].node_id,)
        await poll(
            lambda: other.placement_members("repl/disable-std") == alone, 8, "the peer re-resolved"
        )
        await poll(
            lambda: other.replication_coordinator_for("repl/disable-std").role is LEADER,
            8,
            "the peer leads the channel alone",
        )
        assert g.next_seq == 1 and other.get_file("repl/disable-std").append(b"theirs") >= 0
        # enabling again does not resurrect runtimes for the files already open
        redex.enable_replication(node)
        assert redex.replication_runtime_count() == 0
        assert redex.replication_coordinator_for("repl/disable") is None
        assert f.append(b"still local") == 1
        await teardown(nodes, redexes)

    run(body)


def test_announcements_are_rate_limited_by_min_announce_interval() -> None:
    async def body() -> None:
        window = 0.4
        nodes, (a, b) = await mesh(2, announce=window)
        a_id = nodes[0].node_id
        loop = asyncio.get_running_loop()
        a.open_file("rl/0", standard(2))
        t_first = loop.time()
        await poll(lambda: "rl/0" in b.placement_view().get(a_id, _EMPTY).channels, 2, "first")
        assert loop.time() - t_first < window  # the first announcement goes at once
        sent0 = a.placement_stats()["broadcasts"]
        for i in range(1, 5):  # four changes, each in its own loop turn
            a.open_file(f"rl/{i}", standard(2))
            await asyncio.sleep(0)
        a.announce_chain("c1")
        t_change = loop.time()
        want = {f"rl/{i}" for i in range(5)}
        await poll(lambda: b.placement_view().get(a_id, _EMPTY).channels == want, 3, "the rest")
        waited = loop.time() - t_change
        assert b.placement_view()[a_id].chains == {"c1"}
        # the changes waited for the window and went out as ONE broadcast
        assert a.placement_stats()["broadcasts"] == sent0 + 1
        assert waited >= window * 0.8, f"changes went out after {waited:.3f}s"
        await teardown(nodes, [a, b])

    run(body)


def test_default_min_announce_interval_is_ten_seconds() -> None:
    assert MeshNodeConfig().min_announce_interval == 10.0

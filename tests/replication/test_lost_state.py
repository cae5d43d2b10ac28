"""Issue 10 §2 (lost or reused state) and §6 (scale) at the coordinator, codec and
runtime level: term floors, the first hard-state save, LogCorrupt for a log without
its hard state, heartbeat bundles, ``next_tick_at`` and the node-wide tick."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Literal

import msgpack
import pytest

from netmesh import (
    EntityKeypair,
    MeshNode,
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicaRole,
    ReplicationConfig,
)
from netmesh.errors import DecodeError, LogCorrupt
from netmesh.log.hardstate import MAX_TERM, HardState
from netmesh.replication.coordinator import (
    TERM_SLOTS,
    Apply,
    ReplicationCoordinator,
    SaveHardState,
    Send,
    term_slot,
)
from netmesh.replication.messages import (
    BUNDLE_TAG,
    WIRE_VERSION,
    Heartbeat,
    SyncResponse,
    VoteRequest,
    VoteResponse,
    decode_heartbeats,
    encode_heartbeats,
)
from netmesh.replication.registry import Redex
from netmesh.replication.runtime import HEARTBEAT_STREAM, incarnation_term_floor

PSK = bytes(range(32))
IDS = [11, 22, 33]


def coord(
    me: int = 11,
    floor: int = 0,
    hs: HardState | None = None,
    ack: Literal["leader", "quorum"] = "quorum",
) -> ReplicationCoordinator:
    cfg = ReplicationConfig(
        factor=3, heartbeat_ms=100, placement=PlacementStrategy.pinned(IDS), ack=ack
    )
    return ReplicationCoordinator(me, cfg, IDS, hard_state=hs, term_floor=floor)


def campaign_term(c: ReplicationCoordinator, now: float) -> int:
    """Tick ``c`` alone until it asks for votes; the term it asks for. A node without
    hard state first hears an empty peer (a fresh cluster), or it never campaigns."""
    t = now
    if c.amnesiac:
        c.tick(t)
        peer = next(p for p in IDS if p != c.self_id)
        c.step(peer, Heartbeat(0, ReplicaRole.REPLICA, 0, 0, 0, 0), t)
    for _ in range(200):
        t += 0.05
        for out in c.tick(t):
            if isinstance(out, Send) and isinstance(out.msg, VoteRequest):
                return out.msg.term
    raise AssertionError("never campaigned")


# ----------------------------------------------------------------- term floor


@pytest.mark.parametrize("me", IDS)
def test_campaigns_never_go_below_the_term_floor_and_stay_owned(me: int) -> None:
    floor = 1_700_000_000_000_001
    c = coord(me, floor, ack="leader")
    term = campaign_term(c, 0.0)
    assert floor <= term < floor + TERM_SLOTS
    assert term % TERM_SLOTS == term_slot(me)


def test_a_persisted_term_above_the_floor_wins() -> None:
    c = coord(11, floor=5, hs=HardState(term=300), ack="leader")
    term = campaign_term(c, 0.0)
    assert 300 < term <= 300 + TERM_SLOTS and term % TERM_SLOTS == term_slot(11)


def test_the_floor_is_clamped_below_max_term() -> None:
    assert coord(11, floor=MAX_TERM * 4).term_floor == MAX_TERM // 2


def test_two_incarnations_get_increasing_floors_far_below_max_term() -> None:
    a = incarnation_term_floor()
    deadline = time.monotonic() + 1
    while incarnation_term_floor() == a:  # microseconds: the next one differs at once
        assert time.monotonic() < deadline
    assert a < incarnation_term_floor() < MAX_TERM // 2


# ----------------------------------------------------------- first hard state save


def test_the_first_save_precedes_the_first_log_change() -> None:
    """A fresh node (no hard state ever saved) adopts a term and applies events in one
    step: term and vote are saved before the Apply, so a crash between them never
    leaves events on disk without a hard state file."""
    c = coord(22)
    c.tick(0.0)
    push = SyncResponse(6, 0, 0, 0, 0, ((6, 0),), (b"a", b"b"))
    out = c.step(11, push, 0.01)
    kinds = [type(o) for o in out]
    assert Apply in kinds
    assert kinds[0] is SaveHardState and out[0].state.term == 6  # type: ignore[union-attr]
    assert kinds.index(SaveHardState) < kinds.index(Apply)


def test_a_restored_node_keeps_the_log_first_order() -> None:
    c = coord(22, hs=HardState(term=3))
    c.tick(0.0)
    out = c.step(11, SyncResponse(6, 0, 0, 0, 0, ((6, 0),), (b"a",)), 0.01)
    kinds = [type(o) for o in out]
    assert kinds.index(Apply) < kinds.index(SaveHardState)


# ------------------------------------------------------------------ next_tick_at


def test_an_idle_leader_is_due_at_its_next_heartbeat() -> None:
    c = coord(11, hs=HardState(), ack="leader")
    t = 0.0
    while c.role is not ReplicaRole.LEADER:
        t += 0.01
        c.tick(t)
        for p in (22, 33):
            if c.role is ReplicaRole.CANDIDATE:
                c.step(p, _grant(c.term), t)
    due = c.next_tick_at()
    assert t < due <= t + 0.1 + 1e-9
    assert c.tick((t + due) / 2) == []


def _grant(term: int) -> VoteResponse:
    return VoteResponse(term, True, False)


def test_failed_and_manual_idle_channels_have_no_timer() -> None:
    cfg = ReplicationConfig(factor=3, heartbeat_ms=100, placement=PlacementStrategy.pinned(IDS))
    idle = ReplicationCoordinator(11, cfg, IDS, auto_bootstrap=False)
    assert idle.next_tick_at() == float("inf")
    failed = coord(11)
    failed.storage_failed(0.0)
    assert failed.next_tick_at() == float("inf")


# ------------------------------------------------------------- heartbeat bundles


def test_bundles_round_trip() -> None:
    beats = [
        (
            f"ch/{i}",
            (1 << 64) - 1 - i,
            Heartbeat(MAX_TERM - i, ReplicaRole(i % 4), i, i // 2, 7, 6, i % 2 == 0, i % 3 == 0),
        )
        for i in range(40)
    ]
    assert decode_heartbeats(encode_heartbeats(beats)) == beats
    assert decode_heartbeats(encode_heartbeats([])) == []


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG]),
        msgpack.packb([WIRE_VERSION + 1, BUNDLE_TAG, []]),
        msgpack.packb([WIRE_VERSION, 1, []]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1, 3, 0, 0, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1, 1, 3, 0, 0, 1, 1, False, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", -1, 1, 3, 0, 0, 1, 1, False, False]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1.5, 1, 3, 0, 0, 1, 1, False, True]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [[b"c", 1, 3, 0, 0, 1, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", True, 3, 0, 0, 1, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", MAX_TERM + 1, 3, 0, 0, 1, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1, 3, -1, 0, 1, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1, 99, 0, 0, 1, 1]]]),
        msgpack.packb([WIRE_VERSION, BUNDLE_TAG, [["c", 1, 3, 0, 0, 1.0, 1]]]),
    ],
)
def test_bad_bundles_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_heartbeats(body)


# ------------------------------------------------------------------ the runtime


def test_a_log_without_its_hard_state_file_is_log_corrupt(tmp_path: Path) -> None:
    async def body() -> None:
        node = await MeshNode.create(EntityKeypair.generate(), MeshNodeConfig("127.0.0.1:0", PSK))
        node.start()
        redex = Redex()
        redex.enable_replication(node)
        cfg = RedexFileConfig(
            path=str(tmp_path),
            replication=ReplicationConfig(
                factor=1, heartbeat_ms=50, placement=PlacementStrategy.pinned([node.node_id])
            ),
        )
        f = redex.open_file("hs", cfg)
        deadline = asyncio.get_running_loop().time() + 5
        while redex.replication_coordinator_for("hs").role is not ReplicaRole.LEADER:
            assert asyncio.get_running_loop().time() < deadline, "no leader"
            await asyncio.sleep(0.01)
        f.append_batch([b"x", b"y"])
        redex.close()
        (tmp_path / "hardstate").unlink()
        r2 = Redex()
        r2.enable_replication(node)
        with pytest.raises(LogCorrupt, match=r"hardstate.*missing.*seq 1"):
            r2.open_file("hs", cfg)
        assert r2.get_file("hs") is None
        await node.shutdown()

    asyncio.run(body())


def test_many_channels_share_one_tick_and_bundle_their_heartbeats() -> None:
    """Two in-process nodes, 300 channels: every channel elects one leader, and the
    heartbeats travel in bundles (a few datagrams per tick, not one per channel)."""

    async def body() -> None:
        cfg = MeshNodeConfig("127.0.0.1:0", PSK, heartbeat_interval=0.2, session_timeout=5.0)
        a = await MeshNode.create(EntityKeypair.generate(), cfg)
        b = await MeshNode.create(EntityKeypair.generate(), cfg)
        await asyncio.gather(b.accept(a.node_id), a.connect(b.local_addr, b.public_key, b.node_id))
        a.start()
        b.start()
        ra, rb = Redex(), Redex()
        ra.enable_replication(a)
        rb.enable_replication(b)
        for r in (ra, rb):  # idle channels would quiesce: keep them heartbeating
            assert r._hub is not None
            r._hub.quiesce = False
        rcfg = ReplicationConfig(
            factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([a.node_id, b.node_id])
        )
        names = [f"c{i}" for i in range(300)]
        for n in names:
            ra.open_file(n, RedexFileConfig(replication=rcfg))
            rb.open_file(n, RedexFileConfig(replication=rcfg))
        loop = asyncio.get_running_loop()

        def leaders() -> int:
            return sum(
                [r.replication_coordinator_for(n).role for r in (ra, rb)].count(ReplicaRole.LEADER)
                == 1
                for n in names
            )

        deadline = loop.time() + 20
        while leaders() < len(names):
            assert loop.time() < deadline, f"{leaders()} of {len(names)} have one leader"
            await asyncio.sleep(0.05)
        hub = ra._hub
        assert hub is not None and len(hub.runtimes) == 300
        sent0, t0 = hub.counters["bundles_out"], loop.time()
        dg0 = int(a.metrics()["datagrams_out"])  # type: ignore[call-overload]
        snap0 = ra.replication_metrics_snapshot().totals()["heartbeats_sent_total"]
        while loop.time() < t0 + 1.0:  # an idle second, observed
            await asyncio.sleep(0.05)
        beats = ra.replication_metrics_snapshot().totals()["heartbeats_sent_total"] - snap0
        bundles = hub.counters["bundles_out"] - sent0
        datagrams = int(a.metrics()["datagrams_out"]) - dg0  # type: ignore[call-overload]
        assert beats >= 300 * 5  # ~10 heartbeats/s per channel
        assert bundles <= beats / 20  # ~32 channels per bundle
        assert datagrams <= beats / 10  # several bundles per datagram
        assert ra.replication_metrics_snapshot().totals()["leader_changes_total"] + (
            rb.replication_metrics_snapshot().totals()["leader_changes_total"]
        ) == len(names)
        assert HEARTBEAT_STREAM not in names
        ra.close()
        rb.close()
        await a.shutdown()
        await b.shutdown()

    asyncio.run(body())

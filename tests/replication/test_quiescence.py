"""Quiescence (coordinator "Quiescence", runtime ``ReplicationHub``): idle channels stop
their per-channel heartbeats, node liveness beats keep their followers quiet, and any
real input wakes them. Pure state transitions on a single coordinator, then the
simulation (which sends liveness beats as the node does), then two in-process nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from netmesh import EntityKeypair, MeshNode, MeshNodeConfig, Redex, RedexFileConfig
from netmesh.config import PlacementStrategy, ReplicationConfig
from netmesh.errors import DecodeError
from netmesh.replication.coordinator import ReplicationCoordinator, Send, ServeSync
from netmesh.replication.messages import (
    Heartbeat,
    LivenessBeat,
    SyncRequest,
    VoteKind,
    VoteRequest,
    VoteResponse,
    decode,
    decode_liveness,
    encode,
    encode_liveness,
    pack_keys,
    quiet_key,
    unpack_keys,
)
from netmesh.replication.roles import ReplicaRole as R
from netmesh.testing.sim import SimCluster

A, B, C = 1, 2, 3
HB = 0.1
INF = float("inf")


def cfg(ack: str = "quorum", pinned: int | None = None) -> ReplicationConfig:
    return ReplicationConfig(
        factor=3,
        heartbeat_ms=100,
        placement=PlacementStrategy.pinned([A, B, C]),
        ack=ack,  # type: ignore[arg-type]
        leader_pinned=pinned,
    )


def follower(me: int = B, pinned: int | None = None) -> ReplicationCoordinator:
    """A replica of A's term-3 leadership, in sync at tail 0 (hard state saved)."""
    from netmesh.log.hardstate import HardState

    hs = HardState(3, A, ((3, 0),))  # it adopted A's (empty) epoch
    c = ReplicationCoordinator(me, cfg(pinned=pinned), [A, B, C], hard_state=hs)
    c.tick(0.0)
    return c


def leader_hb(t: float, quiesce: bool, tail: int = 0, commit: int = 0) -> Heartbeat:
    """A's heartbeat at time ``t`` (the time is the caller's; kept for reading)."""
    return Heartbeat(3, R.LEADER, tail, commit, 3, 0, quiesce)


def quiet_follower(me: int = B) -> ReplicationCoordinator:
    c = follower(me)
    c.step(A, leader_hb(0.05, False), 0.05)
    c.step(A, leader_hb(0.1, True), 0.1)
    assert c.quiescent and c.leader_id == A
    return c


# ------------------------------------------------------------------ follower transitions


def test_a_follower_in_sync_quiesces_on_the_quiesce_heartbeat() -> None:
    c = follower()
    c.step(A, leader_hb(0.05, False), 0.05)
    assert not c.quiescent and c.next_tick_at() < INF
    c.step(A, leader_hb(0.1, True), 0.1)
    assert c.quiescent and c.next_tick_at() == INF and c.metrics.quiescent
    hb0 = c.metrics.heartbeats_sent_total
    assert c.tick(10.0) == [] and c.metrics.heartbeats_sent_total == hb0  # never due, silent


def test_a_follower_behind_or_pinned_stays_awake() -> None:
    c = follower()
    c.step(A, leader_hb(0.1, True, tail=5, commit=5), 0.1)  # behind: it asks instead
    assert not c.quiescent
    p = follower(pinned=B)  # the pinned node must stay awake to take over
    p.step(A, leader_hb(0.05, False), 0.05)
    p.step(A, leader_hb(0.1, True), 0.1)
    assert not p.quiescent


def test_the_quiesce_heartbeat_again_or_a_peer_heartbeat_does_not_wake_a_follower() -> None:
    c = quiet_follower()
    c.refresh(0.2, {A: 0.2, C: 0.2})
    assert c.step(A, leader_hb(0.2, True), 0.2) == [] and c.quiescent
    assert c.step(C, Heartbeat(3, R.REPLICA, 0, 0, 3, 0), 0.25) == [] and c.quiescent


@pytest.mark.parametrize(
    "msg",
    [
        leader_hb(0.3, False),  # the leader woke
        Heartbeat(3, R.LEADER, 4, 0, 3, 3, True),  # events we lack
        Heartbeat(9, R.REPLICA, 0, 0, 3, 0),  # a higher term
        SyncRequest(3, 0, 0, 100, 7),
    ],
)
def test_anything_new_wakes_a_follower(msg: object) -> None:
    c = quiet_follower()
    c.refresh(0.3, {A: 0.3, C: 0.3})
    frm = A if isinstance(msg, Heartbeat) and msg.role is R.LEADER else C
    c.step(frm, msg, 0.3)  # type: ignore[arg-type]
    assert not c.quiescent and c.next_tick_at() < INF


def test_a_refused_pre_vote_leaves_a_follower_quiet_and_its_lease_holds() -> None:
    """A node cut off from the leader campaigns; the lease (the leader's beats) holds
    and the channel stays quiescent: one cut-off node cannot wake the healthy ones."""
    c = quiet_follower()
    c.refresh(2.0, {A: 1.95, C: 2.0})  # A's beats keep arriving long after quiescing
    out = c.step(C, VoteRequest(4, 3, 0, 0, VoteKind.PRE), 2.0)
    assert [o.msg for o in out if isinstance(o, Send)] == [VoteResponse(3, False, True)]
    assert c.quiescent and c.term == 3
    c.step(C, VoteRequest(4, 3, 0, 0, VoteKind.VOTE), 2.0)  # in lease: ignored
    assert c.quiescent and c.term == 3 and c.voted_for == A


def test_a_granted_vote_wakes_a_follower() -> None:
    c = quiet_follower()
    c.refresh(2.0, {C: 2.0})  # A's node silent since 0.1: no lease
    c.step(C, VoteRequest(4, 3, 0, 0, VoteKind.FORCE), 2.0)
    assert not c.quiescent and c.term == 4 and c.voted_for == C


def test_woken_by_its_leaders_silence_a_follower_campaigns_at_once() -> None:
    """The election timer counts from the last beat that listed the channel, so
    failover takes as long as without quiescence."""
    c = quiet_follower()
    c.refresh(1.0, {A: 1.0, C: 1.0})  # beats listed the channel until 1.0
    assert c.tick(1.2) == [] and c.role is R.REPLICA
    c.wake(1.0 + 3 * HB, {A: 1.0, C: 1.0 + 3 * HB})
    assert not c.quiescent
    assert c.next_tick_at() <= 1.0 + 3 * HB
    out = c.tick(1.0 + 3 * HB)
    assert c.role.name == "CANDIDATE"
    assert any(isinstance(o, Send) and isinstance(o.msg, VoteRequest) for o in out)


def test_refresh_keeps_an_awake_followers_timer_on_its_leaders_heartbeats() -> None:
    c = follower()
    c.step(A, leader_hb(0.05, False), 0.05)
    c.refresh(0.5, {A: 0.5, C: 0.5})  # a live node is not a live leader
    c.tick(0.05 + 3 * HB)
    assert c.role is not R.REPLICA or c.leader_id is None


# ------------------------------------------------------------------ the simulation


def quiet_sim(seed: int = 1, ack: str = "quorum", n: int = 3) -> tuple[SimCluster, int]:
    sim = SimCluster(n, seed=seed, ack=ack)  # type: ignore[arg-type]
    lead = sim.wait_for_leader()
    sim.propose([b"a", b"b"])
    sim.wait_converged()
    for _ in range(60):
        if all(node.coord.quiescent for node in sim.nodes.values()):
            return sim, lead
        sim.step()
    raise AssertionError(f"never quiescent: {sim.describe()}")


@pytest.mark.parametrize("ack", ["quorum", "leader"])
@pytest.mark.parametrize("seed", range(4))
def test_an_idle_channel_quiesces_and_stays_quiet(seed: int, ack: str) -> None:
    sim, lead = quiet_sim(seed, ack)
    beats = {i: n.coord.metrics.heartbeats_sent_total for i, n in sim.nodes.items()}
    sim.run_heartbeats(40)
    assert {i: n.coord.metrics.heartbeats_sent_total for i, n in sim.nodes.items()} == beats
    assert sim.leaders() == [lead]
    assert all(n.coord.quiescent and n.coord.next_tick_at() == INF for n in sim.nodes.values())
    assert sim.nodes[lead].coord.metrics.leader_changes_total == 1


@pytest.mark.parametrize("seed", range(4))
def test_the_first_append_after_idle_replicates_at_once(seed: int) -> None:
    sim, lead = quiet_sim(seed)
    coord = sim.nodes[lead].coord
    node = sim.nodes[lead]
    node.storage.log.append(b"c")
    out = coord.local_appended(len(node.log), sim.now)
    assert not coord.quiescent
    assert sum(isinstance(o, ServeSync) for o in out) == 2  # pushed now, not at a tick
    sim._execute(node, out)
    sim.step()  # one network delay (a quarter heartbeat at most)
    assert all(len(n.log) == 3 for n in sim.nodes.values()), sim.describe()
    sim.step(2)
    assert coord.commit_seq == 3


@pytest.mark.parametrize("ack", ["quorum", "leader"])
@pytest.mark.parametrize("seed", range(6))
def test_a_leader_that_dies_quiescent_is_replaced_in_time(seed: int, ack: str) -> None:
    sim, lead = quiet_sim(seed, ack)
    sim.crash(lead)
    t0 = sim.now
    for _ in range(200):
        sim.step()
        if sim.leaders():
            break
    assert sim.leaders() and sim.leaders() != [lead], sim.describe()
    # silence window + liveness slack + (at most) one deferral window and a pre-vote
    assert sim.now - t0 <= 3 * (3 * HB) + 4 * HB, sim.now - t0
    sim.propose([b"after"])
    sim.wait_converged()


@pytest.mark.parametrize("seed", range(4))
def test_a_dead_follower_does_not_keep_the_channel_awake(seed: int) -> None:
    sim, lead = quiet_sim(seed)
    dead = next(i for i in sim.ids if i != lead)
    sim.crash(dead)
    sim.run_heartbeats(10)
    assert sim.leaders() == [lead]
    live = [n for i, n in sim.nodes.items() if i != dead]
    assert all(n.coord.quiescent for n in live), sim.describe()
    sim.restart(dead)  # back: it catches up (its heartbeats wake the leader)
    sim.propose([b"x"])
    sim.wait_converged()
    assert sim.leaders() == [lead]


@pytest.mark.parametrize("seed", range(4))
def test_a_leader_restarted_within_the_window_wakes_its_followers(seed: int) -> None:
    """Its new incarnation's beats do not list the channel: followers wake and elect."""
    sim, lead = quiet_sim(seed)
    sim.crash(lead)
    sim.step()
    sim.restart(lead)
    sim.wait_for_leader(40)
    sim.propose([b"x"])
    sim.wait_converged()
    assert all(len(n.log) == 3 for n in sim.nodes.values())


@pytest.mark.parametrize("seed", range(4))
def test_a_quiescent_leader_cut_off_from_the_majority_steps_down(seed: int) -> None:
    sim, lead = quiet_sim(seed, "quorum")
    sim.isolate(lead)
    sim.run_heartbeats(12)
    assert sim.nodes[lead].coord.role is not R.LEADER, sim.describe()
    assert len(sim.leaders()) == 1
    sim.heal()
    sim.wait_converged()


# ------------------------------------------------------------------ wire


def test_liveness_beat_codec_and_keys() -> None:
    keys = {quiet_key("orders", 7), quiet_key("orders", 8), quiet_key("x", 7)}
    assert len(keys) == 3 and quiet_key("orders", 7) == quiet_key("orders", 7)
    assert unpack_keys(pack_keys(keys)) == keys
    for beat in (LivenessBeat(5, 2, pack_keys(keys)), LivenessBeat(5, 3, None)):
        assert decode_liveness(encode_liveness(beat)) == beat
    for bad in (b"", b"\x93\x01\x02\x03", encode_liveness(LivenessBeat(1, 1, b"x" * 7))):
        with pytest.raises(DecodeError):
            decode_liveness(bad)
    hb = Heartbeat(3, R.LEADER, 1, 1, 3, 3, True)
    assert decode(encode(hb)) == hb


# ------------------------------------------------------------------ two real nodes


def test_in_process_nodes_quiesce_and_wake_on_append() -> None:
    """Two MeshNodes, 200 channels: they quiesce (no per-channel heartbeats in an idle
    second, only liveness beats), and an append on one replicates well within a
    heartbeat (the wake adds no wait)."""

    async def body() -> None:
        psk = bytes(range(32))
        mcfg = MeshNodeConfig("127.0.0.1:0", psk, heartbeat_interval=0.2, session_timeout=5.0)
        a = await MeshNode.create(EntityKeypair.generate(), mcfg)
        b = await MeshNode.create(EntityKeypair.generate(), mcfg)
        await asyncio.gather(b.accept(a.node_id), a.connect(b.local_addr, b.public_key, b.node_id))
        a.start()
        b.start()
        ra, rb = Redex(), Redex()
        ra.enable_replication(a)
        rb.enable_replication(b)
        rcfg = ReplicationConfig(
            factor=2,
            heartbeat_ms=400,
            placement=PlacementStrategy.pinned([a.node_id, b.node_id]),
            leader_pinned=a.node_id,
        )
        names = [f"q{i}" for i in range(200)]
        files = {n: ra.open_file(n, RedexFileConfig(replication=rcfg)) for n in names}
        for n in names:
            rb.open_file(n, RedexFileConfig(replication=rcfg))
        loop = asyncio.get_running_loop()

        def quiet() -> int:
            snaps = (ra.replication_metrics_snapshot(), rb.replication_metrics_snapshot())
            return sum(
                ch.quiescent and ch.role in ("LEADER", "REPLICA")
                for s in snaps
                for ch in s.channels
            )

        deadline = loop.time() + 30
        while quiet() < 2 * len(names):
            assert loop.time() < deadline, f"{quiet()} of {2 * len(names)} quiescent"
            await asyncio.sleep(0.05)
        hub = ra._hub
        assert hub is not None
        sent0 = ra.replication_metrics_snapshot().totals()["heartbeats_sent_total"]
        beats0, t0 = hub.counters["beats_out"], loop.time()
        while loop.time() < t0 + 1.0:  # an idle second
            await asyncio.sleep(0.05)
        assert ra.replication_metrics_snapshot().totals()["heartbeats_sent_total"] == sent0
        assert 1 <= hub.counters["beats_out"] - beats0 <= 6  # ~2.5/s to one peer
        assert quiet() == 2 * len(names)
        f = files["q7"]
        t_append = loop.time()
        f.append(b"wake")
        rc = rb.replication_coordinator_for("q7")
        while rc.tail_seq < 1:
            assert loop.time() - t_append < 2.0
            await asyncio.sleep(0.002)
        assert loop.time() - t_append < 0.2, "the first append waited for a heartbeat"
        changes = sum(
            r.replication_metrics_snapshot().totals()["leader_changes_total"] for r in (ra, rb)
        )
        assert changes == len(names)
        ra.close()
        rb.close()
        await a.shutdown()
        await b.shutdown()

    asyncio.run(body())


# ------------------------------------------------------------------ the hub's liveness


class _Node:
    node_id = A

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []

    def subscribe_batch(self, kind: str, handler: object) -> None:
        pass

    def send(self, to: int, stream: str, data: bytes) -> None:
        self.sent.append((to, stream, data))


class _Coord:
    def __init__(self, role: R, leader: int | None) -> None:
        self.quiescent, self.role, self.term, self.leader_id = True, role, 5, leader
        self.members, self.silence, self.hb = (A, B, C), 3 * HB, HB


class _Rt:
    """What the hub touches of a ChannelRuntime."""

    def __init__(self, hub: Any, name: str, role: R, leader: int | None) -> None:
        self.hub, self.name, self.coord = hub, name, _Coord(role, leader)
        self.quiet: object = None
        self.listed, self._closed, self.t = False, False, 0.0
        self.woken: list[dict[int, float]] = []
        self.due, self.heap_at = INF, INF

    def now(self) -> float:
        return self.t

    def wake(self, heard: dict[int, float]) -> None:
        self.woken.append(dict(heard))
        self.coord.quiescent = False
        self.hub.quiet_changed(self)


def _hub() -> Any:
    from netmesh.replication.runtime import ReplicationHub

    hub = ReplicationHub(_Node())
    hub._silence, hub._beat_interval, hub._t0 = 3 * HB, HB, 0.0
    hub._beat_peers = {B, C}
    return hub


def test_hub_wakes_a_follower_its_leader_stopped_listing() -> None:
    h = _hub()  # its private parts are under test
    rt = _Rt(h, "ch", R.REPLICA, B)
    h.quiet_changed(rt)
    key = quiet_key("ch", 5)
    assert rt.quiet is not None and not rt.listed and "ch" in h._unlisted
    h._on_beat(B, LivenessBeat(9, 1, pack_keys({key})), 0.1)
    assert rt.listed and "ch" not in h._unlisted
    h._on_beat(B, LivenessBeat(9, 1, None), 0.2)  # unchanged: generation only
    assert h.beat_at[B] == 0.2 and not rt.woken
    h._on_beat(B, LivenessBeat(9, 2, None), 0.3)  # a change we missed: not a beat
    assert h.beat_at[B] == 0.2 and not rt.woken
    h._on_beat(B, LivenessBeat(9, 3, pack_keys(set())), 0.4)  # no longer listed
    assert rt.woken == [{B: 0.2}] and rt.quiet is None  # timer from the last listing


def test_hub_wakes_followers_of_a_restarted_or_silent_node_and_leaders_once() -> None:
    h = _hub()
    f1, f2 = _Rt(h, "f1", R.REPLICA, B), _Rt(h, "f2", R.REPLICA, C)
    lead = _Rt(h, "l", R.LEADER, A)
    for rt in (f1, f2, lead):
        h.quiet_changed(rt)
    assert quiet_key("l", 5) in h._led
    for t in (0.1, 0.2):
        h._on_beat(B, LivenessBeat(9, 1, pack_keys({quiet_key("f1", 5)})), t)
        h._on_beat(C, LivenessBeat(4, 1, pack_keys({quiet_key("f2", 5)})), t)
    h._on_beat(B, LivenessBeat(10, 0, pack_keys(set())), 0.25)  # B restarted
    assert f1.woken == [{C: 0.2}]  # B's time dropped: it no longer vouches
    h._liveness(0.3)
    assert not f2.woken and not lead.woken
    h._on_beat(B, LivenessBeat(10, 0, None), 0.5)  # B beats on
    h._liveness(0.41)
    h._liveness(0.21 + 3 * HB)  # C silent for a window
    assert len(f2.woken) == 1 and len(lead.woken) == 1  # its follower, and the leader
    lead.coord.quiescent = True
    h.quiet_changed(lead)
    h._on_beat(B, LivenessBeat(10, 0, None), 0.6)
    h._liveness(0.61)  # still silent: the leader is not woken again
    assert len(lead.woken) == 1


def test_hub_wakes_a_follower_never_listed_within_a_window() -> None:
    h = _hub()
    rt = _Rt(h, "ch", R.REPLICA, B)
    h.quiet_changed(rt)
    for t in (0.1, 0.2, 0.25):
        h._on_beat(B, LivenessBeat(9, 1, pack_keys(set())), t)
        h._liveness(t)
    assert not rt.woken
    h._liveness(0.01 + 3 * HB)
    assert len(rt.woken) == 1 and B not in rt.woken[0]


def test_hub_beats_carry_the_set_after_a_change_then_only_the_generation() -> None:
    h = _hub()
    node = h.node
    lead = _Rt(h, "l", R.LEADER, A)
    h.quiet_changed(lead)
    h._send_beats(0.0)
    first = decode_liveness(node.sent[-1][2])
    assert unpack_keys(first.keys or b"") == {quiet_key("l", 5)}
    assert {to for to, _, _ in node.sent} == {B, C}
    h._send_beats(1.0)
    later = decode_liveness(node.sent[-1][2])
    assert later.keys is None and later.generation == first.generation


def test_hub_does_not_judge_its_peers_on_the_first_run_after_its_own_stall() -> None:
    h = _hub()
    rt = _Rt(h, "ch", R.REPLICA, B)
    h.quiet_changed(rt)
    h._on_beat(B, LivenessBeat(9, 1, pack_keys({quiet_key("ch", 5)})), 0.1)
    h._liveness(0.1)
    h._liveness(1.0)  # our loop stalled 0.9 s: B's beats may wait unread in the socket
    assert not rt.woken
    h._liveness(1.03)  # read them all, and none came: B is silent
    assert rt.woken == [{B: 0.1}]

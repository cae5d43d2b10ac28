"""Issue 10 §2 input 2 at the coordinator: a node that starts without hard state (a
restarted node without its data, a channel without a data directory) does not
campaign until a peer has shown it the current state."""

from __future__ import annotations

from typing import Literal

import pytest

from netmesh import PlacementStrategy, ReplicaRole, ReplicationConfig
from netmesh.log.hardstate import HardState, decode, encode
from netmesh.replication.coordinator import ReplicationCoordinator, SaveHardState, Send
from netmesh.replication.messages import (
    Heartbeat,
    SyncRequest,
    SyncResponse,
    VoteKind,
    VoteRequest,
    VoteResponse,
)
from netmesh.testing.sim import SimCluster

IDS = [11, 22, 33]


def coord(
    hs: HardState | None = None,
    ack: Literal["leader", "quorum"] = "leader",
    members: list[int] = IDS,
    tail_seq: int = 0,
    epochs: tuple[tuple[int, int], ...] | None = None,
) -> ReplicationCoordinator:
    cfg = ReplicationConfig(
        factor=len(members),
        heartbeat_ms=100,
        placement=PlacementStrategy.pinned(members),
        ack=ack,
        leader_pinned=None,
    )
    return ReplicationCoordinator(11, cfg, members, hard_state=hs, tail_seq=tail_seq, epochs=epochs)


def votes(outs: list[object]) -> list[VoteRequest]:
    return [o.msg for o in outs if isinstance(o, Send) and isinstance(o.msg, VoteRequest)]


def run_alone(c: ReplicationCoordinator, seconds: float) -> list[object]:
    """Tick a node that hears nobody for ``seconds``, 10 ms apart; all outputs."""
    out: list[object] = []
    t = 0.0
    while t <= seconds:
        out += c.tick(t)
        t += 0.01
    return out


@pytest.mark.parametrize("ack", ["leader", "quorum"])
def test_an_isolated_node_without_hard_state_never_campaigns(
    ack: Literal["leader", "quorum"],
) -> None:
    c = coord(ack=ack)
    assert c.amnesiac
    out = run_alone(c, 5.0)  # 10 silence windows of 0.5 s
    assert votes(out) == []
    assert c.role is ReplicaRole.REPLICA
    if ack == "leader":  # quorum mode withholds for want of a majority already
        assert c.metrics.elections_withheld_total >= 8


def test_an_isolated_node_with_hard_state_leads_alone_in_leader_mode() -> None:
    """The control: the same node with persisted state is a lone survivor and leads."""
    c = coord(hs=HardState(5, None))
    assert not c.amnesiac
    run_alone(c, 5.0)
    assert c.role is ReplicaRole.LEADER
    assert c.metrics.elections_withheld_total == 0


def test_a_single_member_channel_is_never_amnesiac() -> None:
    c = coord(members=[11])
    assert not c.amnesiac
    run_alone(c, 1.0)
    assert c.role is ReplicaRole.LEADER


def test_an_intact_peer_with_an_empty_log_does_not_clear_the_amnesia() -> None:
    """The adversary's input: one empty heartbeat from an intact member proved nothing
    (that member may simply have missed every event another member holds)."""
    c = coord()
    c.tick(0.0)
    c.step(22, Heartbeat(3, ReplicaRole.REPLICA, 10, 10, 3, 3), 0.1)
    c.step(33, Heartbeat(3, ReplicaRole.REPLICA, 0, 0, 0, 0), 0.2)
    assert c.amnesiac


def test_a_majority_of_amnesiac_members_is_a_fresh_channel() -> None:
    """Every member heard is amnesiac and, with this node, they are a majority: nobody
    reachable holds a history, so the channel is new and may elect."""
    c = coord()
    c.tick(0.0)
    c.step(22, Heartbeat(0, ReplicaRole.REPLICA, 0, 0, 0, 0, amnesiac=True), 0.1)
    assert not c.amnesiac
    # once an intact member was heard, amnesiac peers no longer make it fresh
    d = coord()
    d.tick(0.0)
    d.step(33, Heartbeat(2, ReplicaRole.REPLICA, 5, 5, 2, 2), 0.1)
    d.step(22, Heartbeat(0, ReplicaRole.REPLICA, 0, 0, 0, 0, amnesiac=True), 0.2)
    assert d.amnesiac


def vote_answers(outs: list[object]) -> list[VoteResponse]:
    return [o.msg for o in outs if isinstance(o, Send) and isinstance(o.msg, VoteResponse)]


@pytest.mark.parametrize("kind", [VoteKind.PRE, VoteKind.VOTE, VoteKind.FORCE])
def test_an_amnesiac_voter_grants_only_to_the_newest_log_of_enough_intact_members(
    kind: VoteKind,
) -> None:
    """Quorum, 3 nodes: 11 (this node) and 22 acknowledged 200 events, 33 has 100;
    11 lost its state. Hearing only 33, it cannot know 22 holds more: it refuses 33
    (which would otherwise win with its vote and cut 100 committed events from 22).
    Once it has heard both intact members it grants to a log as new as the newest."""
    c = coord(ack="quorum")
    c.tick(0.0)
    c.step(33, Heartbeat(2, ReplicaRole.REPLICA, 100, 100, 2, 2), 0.1)
    ans = vote_answers(c.step(33, VoteRequest(4, 2, 2, 100, kind), 0.2))
    assert [a.granted for a in ans] == [False]
    assert c.metrics.votes_withheld_total == 1
    c.step(22, Heartbeat(2, ReplicaRole.REPLICA, 200, 200, 2, 2), 0.3)
    ans = vote_answers(c.step(33, VoteRequest(5, 2, 2, 100, kind), 0.4))
    assert [a.granted for a in ans] == [False]  # 100 < 200 events
    ans = vote_answers(c.step(22, VoteRequest(5, 2, 2, 200, kind), 0.5))
    assert [a.granted for a in ans] == [True]
    assert c.metrics.votes_withheld_total == 2


def test_the_recovering_flag_is_saved_and_survives_a_restart() -> None:
    """A node that adopted a term while amnesiac saves ``recovering``; restarted from
    that hard state (which now exists) it is still amnesiac; once it has learned the
    current state the flag is saved cleared."""
    c = coord(ack="quorum")
    c.tick(0.0)
    out = c.step(22, Heartbeat(7, ReplicaRole.REPLICA, 10, 10, 7, 7), 0.1)
    saved = [o.state for o in out if isinstance(o, SaveHardState)]
    assert saved and saved[-1].term == 7 and saved[-1].recovering
    assert decode(encode(saved[-1])) == saved[-1]
    again = coord(hs=saved[-1], ack="quorum")
    assert again.amnesiac
    again.tick(0.2)
    out = again.step(22, Heartbeat(8, ReplicaRole.LEADER, 0, 0, 8, 0), 0.2)
    (req,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, SyncRequest)]
    out = again.step(22, SyncResponse(8, req.request_id, 0, 0, 0, ((8, 0),), ()), 0.25)
    assert not again.amnesiac
    saved = [o.state for o in out if isinstance(o, SaveHardState)]
    assert saved and not saved[-1].recovering


def test_a_wiped_member_does_not_elect_a_shorter_log_in_the_simulation() -> None:
    """The adversary's scenario end to end (SimCluster, quorum, 3 nodes): L and F hold
    200 committed events, O went down after 100; all stop; F's disk is wiped; F and O
    come back. Without the vote rule F elects O and L later loses 100 committed
    events; with it nobody leads until L is back, then every node holds all 200."""
    sim = SimCluster(3, seed=5, ack="quorum")
    lead = sim.wait_for_leader()
    f, o = (i for i in sim.ids if i != lead)
    sim.propose([b"e%d" % i for i in range(100)])
    sim.wait_converged()
    sim.crash(o)
    sim.propose([b"e%d" % i for i in range(100, 200)])
    sim.run_heartbeats(5)
    assert len(sim.committed) == 200
    sim.crash(lead)
    sim.wipe(f)
    sim.restart(f)
    sim.restart(o)
    sim.run_heartbeats(40)
    assert sim.leaders() == []
    assert sim.nodes[f].coord.metrics.votes_withheld_total > 0
    sim.restart(lead)
    sim.wait_converged()
    sim.assert_committed_kept()
    assert all(len(n.log) == 200 for n in sim.nodes.values())
    assert not sim.nodes[f].coord.amnesiac


def test_catching_up_with_a_live_leader_clears_the_amnesia() -> None:
    c = coord(ack="quorum")
    c.tick(0.0)
    out = c.step(22, Heartbeat(4, ReplicaRole.LEADER, 0, 0, 4, 0), 0.1)  # leader, empty log
    assert c.leader_id == 22 and c.amnesiac  # it has not adopted the leader's epoch yet
    (req,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, SyncRequest)]
    c.step(22, SyncResponse(4, req.request_id, 0, 0, 0, ((4, 0),), ()), 0.15)
    assert not c.amnesiac
    d = coord()
    d.tick(0.0)
    d.step(22, Heartbeat(4, ReplicaRole.LEADER, 10, 10, 4, 4), 0.1)
    assert d.leader_id == 22 and d.amnesiac  # not in sync yet: 10 events behind


def test_the_amnesia_clears_only_once_the_copied_history_is_durable() -> None:
    """The adversary's F2: under group commit the copied events are written before
    they are synced; clearing at once (and saving ``recovering=False``) would let a
    power cut leave a node flagged intact that lacks events. It clears when the
    storage reports them durable."""
    c = coord(ack="quorum")
    c.durable = 0  # group commit: written, fsync pending
    c.tick(0.0)
    out = c.step(22, Heartbeat(4, ReplicaRole.LEADER, 3, 3, 4, 4), 0.1)
    (req,) = [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, SyncRequest)]
    out = c.step(22, SyncResponse(4, req.request_id, 0, 0, 0, ((4, 0),), (b"a", b"b", b"c")), 0.15)
    assert c.amnesiac
    assert all(o.state.recovering for o in out if isinstance(o, SaveHardState))
    out = c.local_durable(3, 0.2)
    assert not c.amnesiac
    saved = [o.state for o in out if isinstance(o, SaveHardState)]
    assert saved and not saved[-1].recovering


def test_a_recovered_node_never_leads_a_term_of_its_former_life() -> None:
    """The adversary's F3 (leader mode): X leads a term T while cut off with Y and
    writes old-life events; Y crashes; X is wiped, recovers from Z (whose term is
    lower than T) and restarts normally; alone, it used to lead T again with new
    events, and Y, back, kept the old ones under the same term for ever. Every
    incarnation now campaigns above the clock's floor (the simulator runs the
    runtime's rule), so X's new term is above T and one history survives."""
    sim = SimCluster(3, seed=1, ack="leader")
    z = sim.wait_for_leader()
    x, y = (i for i in sim.ids if i != z)
    sim.propose([b"base"])
    sim.wait_converged()
    sim.partition([x, y], [z])
    for _ in range(400):
        sim.step()
        if ReplicaRole.LEADER in (sim.nodes[x].coord.role, sim.nodes[y].coord.role):
            break
    if sim.nodes[y].coord.role is ReplicaRole.LEADER:
        x, y = y, x
    t_old = sim.nodes[x].coord.term
    sim.propose([b"old-%d" % i for i in range(3)], x)
    sim.run_heartbeats(3)
    sim.crash(y)
    sim.wipe(x)
    sim.restart(x)
    sim.heal()
    sim.run_heartbeats(10)
    sim.crash(x)
    sim.restart(x)
    sim.run_heartbeats(2)
    sim.crash(z)
    for _ in range(400):
        sim.step()
        if sim.nodes[x].coord.role is ReplicaRole.LEADER:
            break
    assert sim.nodes[x].coord.role is ReplicaRole.LEADER
    assert sim.nodes[x].coord.term > t_old
    sim.propose([b"new"], x)
    sim.restart(y)
    sim.restart(z)
    sim.wait_converged()
    logs = {tuple(n.log) for n in sim.nodes.values()}
    assert logs == {(b"base", b"new")}, logs


@pytest.mark.parametrize("seed", range(3))
def test_in_leader_mode_an_amnesiac_member_does_not_veto_a_lone_survivor(seed: int) -> None:
    """The adversary's F4: in leader mode the vote protects no acknowledgement, so a
    wiped member votes as any other; refusing kept A, the only intact survivor, from
    leading for ever."""
    sim = SimCluster(3, seed=seed, ack="leader")
    a = sim.wait_for_leader()
    b, x = (i for i in sim.ids if i != a)
    sim.propose([b"e%d" % i for i in range(10)])
    sim.wait_converged()
    sim.crash(b)
    sim.crash(a)
    sim.wipe(x)
    sim.restart(x)
    sim.restart(a)
    assert sim.wait_for_leader(max_heartbeats=100) == a
    sim.wait_converged()
    assert sim.nodes[x].log == sim.nodes[a].log and len(sim.nodes[a].log) == 10


def test_nobody_defers_to_an_amnesiac_member() -> None:
    """A member that cannot campaign (amnesiac) is not the deterministic winner, even
    with the longest log: deferring to it delayed every failover after a restart by
    a randomised window (netmesh bench failover: p50 1.2 s -> 0.48 s)."""
    c = coord(hs=HardState(5, None))
    c.tick(0.0)
    c.step(22, Heartbeat(5, ReplicaRole.LEADER, 0, 0, 5, 0), 0.05)  # the leader...
    c.step(33, Heartbeat(5, ReplicaRole.REPLICA, 10, 0, 5, 5, amnesiac=True), 0.1)
    t, out = 0.1, []
    while not votes(out) and t < 0.05 + 3 * 0.1 + 0.01:  # ...falls silent: one window
        t += 0.01
        c.step(33, Heartbeat(5, ReplicaRole.REPLICA, 10, 0, 5, 5, amnesiac=True), t)
        out = c.tick(t)
    assert votes(out), "campaigned at the end of the first window, without deferring"


def test_in_leader_mode_the_newest_log_of_a_majority_clears_the_amnesia() -> None:
    """netmesh bench failover found it: a restarted (amnesiac) node that had copied
    the most from the killed leader, next to an intact member further behind, never
    campaigned, and the intact one could not win its vote: no leader for good. In
    leader mode a majority heard with no newer log clears it (quorum mode: no)."""
    c = coord(ack="leader")
    c.tick(0.0)
    c.step(22, Heartbeat(5, ReplicaRole.REPLICA, 20, 0, 5, 5), 0.1)  # newer: stays
    assert c.amnesiac
    d = coord(ack="leader", tail_seq=10, epochs=((5, 0),))
    d.tick(0.0)
    assert d.amnesiac
    d.step(22, Heartbeat(5, ReplicaRole.REPLICA, 4, 0, 5, 5), 0.1)  # behind us: clears
    assert not d.amnesiac
    q = coord(ack="quorum", tail_seq=10, epochs=((5, 0),))
    q.tick(0.0)
    q.step(22, Heartbeat(5, ReplicaRole.REPLICA, 4, 0, 5, 5), 0.1)
    assert q.amnesiac

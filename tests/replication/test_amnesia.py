"""Issue 10 §2 input 2 at the coordinator: a node that starts without hard state (a
restarted node without its data, a channel without a data directory) does not
campaign until a peer has shown it the current state."""

from __future__ import annotations

from typing import Literal

import pytest

from netmesh import PlacementStrategy, ReplicaRole, ReplicationConfig
from netmesh.log.hardstate import HardState
from netmesh.replication.coordinator import ReplicationCoordinator, Send
from netmesh.replication.messages import Heartbeat, VoteRequest

IDS = [11, 22, 33]


def coord(
    hs: HardState | None = None,
    ack: Literal["leader", "quorum"] = "leader",
    members: list[int] = IDS,
) -> ReplicationCoordinator:
    cfg = ReplicationConfig(
        factor=len(members),
        heartbeat_ms=100,
        placement=PlacementStrategy.pinned(members),
        ack=ack,
        leader_pinned=None,
    )
    return ReplicationCoordinator(11, cfg, members, hard_state=hs)


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


def test_a_peer_with_an_empty_log_clears_the_amnesia_a_fuller_one_does_not() -> None:
    c = coord()
    c.tick(0.0)
    # a replica's heartbeat showing 10 events: this node may lack them
    c.step(22, Heartbeat(3, ReplicaRole.REPLICA, 10, 10, 3, 3), 0.1)
    assert c.amnesiac
    # a fresh cluster: the other peer holds nothing either
    c.step(33, Heartbeat(0, ReplicaRole.REPLICA, 0, 0, 0, 0), 0.2)
    assert not c.amnesiac


def test_catching_up_with_a_live_leader_clears_the_amnesia() -> None:
    c = coord()
    c.tick(0.0)
    c.step(22, Heartbeat(4, ReplicaRole.LEADER, 0, 0, 4, 0), 0.1)  # leader, empty log
    assert c.leader_id == 22 and not c.amnesiac
    d = coord()
    d.tick(0.0)
    d.step(22, Heartbeat(4, ReplicaRole.LEADER, 10, 10, 4, 4), 0.1)
    assert d.leader_id == 22 and d.amnesiac  # not in sync yet: 10 events behind

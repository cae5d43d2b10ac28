"""Issue 13 §3: terms are owned per node, not per position in a member list, so two
nodes running a channel with different member lists (a placement change in flight)
never campaign in the same term. Pure coordinators, no IO."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh import PlacementStrategy, ReplicaRole, ReplicationConfig
from netmesh.errors import LocalProtocolError
from netmesh.log.hardstate import HardState
from netmesh.replication.coordinator import TERM_SLOTS, ReplicationCoordinator, term_slot

W, X, Y, Z = 5, 10, 20, 30


def leader_mode(members: list[int], me: int, term: int) -> ReplicationCoordinator:
    cfg = ReplicationConfig(
        factor=len(members),
        heartbeat_ms=100,
        placement=PlacementStrategy.pinned(members),
        ack="leader",
        leader_pinned=None,
    )
    return ReplicationCoordinator(me, cfg, members, hard_state=HardState(term))


def lead_alone(c: ReplicationCoordinator) -> int:
    t = 0.0
    while c.role is not ReplicaRole.LEADER:
        assert t < 5.0, "a lone survivor with its state leads in leader mode"
        c.tick(t)
        t += 0.01
    return c.term


def test_two_member_lists_never_lead_the_same_term() -> None:
    """The adversary's input: X runs the channel with {X, Y}, W with {W, X, Y, Z}
    (W's list already has the change); both at term 3, cut off, lead alone. With
    ``term % n == index`` both took term 4 (X index 0 of 2, W index 0 of 4) and, once
    the lists agreed, held two histories under one term. Now their terms differ, each
    owned by its node."""
    tx = lead_alone(leader_mode([X, Y], X, 3))
    tw = lead_alone(leader_mode([W, X, Y, Z], W, 3))
    assert tx != tw
    assert tx % TERM_SLOTS == term_slot(X) and tw % TERM_SLOTS == term_slot(W)


@given(
    st.lists(st.integers(1, (1 << 64) - 1), min_size=2, max_size=6, unique_by=term_slot),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 40),
    st.data(),
)
def test_owned_terms_do_not_depend_on_the_member_list(
    ids: list[int], t1: int, t2: int, data: st.DataObject
) -> None:
    a, b = ids[0], ids[1]
    la = [a, *data.draw(st.lists(st.sampled_from(ids[1:]), unique=True))]
    lb = [b, *data.draw(st.lists(st.sampled_from([i for i in ids if i != b]), unique=True))]
    ca = leader_mode(la, a, t1)
    cb = leader_mode(lb, b, t2)
    ta, tb = ca._next_owned_term(), cb._next_owned_term()
    assert ta > t1 and tb > t2 and ta != tb
    assert ta - t1 <= TERM_SLOTS and tb - t2 <= TERM_SLOTS


def test_two_members_with_one_slot_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="same terms"):
        leader_mode([X, X + TERM_SLOTS], X, 0)

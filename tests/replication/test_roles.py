"""Every (role, signal) pair: legal -> the table's role, otherwise InvalidTransition."""

from __future__ import annotations

import itertools

import pytest

from netmesh.errors import InvalidTransition, LocalProtocolError
from netmesh.replication.roles import (
    TRANSITIONS,
    ReplicaRole,
    TransitionSignal,
    format_table,
    transition,
)

R, S = ReplicaRole, TransitionSignal

EXPECTED = {
    (R.IDLE, S.CAPABILITY_SELECTED): R.REPLICA,
    (R.REPLICA, S.MISSED_HEARTBEATS): R.CANDIDATE,
    (R.CANDIDATE, S.ELECTION_WON): R.LEADER,
    (R.CANDIDATE, S.ELECTION_LOST): R.REPLICA,
    (R.CANDIDATE, S.HIGHER_TERM_SEEN): R.REPLICA,
    (R.LEADER, S.HIGHER_TERM_SEEN): R.REPLICA,
    (R.LEADER, S.MISSED_HEARTBEATS): R.REPLICA,
    **{(r, S.STEP_DOWN): R.IDLE for r in (R.REPLICA, R.CANDIDATE, R.LEADER)},
    **{(r, S.CHANNEL_CLOSE): R.IDLE for r in R},
    **{(r, S.STORAGE_FAILED): R.FAILED for r in R if r is not R.FAILED},
}

PAIRS = list(itertools.product(R, S))


def test_table_is_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("role", "signal"), PAIRS, ids=lambda x: x.name)
def test_every_pair(role: ReplicaRole, signal: TransitionSignal) -> None:
    if (role, signal) in EXPECTED:
        assert transition(role, signal) is EXPECTED[(role, signal)]
        assert transition(role, signal, EXPECTED[(role, signal)]) is EXPECTED[(role, signal)]
    else:
        with pytest.raises(InvalidTransition):
            transition(role, signal)


@pytest.mark.parametrize(
    ("role", "signal", "target"),
    [(r, s, t) for r, s, t in itertools.product(R, S, R) if EXPECTED.get((r, s)) not in (None, t)],
)
def test_wrong_target_is_rejected(
    role: ReplicaRole, signal: TransitionSignal, target: ReplicaRole
) -> None:
    with pytest.raises(InvalidTransition):
        transition(role, signal, target)


def test_reference_invalid_pairs_and_error_kind() -> None:
    for role in (R.REPLICA, R.IDLE):
        with pytest.raises(LocalProtocolError):
            transition(role, S.ELECTION_WON, R.LEADER)
    with pytest.raises(InvalidTransition):
        transition(R.LEADER, S.MISSED_HEARTBEATS, R.CANDIDATE)


def test_wire_bytes_and_printable_table() -> None:
    assert [int(r) for r in (R.LEADER, R.REPLICA, R.CANDIDATE, R.IDLE, R.FAILED)] == [0, 1, 2, 3, 4]
    text = format_table()
    assert len(text.splitlines()) == len(TRANSITIONS)
    assert "CANDIDATE" in text and "ELECTION_WON" in text

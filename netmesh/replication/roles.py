"""Replica roles and the table of legal role transitions.

Theory of operation
-------------------
Rule 1: every legal role change is one row of :data:`TRANSITIONS`, keyed by
``(from_role, signal)`` and giving the new role. Nothing else may change a role:
the coordinator calls :func:`transition` for every change, so an illegal change is a
bug that raises :class:`~netmesh.errors.InvalidTransition` (a ``LocalProtocolError``).

Rule 2: a signal names *why* the role changes, not what the new role is. The
reference API gives both (``transition_to(role, signal)``); the pair is legal iff
``TRANSITIONS[(from, signal)] == role``.

Signals (reference names where one exists):

* ``CAPABILITY_SELECTED``: Idle -> Replica. The node holds the channel (bootstrap).
* ``MISSED_HEARTBEATS``: Replica -> Candidate (the believed leader fell silent, or
  the node challenges / takes over as pinned leader); Leader -> Replica (quorum
  mode "check quorum": the leader has not heard a majority for the silence window).
* ``ELECTION_WON``: Candidate -> Leader.
* ``ELECTION_LOST``: Candidate -> Replica.
* ``HIGHER_TERM_SEEN``: Candidate or Leader -> Replica (a message carried a higher
  term; the reference's ``PeerLeaderObserved``).
* ``STEP_DOWN``: Replica, Candidate or Leader -> Idle (graceful relinquish, disk
  pressure withdraw).
* ``CHANNEL_CLOSE``: any role -> Idle, including Idle -> Idle (the close path must
  never fail; the reference allows exactly this one self-transition).
* ``STORAGE_FAILED``: any live role -> Failed. A write, fsync, truncate or hard-state
  save failed; the channel stops (fail-stop, h11's ERROR state) until it is closed
  and reopened. Failed takes no input and sends nothing; only ``CHANNEL_CLOSE``
  leaves it.

Wire bytes of the roles follow the reference: Leader=0, Replica=1, Candidate=2, Idle=3;
Failed=4 is ours (a failed node sends nothing, so it never appears on the wire).
"""

from __future__ import annotations

import enum

from netmesh.errors import InvalidTransition


class ReplicaRole(enum.IntEnum):
    """Role of one node for one replicated channel (values are the reference wire bytes)."""

    LEADER = 0
    REPLICA = 1
    CANDIDATE = 2
    IDLE = 3
    FAILED = 4


class TransitionSignal(enum.Enum):
    """Why a role changes; see the module docstring for each signal's meaning."""

    CAPABILITY_SELECTED = "capability_selected"
    MISSED_HEARTBEATS = "missed_heartbeats"
    ELECTION_WON = "election_won"
    ELECTION_LOST = "election_lost"
    HIGHER_TERM_SEEN = "higher_term_seen"
    STEP_DOWN = "step_down"
    CHANNEL_CLOSE = "channel_close"
    STORAGE_FAILED = "storage_failed"


R = ReplicaRole
S = TransitionSignal

TRANSITIONS: dict[tuple[ReplicaRole, TransitionSignal], ReplicaRole] = {
    (R.IDLE, S.CAPABILITY_SELECTED): R.REPLICA,
    (R.REPLICA, S.MISSED_HEARTBEATS): R.CANDIDATE,
    (R.CANDIDATE, S.ELECTION_WON): R.LEADER,
    (R.CANDIDATE, S.ELECTION_LOST): R.REPLICA,
    (R.CANDIDATE, S.HIGHER_TERM_SEEN): R.REPLICA,
    (R.LEADER, S.HIGHER_TERM_SEEN): R.REPLICA,
    (R.LEADER, S.MISSED_HEARTBEATS): R.REPLICA,
    (R.REPLICA, S.STEP_DOWN): R.IDLE,
    (R.CANDIDATE, S.STEP_DOWN): R.IDLE,
    (R.LEADER, S.STEP_DOWN): R.IDLE,
    (R.IDLE, S.CHANNEL_CLOSE): R.IDLE,
    (R.REPLICA, S.CHANNEL_CLOSE): R.IDLE,
    (R.CANDIDATE, S.CHANNEL_CLOSE): R.IDLE,
    (R.LEADER, S.CHANNEL_CLOSE): R.IDLE,
    (R.FAILED, S.CHANNEL_CLOSE): R.IDLE,
    (R.IDLE, S.STORAGE_FAILED): R.FAILED,
    (R.REPLICA, S.STORAGE_FAILED): R.FAILED,
    (R.CANDIDATE, S.STORAGE_FAILED): R.FAILED,
    (R.LEADER, S.STORAGE_FAILED): R.FAILED,
}
"""(from role, signal) -> new role. Every pair not listed is illegal."""

del R, S


def transition(
    role: ReplicaRole, signal: TransitionSignal, target: ReplicaRole | None = None
) -> ReplicaRole:
    """Return the role ``signal`` moves ``role`` to.

    Args:
        role: the current role.
        signal: why the role changes.
        target: if given, the role the caller expects; it must match the table.

    Raises:
        InvalidTransition: ``(role, signal)`` is not in :data:`TRANSITIONS`, or it
            leads somewhere other than ``target``.
    """
    new = TRANSITIONS.get((role, signal))
    if new is None:
        raise InvalidTransition(f"no transition from {role.name} on {signal.name}")
    if target is not None and new is not target:
        raise InvalidTransition(
            f"{role.name} on {signal.name} leads to {new.name}, not {target.name}"
        )
    return new


def format_table() -> str:
    """The transition table as aligned text (one row per legal transition)."""
    rows = [f"{f.name:<9} --{s.name:<19}--> {t.name}" for (f, s), t in TRANSITIONS.items()]
    return "\n".join(rows)

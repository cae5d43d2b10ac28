"""Coordinator scenarios: direct steps on one coordinator, and small fault-free clusters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from netmesh.config import PlacementStrategy, ReplicationConfig
from netmesh.errors import InvalidTransition, LocalProtocolError
from netmesh.log.hardstate import HardState
from netmesh.replication.coordinator import (
    TERM_SLOTS,
    Apply,
    CommitAdvanced,
    ReplicationCoordinator,
    RoleChanged,
    SaveHardState,
    Send,
    ServeSync,
    Truncate,
    epoch_end,
    first_conflict,
    own_end,
    term_at,
    term_slot,
)
from netmesh.replication.messages import (
    Ack,
    Heartbeat,
    Nack,
    NackReason,
    SyncRequest,
    SyncResponse,
    VoteKind,
    VoteRequest,
    VoteResponse,
)
from netmesh.replication.roles import ReplicaRole, TransitionSignal
from netmesh.testing.sim import SimCluster

A, B, C = 10, 20, 30
R, S = ReplicaRole, TransitionSignal
HB = 0.1


def cfg(**kw: object) -> ReplicationConfig:
    base = ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))
    return replace(base, **kw)  # type: ignore[arg-type]


def sends(out: list, kind: type) -> list:
    return [o for o in out if isinstance(o, Send) and isinstance(o.msg, kind)]


def replica(config: ReplicationConfig | None = None, **kw: object) -> ReplicationCoordinator:
    c = ReplicationCoordinator(B, config or cfg(), [A, B], **kw)  # type: ignore[arg-type]
    c.tick(0.0)
    assert c.role is R.REPLICA
    return c


def leader_hb(
    term: int,
    tail: int,
    commit: int = 0,
    epoch_term: int | None = None,
    last_term: int | None = None,
) -> Heartbeat:
    et = term if epoch_term is None else epoch_term
    return Heartbeat(term, R.LEADER, tail, commit, et, et if last_term is None else last_term)


def manual_leader(c: ReplicationCoordinator, now: float = 0.0) -> list:
    out = c.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, now)
    out += c.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, now)
    out += c.transition_to(R.LEADER, S.ELECTION_WON, now)
    return out


# ------------------------------------------------------------------ epoch helpers


@pytest.mark.parametrize(
    ("epochs", "seq", "term"),
    [
        ((), 5, 0),
        (((1, 0),), -1, 0),
        (((1, 0), (3, 5)), 4, 1),
        (((1, 0), (3, 5)), 5, 3),
        (((2, 3),), 1, 0),
    ],
)
def test_term_at(epochs: tuple, seq: int, term: int) -> None:
    assert term_at(epochs, seq) == term


def test_epoch_end_and_own_end() -> None:
    leader = ((1, 0), (3, 5))
    assert epoch_end(leader, 2, 9) == (1, 5)
    assert epoch_end(leader, 3, 9) == (3, 9)
    assert epoch_end(((4, 0),), 2, 9) == (0, 0)
    assert own_end(((1, 0), (2, 4)), 1, 8) == 4
    assert own_end(((1, 0),), 1, 8) == 8


def test_first_conflict() -> None:
    assert first_conflict(((1, 0), (2, 4)), ((1, 0), (3, 5)), 2, 8) == 4
    assert first_conflict(((1, 0),), ((1, 0),), 0, 8) is None
    assert first_conflict(((1, 0),), ((1, 0),), 5, 5) is None


# ------------------------------------------------------------------ roles, manual drive


def test_not_a_member_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ReplicationCoordinator(99, cfg(), [A, B])


def test_bootstrap_on_first_tick_then_manual_capability_selected_is_a_noop() -> None:
    c = ReplicationCoordinator(B, cfg(), [A, B])
    assert c.role is R.IDLE
    out = c.tick(0.0)
    assert RoleChanged(R.IDLE, R.REPLICA, 0) in out
    assert c.transition_to(R.REPLICA, S.CAPABILITY_SELECTED) == []
    with pytest.raises(InvalidTransition):
        c.transition_to(R.LEADER, S.ELECTION_WON)
    assert c.role is R.REPLICA


def test_reference_manual_path_bumps_term_and_replica_follows() -> None:
    a = ReplicationCoordinator(A, cfg(), [A, B], auto_bootstrap=False)
    b = ReplicationCoordinator(B, cfg(), [A, B], auto_bootstrap=False)
    out = manual_leader(a)
    assert a.role is R.LEADER and a.term > 0 and a.metrics.leader_changes_total == 1
    assert any(isinstance(o, SaveHardState) for o in out)
    b.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, 0.0)
    for hb in sends(out, Heartbeat):
        b.step(A, hb.msg, 0.01)
    assert b.term == a.term and b.leader_id == A and b.role is R.REPLICA
    assert b.metrics.replica_lag_seconds is not None


def test_step_down_and_close() -> None:
    c = replica()
    c.transition_to(R.IDLE, S.STEP_DOWN, 0.1)
    assert c.role is R.IDLE
    assert c.tick(5.0) == [] and c.role is R.IDLE  # no re-bootstrap, no heartbeats
    assert c.transition_to(R.IDLE, S.CHANNEL_CLOSE) == []


# ------------------------------------------------------------------ elections


def test_lone_survivor_in_leader_mode_wins_after_silence() -> None:
    c = replica(hard_state=HardState())  # a survivor with its state (not amnesiac)
    c.step(A, leader_hb(1, 0), 0.05)
    c.tick(0.05 + 3 * HB - 0.01)
    assert c.role is R.REPLICA
    out = c.tick(0.05 + 3 * HB)
    assert c.role is R.LEADER and c.metrics.elections_total == 1
    assert RoleChanged(R.CANDIDATE, R.LEADER, c.term) in out
    assert c.term % TERM_SLOTS == term_slot(B)  # a term B owns


def test_quorum_mode_needs_a_majority_and_prevote() -> None:
    c3 = cfg(ack="quorum", placement=PlacementStrategy.pinned([A, B, C]), factor=3)
    c = ReplicationCoordinator(B, c3, [A, B, C], hard_state=HardState())
    c.tick(0.0)
    c.tick(1.0)  # heard nobody: no campaign (pre-vote), stays replica at term 0
    assert c.role is R.REPLICA and c.term == 0
    c.step(C, Heartbeat(0, R.REPLICA, 0, 0, 0, 0), 1.05)
    out = c.tick(1.31)
    pre = sends(out, VoteRequest)
    assert c.role is R.CANDIDATE and len(pre) == 2 and pre[0].msg.kind is VoteKind.PRE
    assert c.term == 0, "a pre-vote does not take the term"
    out = c.step(C, VoteResponse(pre[0].msg.term, True, True), 1.32)
    votes = sends(out, VoteRequest)
    assert len(votes) == 2 and votes[0].msg.kind is VoteKind.VOTE
    assert c.term == pre[0].msg.term and any(isinstance(o, SaveHardState) for o in out)
    out = c.step(C, VoteResponse(c.term, True), 1.33)
    assert c.role is R.LEADER


def test_voter_grants_once_per_term_and_only_to_up_to_date_logs() -> None:
    c = replica(tail_seq=5, hard_state=HardState(2, None, ((2, 0),)))
    out = c.step(A, VoteRequest(4, 2, 2, 4), 0.1)
    assert sends(out, VoteResponse)[0].msg == VoteResponse(4, False)
    out = c.step(A, VoteRequest(6, 2, 2, 5), 0.2)
    assert sends(out, VoteResponse)[0].msg == VoteResponse(6, True)
    assert c.hard_state.voted_for == A
    out = c.step(A, VoteRequest(5, 2, 2, 9), 0.3)
    assert sends(out, VoteResponse)[0].msg == VoteResponse(6, False)


def test_pinned_leader_wins_when_healthy() -> None:
    sim = SimCluster(3, seed=3, ack="quorum", pinned=2)
    assert sim.wait_for_leader() == sim.ids[2]
    sim2 = SimCluster(3, seed=3, ack="leader", pinned=1)
    assert sim2.wait_for_leader() == sim2.ids[1]


def test_pinned_leader_takes_over_again_after_restart() -> None:
    sim = SimCluster(3, seed=4, ack="quorum", pinned=0)
    pinned = sim.wait_for_leader()
    sim.crash(pinned)
    sim.run_heartbeats(6)
    other = sim.wait_for_leader()
    assert other != pinned
    sim.propose([b"x", b"y"])
    sim.restart(pinned)
    sim.run_heartbeats(12)
    assert sim.leaders() == [pinned]
    sim.wait_converged()


@pytest.mark.parametrize("ack", ["leader", "quorum"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_bootstrap_elects_exactly_one_leader(ack: str, n: int) -> None:
    sim = SimCluster(n, seed=n, ack=ack)  # type: ignore[arg-type]
    lead = sim.wait_for_leader()
    sim.run_heartbeats(20)
    assert sim.leaders() == [lead]
    if n > 1:
        assert min(sim.ids) == lead  # equal logs: lowest node id wins


# ------------------------------------------------------------------ catch-up


def test_behind_replica_requests_and_applies() -> None:
    c = replica()
    out = c.step(A, leader_hb(1, 3, commit=0), 0.05)
    req = sends(out, SyncRequest)[0].msg
    assert (req.from_seq, req.last_term, req.max_bytes) == (0, 0, c.config.sync_chunk_bytes)
    resp = SyncResponse(1, req.request_id, 0, 0, 2, ((1, 0),), (b"a", b"b", b"c"))
    out = c.step(A, resp, 0.06)
    assert Apply(0, (b"a", b"b", b"c"), 1) in out
    assert sends(out, Ack)[0].msg == Ack(1, 3)
    assert CommitAdvanced(2) in out and c.tail_seq == 3
    assert c.step(A, resp, 0.07) == [Send(A, Ack(1, 3))]  # duplicate: nothing applied


def test_reordered_and_overlapping_responses_are_idempotent() -> None:
    c = replica()
    c.step(A, leader_hb(1, 4), 0.05)
    later = SyncResponse(1, 0, 2, 1, 0, ((1, 0),), (b"c", b"d"))
    assert not any(isinstance(o, Apply) for o in c.step(A, later, 0.06))  # gap: ignored
    c.step(A, SyncResponse(1, 0, 0, 0, 0, ((1, 0),), (b"a", b"b", b"c")), 0.07)
    out = c.step(A, later, 0.08)
    assert Apply(3, (b"d",), 1) in out and c.tail_seq == 4


def test_lost_request_is_retried_after_a_heartbeat() -> None:
    c = replica()
    first = sends(c.step(A, leader_hb(1, 3), 0.05), SyncRequest)
    assert first and not sends(c.tick(0.1), SyncRequest)
    c.step(A, leader_hb(1, 3), 0.12)
    again = sends(c.tick(0.16), SyncRequest)
    assert again and again[0].msg.request_id != first[0].msg.request_id
    assert c.metrics.sync_requests_total == 2


def test_leader_serves_in_chunks_and_counts_bytes() -> None:
    a = ReplicationCoordinator(A, cfg(), [A, B])
    a.tick(0.0)
    manual_leader(a)
    a.local_appended(3, 0.01)
    out = a.step(B, SyncRequest(a.term, 0, 0, 10, 77), 0.02)
    assert out == [ServeSync(B, 0, 10, 77)]
    out = a.serve(out[0], [b"a", b"b", b"c"], 0.02)
    resp = sends(out, SyncResponse)[0].msg
    assert (resp.first_seq, resp.payloads, resp.request_id) == (0, (b"a", b"b", b"c"), 77)
    assert a.metrics.sync_bytes_total == 47 + 3 * 13


def test_backpressure_nack_then_retry() -> None:
    a = ReplicationCoordinator(
        A, cfg(nic_peak_bytes_per_s=100, replication_budget_fraction=1.0), [A, B]
    )
    a.tick(0.0)
    manual_leader(a)
    a.local_appended(2, 0.0)
    req = a.step(B, SyncRequest(a.term, 0, 0, 4096, 5), 0.0)[0]
    out = a.serve(req, [b"x" * 40, b"y" * 40], 0.0)  # 47 + 104 > 100: oversize, bucket full
    assert sends(out, SyncResponse)
    out = a.serve(req, [b"x" * 40, b"y" * 40], 0.1)
    assert sends(out, Nack)[0].msg.reason is NackReason.BACKPRESSURE
    assert a.metrics.under_capacity_total == 1
    b = replica()
    out = b.step(A, leader_hb(a.term, 2), 0.0)
    rid = sends(out, SyncRequest)[0].msg.request_id
    b.step(A, Nack(a.term, rid, NackReason.BACKPRESSURE, 0), 0.01)
    assert not sends(b.tick(0.03), SyncRequest)  # backing off
    assert sends(b.tick(0.07), SyncRequest)  # retried


def test_min_push_gap_holds_back_pushes_and_says_when() -> None:
    a = ReplicationCoordinator(A, cfg(), [A, B], max_inflight=8, min_push_gap=0.001)
    a.tick(0.0)
    manual_leader(a)
    a.step(B, Ack(a.term, 0), 0.010)  # streaming now
    assert a.local_appended(1, 0.0100) == [ServeSync(B, 0, a.config.sync_chunk_bytes, 0)]
    assert a.local_appended(3, 0.0104) == []  # 0.4 ms after the last push: held back
    assert a.push_due == pytest.approx(0.011)
    assert a.local_appended(5, 0.0106) == [] and a.push_due == pytest.approx(0.011)
    out = a.local_appended(5, 0.0111)  # due: one push carries everything held back
    assert out == [ServeSync(B, 1, a.config.sync_chunk_bytes, 0)]
    assert a.push_due is None
    a.step(B, Ack(a.term, 5), 0.0112)
    big = 5 + a.push_batch_events  # a bulk of events is never held back
    assert a.local_appended(big, 0.0113) == [ServeSync(B, 5, a.config.sync_chunk_bytes, 0)]


def test_push_to_streaming_follower_after_local_append() -> None:
    a = ReplicationCoordinator(A, cfg(), [A, B])
    a.tick(0.0)
    manual_leader(a)
    assert not any(isinstance(o, ServeSync) for o in a.local_appended(1, 0.01))  # probing
    out = a.step(B, Ack(a.term, 0), 0.02)  # B adopted the epoch: streaming
    assert ServeSync(B, 0, a.config.sync_chunk_bytes, 0) in out
    out = a.local_appended(2, 0.03)
    assert out == [ServeSync(B, 1, a.config.sync_chunk_bytes, 0)]
    for _ in range(5):
        a.local_appended(a.tail_seq + 1, 0.04)
    pushes = a._progress[B].inflight
    assert pushes == a.max_inflight


@pytest.mark.parametrize(
    ("push_bytes", "nic_peak", "expected"),
    [
        (None, None, 256 * 1024),  # default: sync_chunk_bytes
        (1 << 20, None, 1 << 20),  # unbudgeted: as asked
        (1 << 20, 1_000_000, 500_000 - 47),  # never above the budget's burst (0.5 x 1 MB)
        (1 << 20, 100_000, 256 * 1024),  # ... nor below sync_chunk_bytes
        (1024, None, 256 * 1024),
    ],
)
def test_pushes_carry_push_bytes_and_requests_sync_chunk_bytes(
    push_bytes: int | None, nic_peak: int | None, expected: int
) -> None:
    config = cfg(nic_peak_bytes_per_s=nic_peak, replication_budget_fraction=0.5)
    a = ReplicationCoordinator(A, config, [A, B], push_bytes=push_bytes)
    a.tick(0.0)
    manual_leader(a)
    a.local_appended(5, 0.01)
    out = a.step(B, Ack(a.term, 0), 0.02)
    assert ServeSync(B, 0, expected, 0) in out
    out = a.step(B, SyncRequest(a.term, 0, 0, 1 << 30, 9), 0.03)
    assert ServeSync(B, 0, config.sync_chunk_bytes, 9) in out


# ------------------------------------------------------------------ terms and divergence


def test_higher_term_fences_old_leader() -> None:
    a = ReplicationCoordinator(A, cfg(), [A, B])
    a.tick(0.0)
    manual_leader(a)
    old = a.term
    out = a.step(B, Heartbeat(old + 1, R.LEADER, 0, 0, old + 1, 0), 0.1)
    assert a.role is R.REPLICA and a.term == old + 1
    assert RoleChanged(R.LEADER, R.REPLICA, old + 1) in out
    out = a.step(B, SyncRequest(old, 0, 0, 100, 1), 0.11)
    assert sends(out, Nack)[0].msg.reason is NackReason.NOT_LEADER


def test_divergent_suffix_is_truncated_then_refetched() -> None:
    # B led term 2 and wrote seqs 4..7 nobody else got; A leads a term > 3 from seq 5.
    b = replica(tail_seq=8, hard_state=HardState(2, B, ((1, 0), (2, 4))))
    out = b.step(A, leader_hb(3, 6, epoch_term=3, last_term=3), 0.05)
    req = sends(out, SyncRequest)[0].msg
    assert (req.from_seq, req.last_term) == (8, 2)
    a = ReplicationCoordinator(
        A, cfg(), [A, B], tail_seq=5, hard_state=HardState(2, None, ((1, 0),))
    )
    a.tick(0.0)
    manual_leader(a)
    a.local_appended(6, 0.01)
    t = a.term  # A's first owned term above 3 (term_slot)
    assert t > 3 and t % TERM_SLOTS == term_slot(A) and a.epochs == ((1, 0), (t, 5))
    nack = sends(a.step(B, replace(req, term=t), 0.05), Nack)[0].msg
    assert nack.reason is NackReason.DIVERGED
    b.step(A, leader_hb(t, 6, epoch_term=t, last_term=t), 0.05)
    req = sends(b.tick(0.2), SyncRequest)[0].msg
    nack = replace(nack, request_id=req.request_id)
    assert nack.epoch_term == 1 and nack.epoch_end == 5
    out = b.step(A, nack, 0.06)
    assert Truncate(4) in out and b.tail_seq == 4
    assert b.metrics.truncated_events_total == 4
    req2 = sends(out, SyncRequest)[0].msg
    assert (req2.from_seq, req2.last_term) == (4, 1)


def test_conflicting_push_truncates_from_first_conflict() -> None:
    b = replica(tail_seq=6, hard_state=HardState(2, None, ((1, 0), (2, 4))))
    b.step(A, leader_hb(3, 6, epoch_term=3, last_term=3), 0.05)
    resp = SyncResponse(3, 0, 3, 1, 0, ((1, 0), (3, 4)), (b"d", b"E", b"F"))
    out = b.step(A, resp, 0.06)
    assert out.index(Truncate(4)) < out.index(Apply(4, (b"E", b"F"), 3))
    assert b.epochs == ((1, 0), (3, 4)) and b.tail_seq == 6


def test_quorum_commit_counts_current_term_acks_only() -> None:
    c3 = cfg(ack="quorum", placement=PlacementStrategy.pinned([A, B, C]), factor=3)
    a = ReplicationCoordinator(A, c3, [A, B, C], tail_seq=4, hard_state=HardState(1, A, ((1, 0),)))
    a.tick(0.0)
    a.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, 0.0)
    with pytest.raises(InvalidTransition, match="majority"):  # quorum: no hand-made leader
        a.transition_to(R.LEADER, S.ELECTION_WON, 0.0)
    assert a.role is R.CANDIDATE
    a.step(B, VoteResponse(a.term, True), 0.0)  # B's grant makes the majority
    assert a.role is R.LEADER
    assert a.commit_seq == 0
    a.local_appended(6, 0.01)
    a.step(B, Ack(a.term, 5), 0.02)
    assert a.commit_seq == 5
    a.step(C, Heartbeat(a.term, R.REPLICA, 6, 0, a.term, a.term), 0.03)
    assert a.commit_seq == 6
    a.step(B, Ack(a.term - 1, 6), 0.04)
    assert a.metrics.commit_seq == 6


@pytest.mark.parametrize("ack", ["leader", "quorum"])
def test_isolated_leader_replaced_and_catches_up_after_heal(ack: str) -> None:
    sim = SimCluster(3, seed=11, ack=ack)  # type: ignore[arg-type]
    old = sim.wait_for_leader()
    sim.propose([b"a", b"b"])
    sim.run_heartbeats(3)
    sim.isolate(old)
    sim.run_heartbeats(8)
    new = max((i for i in sim.leaders() if i != old), key=lambda i: sim.nodes[i].coord.term)
    sim.propose([b"c"], node_id=new)
    sim.heal()
    lead = sim.wait_converged()
    assert lead == new and sim.nodes[old].log == [b"a", b"b", b"c"]


def test_leader_mode_split_brain_heals_to_newest_history() -> None:
    sim = SimCluster(3, seed=12, ack="leader")
    old = sim.wait_for_leader()
    sim.propose([b"a"])
    sim.run_heartbeats(3)
    sim.isolate(old)
    sim.run_heartbeats(8)
    sim.propose([b"lost"], node_id=old)  # old leader still believes it leads
    new = next(i for i in sim.leaders() if i != old)
    sim.propose([b"kept"], node_id=new)
    sim.heal()
    sim.wait_converged()
    assert sim.nodes[old].log == [b"a", b"kept"]
    assert sim.nodes[old].coord.metrics.truncated_events_total == 1


def test_three_node_fan_out_like_reference() -> None:
    sim = SimCluster(3, seed=5, ack="leader")
    lead = sim.wait_for_leader()
    for i in range(24):
        sim.propose([f"event-{i}".encode()])
    sim.wait_converged()
    for node in sim.nodes.values():
        assert node.log == [f"event-{i}".encode() for i in range(24)]
    m = sim.nodes[lead].coord.metrics
    assert m.sync_bytes_total > 0 and m.under_capacity_total == 0 and m.heartbeats_sent_total > 0


# ------------------------------------------------------------------ dispatch table


def test_step_table_covers_every_role_and_message_type() -> None:
    from typing import get_args

    from netmesh.replication.coordinator import STEP_TABLE, TICK_TABLE, format_step_table
    from netmesh.replication.messages import Message

    types = get_args(Message)
    assert set(STEP_TABLE) == {(r, t) for r in R for t in types}
    assert set(TICK_TABLE) == set(R)
    text = format_step_table()
    print(text)
    assert len(text.splitlines()) == len(R) * len(types)
    for role in (R.IDLE, R.FAILED):  # take no input at all
        assert all(STEP_TABLE[(role, t)].__name__ == "_drop" for t in types)
    assert STEP_TABLE[(R.LEADER, Ack)].__name__ == "_leader_ack"
    assert STEP_TABLE[(R.CANDIDATE, VoteResponse)].__name__ == "_candidate_vote_response"


def test_epochs_come_from_the_log_with_saved_history_and_empty_newest_epoch() -> None:
    from netmesh.replication.coordinator import _merge_epochs as merge

    # crash after Apply, before SaveHardState: the log knows Y's term, the save does not
    assert merge(((3, 0), (5, 10)), ((3, 0),), 20) == ((3, 0), (5, 10))
    # crash after Truncate + Apply of a newer leader's events, before the save: the
    # saved (stale) epoch 4 is replaced by what the log says
    assert merge(((3, 0), (5, 10)), ((3, 0), (4, 10)), 20) == ((3, 0), (5, 10))
    # a new leader's empty epoch (no record carries it) survives from the save
    assert merge(((3, 0),), ((3, 0), (6, 10)), 10) == ((3, 0), (6, 10))
    # history before the retained head (or a log restart) comes from the save
    assert merge(((4, 100),), ((3, 0), (4, 100)), 300) == ((3, 0), (4, 100))
    assert merge((), ((7, 0),), 500) == ((7, 0),)
    # a log without terms: the saved epochs up to the tail, as before
    assert merge(None, ((3, 0), (4, 10)), 10) == ((3, 0), (4, 10))


def quorum_leader(c: ReplicationCoordinator) -> None:
    """Make ``c`` (members A, B, C) the quorum leader: a forced campaign B grants."""
    c.tick(0.0)
    c.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, 0.0)
    c.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, 0.0)
    c.step(B, VoteResponse(c.term, True), 0.001)
    assert c.role is R.LEADER


def test_the_leader_counts_itself_towards_the_commit_only_up_to_its_durable_tail() -> None:
    """Group commit writes before it syncs: with 3 members, one follower holding 5
    events and the leader's own fsync round still pending, nothing is committed (before:
    the leader's written-but-unsynced tail made a majority with that follower, so
    commit_seq ran ahead of the copies that survive a power cut); the round completing
    commits (Raft thesis §10.2.1)."""
    three = cfg(factor=3, ack="quorum", placement=PlacementStrategy.pinned([A, B, C]))
    a = ReplicationCoordinator(A, three, [A, B, C], hard_state=HardState())
    quorum_leader(a)
    a.step(B, Ack(a.term, 0), 0.01)
    a.local_appended(5, 0.02, durable_seq=0)
    a.step(B, Ack(a.term, 5), 0.03)
    assert a.commit_seq == 0
    out = a.local_durable(5, 0.04)
    assert a.commit_seq == 5 and CommitAdvanced(5) in out
    # a storage that syncs before returning reports nothing: its tail counts at once
    b = ReplicationCoordinator(A, three, [A, B, C], hard_state=HardState())
    quorum_leader(b)
    b.step(B, Ack(b.term, 0), 0.01)
    b.local_appended(5, 0.02)
    b.step(B, Ack(b.term, 5), 0.03)
    assert b.commit_seq == 5

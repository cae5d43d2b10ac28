"""Catch-up streams (issue 15 §5): a persisted leader answers one SyncRequest far behind
its tail with raw-record chunks marked ``more`` (all but the one at its tail), at most
SYNC_BURST_CHUNKS x sync_chunk_bytes of them not yet applied by the replica. The
replica keeps its request outstanding and credits each chunk it applies (a SyncRequest
from its new tail with the stream's request id), which lets the next chunk go; a gap (a
lost chunk) or the last chunk makes it ask again from its tail at once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from netmesh.config import PlacementStrategy, RedexFileConfig, ReplicationConfig
from netmesh.log.file import RedexFile
from netmesh.replication.coordinator import (
    SYNC_BURST_CHUNKS,
    ApplyRecords,
    Output,
    ReplicationCoordinator,
    Send,
    ServeSync,
)
from netmesh.replication.executor import OutputExecutor
from netmesh.replication.messages import (
    Ack,
    Heartbeat,
    Message,
    Nack,
    NackReason,
    SyncRecords,
    SyncRequest,
    SyncResponse,
    decode,
    encode,
)
from netmesh.replication.roles import ReplicaRole, TransitionSignal
from netmesh.replication.runtime import FileStorage

A, B = 10, 20
R, S = ReplicaRole, TransitionSignal
CHUNK = 1000  # events per chunk in the pure tests


def cfg() -> ReplicationConfig:
    return ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))


def msgs(out: list[Output], kind: type) -> list[Any]:
    return [o.msg for o in out if isinstance(o, Send) and isinstance(o.msg, kind)]


def leader(tail: int) -> ReplicationCoordinator:
    a = ReplicationCoordinator(A, cfg(), [A, B], tail_seq=tail, epochs=((1, 0),))
    a.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, 0.0)
    a.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, 0.0)
    a.transition_to(R.LEADER, S.ELECTION_WON, 0.0)
    assert a.role is R.LEADER
    return a


def serve_burst(
    a: ReplicationCoordinator, out: list[Output], now: float = 0.1
) -> list[SyncRecords | Nack]:
    """Run the leader's ServeSyncs as the executor would (CHUNK events each, raw bytes
    faked: ``max_bytes`` of them); returns the answers in order."""
    answers: list[SyncRecords | Nack] = []
    pending = [o for o in out if isinstance(o, ServeSync)]
    while pending:
        req = pending.pop(0)
        count = min(CHUNK, a.tail_seq - req.from_seq)
        got = a.serve_records(req, count, b"r" * req.max_bytes, count * 10, now)
        answers += msgs(got, SyncRecords) + msgs(got, Nack)
        pending += [o for o in got if isinstance(o, ServeSync)]
    return answers


def test_a_far_behind_request_gets_a_window_of_chunks_with_more() -> None:
    a = leader(100 * CHUNK)
    out = a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1)
    (req,) = [o for o in out if isinstance(o, ServeSync)]
    assert req.max_bytes == a.config.sync_chunk_bytes and req.burst
    answers = serve_burst(a, out)
    assert len(answers) == SYNC_BURST_CHUNKS, "the window, at once"
    assert all(isinstance(m, SyncRecords) and m.request_id == 7 for m in answers)
    recs = [m for m in answers if isinstance(m, SyncRecords)]
    assert [m.first_seq for m in recs] == [i * CHUNK for i in range(SYNC_BURST_CHUNKS)]
    assert all(m.more for m in recs)
    assert a.metrics.sync_bytes_total > SYNC_BURST_CHUNKS * CHUNK * 10, "each chunk charged"
    assert not serve_burst(a, a.tick(0.2)), "nothing more until the replica applies some"


def credit(a: ReplicationCoordinator, tail: int, rid: int = 7) -> SyncRequest:
    """What a replica sends for each chunk of stream ``rid`` it applies."""
    return SyncRequest(a.term, tail, a.term if tail else 0, 1 << 20, rid)


def test_a_stream_goes_on_one_chunk_per_credit_and_ends_at_the_tail() -> None:
    a = leader(0)
    total = 2 * SYNC_BURST_CHUNKS + 8  # chunks
    a.local_appended(total * CHUNK, 0.05)  # events of its own term
    serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    recs = serve_burst(a, a.step(B, credit(a, CHUNK), 0.11))
    assert [(m.first_seq, m.request_id, m.more) for m in recs] == [
        (SYNC_BURST_CHUNKS * CHUNK, 7, True)
    ], "one chunk per applied chunk"
    assert not serve_burst(a, a.step(B, credit(a, CHUNK), 0.12)), "a repeated credit: no room"
    recs = serve_burst(a, a.step(B, credit(a, 3 * CHUNK), 0.13))  # two at once: two more
    assert [m.first_seq for m in recs] == [(SYNC_BURST_CHUNKS + i) * CHUNK for i in (1, 2)]
    recs = serve_burst(a, a.step(B, Ack(a.term, 4 * CHUNK), 0.14))  # an Ack frees room too
    assert [m.first_seq for m in recs] == [(SYNC_BURST_CHUNKS + 3) * CHUNK]
    tail, now, seen = 4 * CHUNK, 0.15, []
    while tail < a.tail_seq:  # the replica credits every chunk: the stream runs to the tail
        tail += CHUNK
        now += 0.001
        seen += serve_burst(a, a.step(B, credit(a, tail), now), now)
    rest = range(SYNC_BURST_CHUNKS + 4, total)
    assert [m.first_seq for m in seen] == [i * CHUNK for i in rest]
    assert [m.more for m in seen] == [True] * (len(rest) - 1) + [False], "the tail ends it"
    late = credit(a, (total - 1) * CHUNK)
    assert not serve_burst(a, a.step(B, late, now)), "a late credit: ignored"


def test_a_burst_stops_at_the_tail_and_near_the_tail_is_one_chunk() -> None:
    a = leader(2 * CHUNK + 5)
    recs = serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    assert [(m.first_seq, m.more) for m in recs if isinstance(m, SyncRecords)] == [
        (0, True),
        (CHUNK, True),
        (2 * CHUNK, False),
    ]
    recs = serve_burst(a, a.step(B, SyncRequest(a.term, 2 * CHUNK, 1, 1 << 20, 8), 0.1))
    assert [(m.first_seq, m.count, m.more) for m in recs if isinstance(m, SyncRecords)] == [
        (2 * CHUNK, 5, False)
    ]


class _Budget:
    def __init__(self, grants: int) -> None:
        self.grants = grants

    def try_consume(self, cost: int, now: float) -> bool:
        self.grants -= 1
        return self.grants >= 0


def test_the_budget_applies_to_every_chunk_of_a_burst() -> None:
    a = leader(100 * CHUNK)
    a.budget = _Budget(3)  # type: ignore[assignment]
    answers = serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    assert [type(m) for m in answers] == [SyncRecords] * 3 + [Nack]
    nack = answers[-1]
    assert isinstance(nack, Nack) and nack.reason is NackReason.BACKPRESSURE
    assert nack.from_seq == 3 * CHUNK and a.metrics.under_capacity_total == 1


def test_more_survives_the_wire() -> None:
    for more in (True, False):
        m = SyncRecords(3, 9, 10, 2, 5, ((2, 0), (3, 8)), 4, b"\x00raw", more)
        assert decode(encode(m)) == m


def test_a_new_request_replaces_the_stream() -> None:
    a = leader(100 * CHUNK)
    serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    # chunk 1 was lost; the replica asks again from CHUNK with a new request id
    recs = serve_burst(a, a.step(B, SyncRequest(a.term, CHUNK, 1, 1 << 20, 8), 0.11))
    assert [(m.first_seq, m.request_id) for m in recs] == [
        ((1 + i) * CHUNK, 8) for i in range(SYNC_BURST_CHUNKS)
    ]
    assert not serve_burst(a, a.step(B, SyncRequest(a.term, 2 * CHUNK, 1, 1 << 20, 7), 0.12))
    recs = serve_burst(a, a.step(B, SyncRequest(a.term, 2 * CHUNK, 1, 1 << 20, 8), 0.12))
    assert [(m.first_seq, m.request_id) for m in recs] == [((1 + SYNC_BURST_CHUNKS) * CHUNK, 8)]


def test_a_refused_chunk_or_a_payload_answer_ends_the_stream() -> None:
    a = leader(100 * CHUNK)
    a.budget = _Budget(2)  # type: ignore[assignment]
    answers = serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    assert [type(m) for m in answers] == [SyncRecords, SyncRecords, Nack]
    a.budget = _Budget(100)  # type: ignore[assignment]
    out = a.step(B, SyncRequest(a.term, CHUNK, 1, 1 << 20, 7), 0.11)  # a late credit
    assert not [o for o in out if isinstance(o, ServeSync)] and not msgs(out, SyncRecords)
    # a memory log answers the request with payloads (serve): no stream either
    out = a.step(B, SyncRequest(a.term, 2 * CHUNK, 1, 1 << 20, 9), 0.12)
    (req,) = [o for o in out if isinstance(o, ServeSync)]
    got = a.serve(req, [b"x"] * 10, 0.12)
    assert [m.request_id for m in msgs(got, SyncResponse)] == [9]
    out = a.step(B, SyncRequest(a.term, 2 * CHUNK + 10, 1, 1 << 20, 9), 0.13)
    assert not [o for o in out if isinstance(o, ServeSync)], "no stream"


# ------------------------------------------------------------------ follower side


def follower() -> tuple[ReplicationCoordinator, SyncRequest]:
    """A replica that heard leader A (term 1, far ahead) and asked from 0."""
    b = ReplicationCoordinator(B, cfg(), [A, B])
    b.tick(0.0)
    out = b.step(A, Heartbeat(1, R.LEADER, 100 * CHUNK, 0, 1, 1), 0.01)
    (req,) = msgs(out, SyncRequest)
    assert req.from_seq == 0
    return b, req


def chunk(req: SyncRequest, i: int, more: bool) -> SyncRecords:
    return SyncRecords(1, req.request_id, i * CHUNK, 1 if i else 0, 0, ((1, 0),), CHUNK, b"r", more)


def test_the_follower_credits_each_chunk_and_does_not_ask_again_meanwhile() -> None:
    b, req = follower()
    now = 0.02
    for i in range(SYNC_BURST_CHUNKS + 2):
        now += 0.06  # the whole stream takes longer than one retry period
        out = b.step(A, chunk(req, i, True), now)
        assert [o.first_seq for o in out if isinstance(o, ApplyRecords)] == [i * CHUNK]
        (cr,) = msgs(out, SyncRequest)
        assert (cr.from_seq, cr.request_id, cr.last_term) == ((i + 1) * CHUNK, req.request_id, 1)
        assert not msgs(b.tick(now + 0.05), SyncRequest), "applied chunks restart the timer"
    assert b.metrics.sync_requests_total == 1, "credits are not requests"
    out = b.step(A, chunk(req, SYNC_BURST_CHUNKS + 2, False), now + 0.01)
    (nxt,) = msgs(out, SyncRequest)
    assert nxt.from_seq == (SYNC_BURST_CHUNKS + 3) * CHUNK == b.tail_seq
    assert nxt.request_id != req.request_id and b.metrics.sync_requests_total == 2


def test_a_lost_middle_chunk_is_asked_for_again_at_the_first_gap() -> None:
    b, req = follower()
    b.step(A, chunk(req, 0, True), 0.02)
    b.step(A, chunk(req, 1, True), 0.03)
    # chunk 2 is lost: chunk 3 is a gap, ignored, and the request ends at once
    out = b.step(A, chunk(req, 3, True), 0.04)
    assert not [o for o in out if isinstance(o, ApplyRecords)], "a gap is ignored"
    (retry,) = msgs(out, SyncRequest)
    assert retry.from_seq == 2 * CHUNK == b.tail_seq and retry.request_id != req.request_id
    # the rest of the old stream: gaps, not current, no new request and no credit
    assert not msgs(b.step(A, chunk(req, 4, True), 0.05), SyncRequest)
    assert b.metrics.sync_requests_total == 2
    # a late chunk of the old stream (reordered) still applies where it fits, uncredited
    out = b.step(A, chunk(req, 2, True), 0.06)
    assert [o.first_seq for o in out if isinstance(o, ApplyRecords)] == [2 * CHUNK]
    assert not msgs(out, SyncRequest)


def test_a_lost_last_chunk_is_recovered_by_the_retry() -> None:
    b, req = follower()
    b.step(A, chunk(req, 0, True), 0.02)
    # chunk 1 (and everything after it) is lost: the retry timer asks again
    b.step(A, Heartbeat(1, R.LEADER, 100 * CHUNK, 0, 1, 1), 0.1)
    assert not msgs(b.tick(0.11), SyncRequest), "within one heartbeat of the last progress"
    (retry,) = msgs(b.tick(0.13), SyncRequest)
    assert retry.from_seq == CHUNK and retry.request_id != req.request_id


def test_the_last_chunk_of_a_burst_with_a_gap_asks_again_at_once() -> None:
    b, req = follower()
    b.step(A, chunk(req, 0, True), 0.02)
    (nxt,) = msgs(b.step(A, chunk(req, 2, False), 0.04), SyncRequest)  # chunk 1 lost
    assert nxt.from_seq == CHUNK == b.tail_seq


# ------------------------------------------------- refused chunk (real files, executor)


class _Hub:
    memory_hard_states: dict[str, Any] = {}


Tamper = Callable[[int, SyncRecords], SyncRecords | None]


def catch_up(tmp_path: Path, tamper: Tamper) -> tuple[list[SyncRecords], Any, float]:
    """Leader and replica coordinators over real RedexFiles, executors in between, a
    network that delivers in order; ``tamper(i, m)`` sees the i-th SyncRecords on the
    way (returns what to deliver, None to lose it). Time moves 10 ms whenever nothing
    is in flight. Returns the SyncRecords sent, the replica's executor and the time
    the replica held the whole log; checks that it holds exactly the leader's events."""
    lead_cfg = RedexFileConfig(path=str(tmp_path / "lead"), segment_bytes=1 << 20)
    lead = RedexFile("burst/lead", lead_cfg)
    lead.append_term = 1
    events = [os.urandom(300 + i % 500) for i in range(3000)]
    for i in range(0, len(events), 50):
        lead.append_batch(events[i : i + 50])
    small = replace(cfg(), sync_chunk_bytes=40_000)
    a = ReplicationCoordinator(A, small, [A, B], tail_seq=lead.next_seq, epochs=lead.epochs)
    b = ReplicationCoordinator(B, small, [A, B])
    f = RedexFile("burst/f", RedexFileConfig(path=str(tmp_path / "f")))
    net: list[tuple[int, int, Message]] = []
    now = [0.0]
    ea = OutputExecutor(
        a,
        FileStorage(_Hub(), "burst/lead", lead),  # type: ignore[arg-type]
        lambda to, m: net.append((A, to, m)),
        lambda: now[0],
    )
    eb = OutputExecutor(
        b,
        FileStorage(_Hub(), "burst/f", f),  # type: ignore[arg-type]
        lambda to, m: net.append((B, to, m)),
        lambda: now[0],
    )
    ea.run(a.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, 0.0))
    ea.run(a.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, 0.0))
    ea.run(a.transition_to(R.LEADER, S.ELECTION_WON, 0.0))
    eb.run(b.tick(0.0))
    records: list[SyncRecords] = []
    for _ in range(10_000):
        if f.next_seq == lead.next_seq:
            break
        if not net:
            now[0] += 0.01
            ea.run(a.tick(now[0]))
            eb.run(b.tick(now[0]))
            continue
        frm, to, m = net.pop(0)
        if isinstance(m, SyncRecords):
            records.append(m)
            got = tamper(len(records), m)
            if got is None:
                continue
            m = got
        (ea if to == A else eb).run((a if to == A else b).step(frm, m, now[0]))
    assert f.read_payloads(0, len(events))[0] == events and f.next_seq == lead.next_seq
    f.close()
    lead.close()
    return records, eb, now[0]


def test_a_refused_chunk_of_a_stream_resyncs_and_the_log_catches_up(tmp_path: Path) -> None:
    """The stream's second chunk is corrupted on the way: the replica refuses it whole
    (resync), and the next chunk, a gap, makes it ask again from its real tail."""

    def corrupt(i: int, m: SyncRecords) -> SyncRecords:
        if i != 2:
            return m
        bad = bytearray(m.records)
        bad[len(bad) // 2] ^= 0x01
        return replace(m, records=bytes(bad))

    records, eb, at = catch_up(tmp_path, corrupt)
    assert eb.resyncs == 1, "the corrupted chunk was refused"
    assert any(r.more for r in records) and len(records) > SYNC_BURST_CHUNKS
    streams = {r.request_id for r in records}
    assert len(streams) == 2, "one stream, then one from the refused chunk on"
    assert eb.coord.metrics.sync_requests_total == 2 < len(records), "streams, not chunks"
    assert at < 0.1, "no wait for the retry timer"


def test_a_lost_chunk_of_a_stream_is_asked_for_again_at_once(tmp_path: Path) -> None:
    records, eb, at = catch_up(tmp_path, lambda i, m: None if i == 3 else m)
    assert eb.resyncs == 0 and len({r.request_id for r in records}) == 2
    assert eb.coord.metrics.sync_requests_total == 2 < len(records)
    assert at < 0.1, "no wait for the retry timer"


def test_an_undisturbed_stream_is_one_request(tmp_path: Path) -> None:
    records, eb, _ = catch_up(tmp_path, lambda i, m: m)
    assert len(records) > 2 * SYNC_BURST_CHUNKS, "more chunks than one window"
    assert eb.coord.metrics.sync_requests_total == 1
    assert [r.more for r in records] == [True] * (len(records) - 1) + [False]


def test_a_follower_that_asks_is_not_pushed_to_until_it_stops_asking() -> None:
    """Pushes (per-event SyncResponses) would duplicate the bursts of a follower that
    catches up by requests: the leader holds them for one heartbeat after a request."""
    a = leader(100 * CHUNK)

    def pushes(out: list[Output]) -> list[ServeSync]:
        return [o for o in out if isinstance(o, ServeSync) and not o.request_id]

    serve_burst(a, a.step(B, SyncRequest(a.term, 0, 0, 1 << 20, 7), 0.1))
    assert not pushes(a.step(B, Ack(a.term, CHUNK), 0.12)), "asked 20 ms ago: no push"
    out = a.step(B, Ack(a.term, 2 * CHUNK), 0.21)
    assert [(o.from_seq, o.request_id) for o in pushes(out)] == [(2 * CHUNK, 0)], "resumed"

"""Catch-up from disk with raw records (issue 15 §5): the leader ships its batch records
as stored, the replica checks every one (CRCs, seqs, terms) and appends the bytes, or
refuses the whole chunk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from netmesh.config import PlacementStrategy, RedexFileConfig, ReplicationConfig
from netmesh.errors import OutOfOrder
from netmesh.log.file import RedexFile
from netmesh.replication.coordinator import ApplyRecords, ReplicationCoordinator, ServeSync
from netmesh.replication.executor import OutputExecutor
from netmesh.replication.messages import Ack, Message, SyncRecords
from netmesh.replication.roles import ReplicaRole, TransitionSignal
from netmesh.replication.runtime import FileStorage


def leader_log(tmp_path: Path, name: str = "lead") -> tuple[RedexFile, list[bytes]]:
    cfg = RedexFileConfig(path=str(tmp_path / name), segment_bytes=1 << 16, cache_bytes=4096)
    f = RedexFile("raw/lead", cfg)
    events = [os.urandom(1 + i % 700) for i in range(600)]
    for term, lo, hi in ((1, 0, 200), (1, 200, 350), (4, 350, 600)):
        f.append_term = term
        for i in range(lo, hi, 37):
            f.append_batch(events[i : min(hi, i + 37)])
    return f, events


def copy(lead: RedexFile, follower: RedexFile, start: int, max_bytes: int) -> int:
    """Catch ``follower`` up from ``start`` with raw chunks; returns the chunks used."""
    seq, chunks = start, 0
    while seq < lead.next_seq:
        got = lead.read_records(seq, max_bytes)
        assert got is not None
        count, raw, payload = got
        runs = [(a, b, lead.term_at(a)) for a, b in _runs(lead, seq, seq + count)]
        follower.append_records(seq, count, raw, runs)  # type: ignore[arg-type]
        assert payload == sum(map(len, lead.read_payloads(seq, seq + count)[0]))
        seq += count
        chunks += 1
    return chunks


def _runs(f: RedexFile, lo: int, hi: int) -> list[tuple[int, int]]:
    out, start = [], lo
    for s in range(lo + 1, hi + 1):
        if s == hi or f.term_at(s) != f.term_at(start):
            out.append((start, s))
            start = s
    return out


def test_raw_chunks_rebuild_the_same_log_from_any_seq(tmp_path: Path) -> None:
    lead, events = leader_log(tmp_path)
    for start in (0, 5):  # 5: inside a record (its rest is re-encoded)
        cfg = RedexFileConfig(path=str(tmp_path / f"f{start}"), segment_bytes=1 << 16)
        f = RedexFile("raw/f", cfg)
        if start:
            f.append_term = 1
            f.append_batch(events[:start])
        chunks = copy(lead, f, start, 20_000)
        assert chunks > 5, "several chunks, across segments"
        assert f.read_payloads(0, 600)[0] == events
        assert f.epochs == lead.epochs and f.term_at(599) == 4
        f.close()
        g = RedexFile("raw/f", cfg)  # the appended bytes are records like any other
        assert g.read_payloads(0, 600)[0] == events and g.epochs == lead.epochs
        g.close()
    lead.close()


def test_a_corrupted_chunk_is_refused_whole(tmp_path: Path) -> None:
    lead, _ = leader_log(tmp_path)
    got = lead.read_records(0, 50_000)
    assert got is not None
    count, raw, _ = got
    cfg = RedexFileConfig(path=str(tmp_path / "f"))
    f = RedexFile("raw/f", cfg)
    size = os.path.getsize(next((tmp_path / "f").glob("*.seg")))
    for at in (10, len(raw) // 2, len(raw) - 1):  # a header, a body, the last byte
        bad = bytearray(raw)
        bad[at] ^= 0x01
        with pytest.raises(OutOfOrder, match="refused"):
            f.append_records(0, count, bytes(bad), [(0, count, 1)])
    with pytest.raises(OutOfOrder, match="refused"):  # terms not the leader's epochs
        f.append_records(0, count, raw, [(0, count, 2)])
    with pytest.raises(OutOfOrder, match="refused"):  # fewer events than announced
        f.append_records(0, count + 1, raw, [(0, count + 1, 1)])
    assert f.next_seq == 0 and f.failed is None
    assert os.path.getsize(next((tmp_path / "f").glob("*.seg"))) == size, "nothing written"
    f.append_records(0, count, raw, [(0, count, 1)])
    assert f.next_seq == count
    f.close()
    lead.close()


A, B = 10, 20


class Hub:
    memory_hard_states: dict[str, Any] = {}


def test_a_replica_applies_sync_records_and_acks_and_refuses_a_bad_chunk(
    tmp_path: Path,
) -> None:
    lead, events = leader_log(tmp_path)
    cfg = ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))
    coord = ReplicationCoordinator(B, cfg, [A, B])
    f = RedexFile("raw/r", RedexFileConfig(path=str(tmp_path / "r")))
    sent: list[tuple[int, Message]] = []
    storage = FileStorage(Hub(), "raw/r", f)  # type: ignore[arg-type]
    ex = OutputExecutor(coord, storage, lambda to, m: sent.append((to, m)), lambda: 0.0)
    ex.run(coord.transition_to(ReplicaRole.REPLICA, TransitionSignal.CAPABILITY_SELECTED, 0.0))
    got = lead.read_records(0, 30_000)
    assert got is not None
    count, raw, _ = got
    term = 4
    bad = bytearray(raw)
    bad[-3] ^= 0x80
    msg = SyncRecords(term, 9, 0, 0, 0, lead.epochs, count, bytes(bad))
    ex.run(coord.step(A, msg, 0.1))
    assert f.next_seq == 0 and not ex.stopped and ex.resyncs == 1, "refused, resynced"
    assert not [m for _, m in sent if isinstance(m, Ack)], "no ack for a refused chunk"
    assert coord.tail_seq == 0
    ex.run(coord.step(A, SyncRecords(term, 10, 0, 0, 0, lead.epochs, count, raw), 0.2))
    assert f.read_payloads(0, count)[0] == events[:count]
    assert (A, Ack(term, count)) in sent and coord.tail_seq == count
    f.close()
    lead.close()


def test_the_executor_serves_requests_with_records(tmp_path: Path) -> None:
    """Leader side: a request's ServeSync reads whole records (payload-path fallback
    only for memory logs), and the coordinator answers with SyncRecords."""
    lead, _ = leader_log(tmp_path)
    cfg = ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))
    coord = ReplicationCoordinator(A, cfg, [A, B], tail_seq=lead.next_seq, epochs=lead.epochs)
    sent: list[tuple[int, Message]] = []
    storage = FileStorage(Hub(), "raw/lead", lead)  # type: ignore[arg-type]
    ex = OutputExecutor(coord, storage, lambda to, m: sent.append((to, m)), lambda: 0.0)
    ex.run(coord.transition_to(ReplicaRole.REPLICA, TransitionSignal.CAPABILITY_SELECTED, 0.0))
    ex.run(coord.transition_to(ReplicaRole.CANDIDATE, TransitionSignal.MISSED_HEARTBEATS, 0.0))
    ex.run(coord.transition_to(ReplicaRole.LEADER, TransitionSignal.ELECTION_WON, 0.0))
    assert coord.role is ReplicaRole.LEADER
    sent.clear()
    ex.run([ServeSync(B, 0, 30_000, 5)])
    (to, msg), *_ = sent
    assert to == B and isinstance(msg, SyncRecords) and msg.request_id == 5
    assert msg.first_seq == 0 and msg.count > 0
    follower = RedexFile("raw/f", RedexFileConfig(path=str(tmp_path / "f")))
    out = ApplyRecords(0, msg.count, msg.records, ((0, msg.count, 1),))
    follower.append_records(out.first_seq, out.count, out.records, out.runs)
    assert follower.read_payloads(0, msg.count) == lead.read_payloads(0, msg.count)
    follower.close()
    lead.close()

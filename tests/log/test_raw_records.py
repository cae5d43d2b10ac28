"""Catch-up from disk with raw records (issue 15 §5): the leader ships its batch records
as stored, the replica checks every one (CRCs, seqs, terms) and appends the bytes, or
refuses the whole chunk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from netmesh.config import PlacementStrategy, RedexFileConfig, ReplicationConfig
from netmesh.errors import LogCorrupt, OutOfOrder
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


def test_records_larger_than_a_chunk_are_sliced_within_max_bytes(tmp_path: Path) -> None:
    """A leader whose records are far larger than a sync chunk (one record per drained
    ring batch, ~4 MB) answers every chunk within ``max_bytes``, from any seq (a slice
    is re-framed with the record's term and time and its own CRC)."""
    cfg = RedexFileConfig(path=str(tmp_path / "lead"), cache_bytes=4096)
    lead = RedexFile("raw/lead", cfg)
    events = [os.urandom(100 + i % 300) for i in range(3000)]
    lead.append_term = 2
    lead.append_batch(events[:2000])  # one record of ~500 KB
    lead.append_term = 3
    lead.append_batch(events[2000:])
    for start in (0, 777):
        f = RedexFile("raw/f", RedexFileConfig(path=str(tmp_path / f"f{start}")))
        if start:
            f.append_term = 2
            f.append_batch(events[:start])
        seq, sizes = start, []
        while seq < lead.next_seq:
            got = lead.read_records(seq, 20_000)
            assert got is not None
            count, raw, payload = got
            assert payload <= 20_000 and count >= 1
            runs = [(a, b, lead.term_at(a)) for a, b in _runs(lead, seq, seq + count)]
            f.append_records(seq, count, raw, runs)  # type: ignore[arg-type]
            sizes.append(payload)
            seq += count
        assert len(sizes) > 20 and min(sizes[:-1]) > 10_000, "chunks are full, not scraps"
        assert f.read_payloads(0, 3000)[0] == events
        assert f.epochs == lead.epochs
        f.close()
    lead.close()


def test_a_raw_read_stops_at_end_seq_inside_a_record(tmp_path: Path) -> None:
    lead = RedexFile("raw/lead", RedexFileConfig(path=str(tmp_path / "lead")))
    events = [bytes([i % 256]) * 50 for i in range(400)]
    lead.append_batch(events)
    got = lead.read_records(10, 1 << 20, end_seq=123)
    assert got is not None
    count, raw, payload = got
    assert (count, payload) == (113, 113 * 50)
    f = RedexFile("raw/f", RedexFileConfig(path=str(tmp_path / "f")))
    f.append_batch(events[:10])
    f.append_records(10, count, raw, [(10, 123, 0)])
    assert f.read_payloads(0, 400)[0] == events[:123]
    f.close()
    lead.close()


def test_a_raw_read_after_a_truncation_reads_the_new_records(tmp_path: Path) -> None:
    """The raw read window is dropped when the log is cut: the events appended after
    a truncation are served, not the old bytes at the same seqs."""
    lead = RedexFile("raw/lead", RedexFileConfig(path=str(tmp_path / "lead")))
    lead.append_batch([b"old"] * 100)
    assert lead.read_records(0, 1 << 20) is not None
    lead.truncate_from(40)
    lead.append_term = 7
    lead.append_batch([b"new!"] * 60)
    got = lead.read_records(30, 1 << 20)
    assert got is not None
    count, raw, payload = got
    assert count == 70 and payload == 10 * 3 + 60 * 4
    f = RedexFile("raw/f", RedexFileConfig(path=str(tmp_path / "f")))
    f.append_batch([b"old"] * 30)
    f.append_records(30, count, raw, [(30, 40, 0), (40, 100, 7)])
    assert f.read_payloads(0, 100)[0] == [b"old"] * 40 + [b"new!"] * 60
    f.close()
    lead.close()


def test_a_raw_read_of_a_corrupted_record_raises(tmp_path: Path) -> None:
    path = tmp_path / "lead"
    lead = RedexFile("raw/lead", RedexFileConfig(path=str(path), cache_bytes=0))
    lead.append_batch([os.urandom(1000) for _ in range(300)])
    lead.append_batch([os.urandom(1000) for _ in range(300)])
    seg = next(path.glob("*.seg"))
    with open(seg, "r+b") as fh:  # a payload byte of the second record
        fh.seek(os.path.getsize(seg) - 5000)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x04]))
    got = lead.read_records(0, 100_000)  # the first record is intact
    assert got is not None and got[0] == 100
    with pytest.raises(LogCorrupt):
        lead.read_records(300, 100_000)
    lead.close()

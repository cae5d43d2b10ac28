"""Issue 15: persisted files serve reads from their segment files, keep a bounded amount
in memory, and retain by age; a state machine checks them against a plain list."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netmesh.config import RedexFileConfig
from netmesh.errors import ConfigError, LogCorrupt
from netmesh.log import file as file_mod
from netmesh.log.file import RedexFile


def crash(f: RedexFile) -> None:
    """Drop ``f`` as a killed process would: descriptors closed, nothing synced or
    written on the way out (no clean-close sidecar)."""
    for seg in f._segments:
        seg.close_reader()
    for fd in (f._fd, f._lock_fd):
        if fd >= 0:
            os.close(fd)
    f._fd = f._lock_fd = -1
    f._closed = True


payload = st.binary(min_size=0, max_size=300)


class DiskFileVersusList(RuleBasedStateMachine):
    """The disk-backed file against a list model: appends, reads, reopens, retention,
    truncations, with a tiny cache and tiny segments so every path is exercised."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="nm-sm-")
        self.cfg = RedexFileConfig(
            path=self.dir, segment_bytes=4096, cache_bytes=700, index_interval_bytes=256
        )
        self.f = RedexFile("sm", self.cfg)
        self.model: list[bytes] = []
        self.first = 0  # first retained seq of the model
        self.saved_ckpt = file_mod.CHECKPOINT_BYTES
        file_mod.CHECKPOINT_BYTES = 512  # checkpoints of the active segment, often

    def teardown(self) -> None:
        import shutil

        file_mod.CHECKPOINT_BYTES = self.saved_ckpt
        self.f.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(batch=st.lists(payload, min_size=1, max_size=12))
    def append(self, batch: list[bytes]) -> None:
        first = self.f.append_batch(batch)
        assert first == len(self.model)
        self.model += batch
        if self.cfg.retention_max_events is not None:
            self.first = max(self.first, len(self.model) - self.cfg.retention_max_events)

    @rule()
    def reopen(self) -> None:
        self.f.close()
        self.f = RedexFile("sm", self.cfg)
        # retention is applied again on open; it may keep more than before (what it
        # dropped logically may still be on disk), never fewer, never a wrong event
        keep = self.cfg.retention_max_events
        assert self.f.first_retained_seq <= self.first
        if keep is not None:
            assert self.f.first_retained_seq >= len(self.model) - keep
        self.first = self.f.first_retained_seq

    @rule()
    def crash(self) -> None:
        """The process dies: no clean close (no sidecar for the active segment beyond
        its last checkpoint); the page cache keeps every write."""
        crash(self.f)
        self.f = RedexFile("sm", self.cfg)
        assert self.f.first_retained_seq <= self.first
        self.first = self.f.first_retained_seq

    @precondition(lambda self: len(self.model) > self.first)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        seq = data.draw(st.integers(self.first, len(self.model)))
        assert self.f.truncate_from(seq) == len(self.model) - seq
        del self.model[seq:]

    @precondition(lambda self: len(self.model) > self.first)
    @rule(data=st.data())
    def retain(self, data: st.DataObject) -> None:
        keep = data.draw(st.integers(1, len(self.model) - self.first))
        self.cfg = RedexFileConfig(
            path=self.dir,
            segment_bytes=4096,
            cache_bytes=700,
            index_interval_bytes=256,
            retention_max_events=keep,
        )
        self.f.close()
        self.f = RedexFile("sm", self.cfg)
        assert self.f.first_retained_seq == len(self.model) - keep
        self.first = len(self.model) - keep

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        lo = data.draw(st.integers(0, len(self.model) + 2))
        hi = data.draw(st.integers(lo, len(self.model) + 3))
        got = [e.payload for e in self.f.read_range(lo, hi)]
        assert got == self.model[max(lo, self.first) : hi]

    @rule(data=st.data())
    def read_chunk(self, data: st.DataObject) -> None:
        """A sync chunk: at most ``max_bytes`` of payloads, at least one event."""
        lo = data.draw(st.integers(0, len(self.model) + 2))
        max_bytes = data.draw(st.integers(0, 2000))
        got, first = self.f.read_payloads(lo, lo + 100, max_bytes)
        want = self.model[max(lo, self.first) : lo + 100]
        assert first == max(lo, self.first) or not want
        assert got == want[: len(got)]
        if want:
            assert got and (len(got) == 1 or sum(map(len, got)) <= max_bytes)
            assert len(got) == len(want) or sum(map(len, want[: len(got) + 1])) > max_bytes

    @invariant()
    def shape(self) -> None:
        assert self.f.next_seq == len(self.model)
        assert self.f.first_retained_seq == self.first
        assert self.f.retained_bytes == sum(map(len, self.model[self.first :]))
        assert self.f.cached_bytes <= 700


TestDiskFileVersusList = DiskFileVersusList.TestCase
TestDiskFileVersusList.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_cold_reads_come_from_disk_and_detect_damage(tmp_path: Path) -> None:
    cfg = RedexFileConfig(path=str(tmp_path / "c"), segment_bytes=1 << 16, cache_bytes=4096)
    f = RedexFile("cold", cfg)
    events = [b"%06d" % i * 10 for i in range(5000)]
    for i in range(0, 5000, 100):
        f.append_batch(events[i : i + 100])
    assert f.cached_bytes <= 4096
    assert [e.payload for e in f.read_range(10, 20)] == events[10:20]  # cold
    assert [e.payload for e in f.read_range(4990, 5000)] == events[4990:]  # cached
    assert [e.payload for e in f.read_range(0, 5000)] == events  # across segments
    first = sorted((tmp_path / "c").glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[5000] ^= 0x40  # damage a sealed segment under a live file
    first.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt) as info:
        f.read_range(0, 5000)
    assert info.value.path == str(first)
    with pytest.raises(LogCorrupt):  # a sync chunk (byte-bounded read) checks it too
        f.read_payloads(0, 5000, 256 << 10)
    f.close()


def test_sync_chunks_read_what_they_send_and_a_large_record_once(tmp_path: Path) -> None:
    """Catch-up from disk (issue 15 §5): a chunk reads the records holding its bytes,
    and consecutive chunks inside one large record pread and check it once."""
    cfg = RedexFileConfig(path=str(tmp_path / "k"), cache_bytes=1 << 16)
    f = RedexFile("chunks", cfg)
    events = [os.urandom(16 << 10) for _ in range(256)]
    for i in range(0, 256, 64):
        f.append_batch(events[i : i + 64])  # 1 MiB records
    scans = 0
    real = f._scan_records

    def counting(*args: object) -> object:
        nonlocal scans
        scans += 1
        return real(*args)  # type: ignore[arg-type]

    f._scan_records = counting  # type: ignore[method-assign]
    seq, got = 0, []
    while seq < 64:
        chunk, first = f.read_payloads(seq, seq + 4096, 256 << 10)
        assert first == seq and len(chunk) == 16
        got += chunk
        seq += len(chunk)
    assert got == events[:64] and scans == 1, "one pread and CRC check of the record"
    f.truncate_from(32)
    f.append_batch([b"new"] * 4)
    chunk, _ = f.read_payloads(30, 40, 1 << 20)
    assert chunk == events[30:32] + [b"new"] * 4, "a truncation drops the kept read"
    f.close()


def test_retention_by_age_uses_the_append_time_in_each_record(tmp_path: Path) -> None:
    now = [1_000_000_000_000]
    cfg = RedexFileConfig(
        path=str(tmp_path / "a"), retention_max_age_s=10.0, index_interval_bytes=64
    )
    f = RedexFile("age", cfg, clock=lambda: now[0])
    for _ in range(10):  # one batch a second
        f.append_batch([b"x" * 100] * 5)
        now[0] += 1_000_000_000
    assert f.first_retained_seq == 0
    now[0] += 5_000_000_000  # the first batches are now 15 s old
    assert f.expire() > 0
    kept = f.first_retained_seq
    assert 0 < kept < 50 and kept % 5 == 0
    f.close()
    g = RedexFile("age", cfg, clock=lambda: now[0])  # the times survive a reopen
    assert g.first_retained_seq == kept
    now[0] += 60_000_000_000
    g.expire()
    assert len(g) == 0 and g.next_seq == 50
    g.close()


def test_in_memory_file_retains_by_age_too() -> None:
    now = [0]
    cfg = RedexFileConfig(retention_max_age_s=1.0, index_interval_bytes=64)
    f = RedexFile("mem", cfg, clock=lambda: now[0])
    f.append_batch([b"y" * 100])
    now[0] = 5_000_000_000
    f.append_batch([b"z" * 100])
    assert [e.payload for e in f.read_range(0, 9)] == [b"z" * 100]


@pytest.mark.parametrize(
    ("field", "value"),
    [("retention_max_age_s", 0.0), ("cache_bytes", -1), ("index_interval_bytes", 8)],
)
def test_bad_storage_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        RedexFile("bad", RedexFileConfig(**{field: value}))  # type: ignore[arg-type]


RSS_BOUND = 40 << 20
WRITER = """
import os, resource, sys
from netmesh.config import RedexFileConfig
from netmesh.log.file import RedexFile
path, total = sys.argv[1], int(sys.argv[2])
f = RedexFile("big", RedexFileConfig(path=path, segment_bytes=8 << 20))
batch = [os.urandom(1024) for _ in range(64)]
f.append_batch(batch)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
written = 0
while written < total:
    f.append_batch(batch)
    written += 64 * 1024
assert f.read_range(5, 6)[0].payload == batch[5]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - base, f.next_seq)
f.close()
"""


def test_rss_stays_flat_while_the_log_grows_past_twenty_times_the_bound(tmp_path: Path) -> None:
    """Issue 15: 800 MiB of 1 KiB events written through one file; the writer's peak RSS
    grows by less than 40 MiB (the default 8 MiB cache, 4 B per event, the index)."""
    total = 20 * RSS_BOUND
    out = subprocess.run(
        [sys.executable, "-P", "-c", WRITER, str(tmp_path / "big"), str(total)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    growth, events = map(int, out.stdout.split())
    assert events == total // 1024 + 64
    assert growth < RSS_BOUND, f"RSS grew {growth >> 20} MiB writing {total >> 20} MiB"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
    assert sum(p.stat().st_size for p in (tmp_path / "big").glob("*.seg")) > total
    os.sync()


def _single_records(path: Path, n: int) -> RedexFileConfig:
    cfg = RedexFileConfig(path=str(path), segment_bytes=1 << 20)
    f = RedexFile("s", cfg)
    for i in range(n):
        f.append(b"%08d" % i)
    f.close()
    return cfg


def test_sealed_segments_reopen_from_their_index_sidecars(tmp_path: Path) -> None:
    cfg = _single_records(tmp_path / "s", 60_000)  # ~3 MiB of single-event records
    sides = sorted((tmp_path / "s").glob("*.idx"))
    segs = sorted((tmp_path / "s").glob("*.seg"))
    assert len(sides) == len(segs) >= 3  # every sealed segment, and after a clean close
    # the active one too (its own is removed when the file opens for appends again)
    g = RedexFile("s", cfg)
    assert g.next_seq == 60_000 and g.retained_bytes == 8 * 60_000
    assert [e.payload for e in g.read_range(12345, 12347)] == [b"00012345", b"00012346"]
    assert g.term_at(0) == 0
    g.close()


def test_a_sidecar_that_does_not_match_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    cfg = _single_records(tmp_path / "s", 30_000)
    side = sorted((tmp_path / "s").glob("*.idx"))[0]
    raw = bytearray(side.read_bytes())
    raw[-3] ^= 0xFF  # damaged sidecar: CRC fails
    side.write_bytes(bytes(raw))
    g = RedexFile("s", cfg)
    assert g.next_seq == 30_000
    assert g.read_range(7, 8)[0].payload == b"00000007"
    g.close()
    seg = sorted((tmp_path / "s").glob("*.seg"))[0]
    seg.write_bytes(seg.read_bytes()[:-5])  # a sealed segment that lost its end
    with pytest.raises(LogCorrupt):
        RedexFile("s", cfg)  # the sidecar (size mismatch) does not hide the damage


def test_reopen_scans_only_the_active_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a large log reopens from its index sidecars, not a rescan of every
    record (the figure is in `netmesh bench storage`; here: what is scanned)."""
    from netmesh.log import record

    cfg = _single_records(tmp_path / "s", 40_000)
    scanned: list[int] = []
    real = record.scan_index

    def counting(buf: bytes, *a: object, **kw: object) -> record.IndexScan:
        scanned.append(len(buf))
        return real(buf, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(record, "scan_index", counting)
    g = RedexFile("s", cfg)
    assert g.next_seq == 40_000
    assert not list((tmp_path / "s").glob(f"{g._segments[-1].first_seq:020d}.idx"))
    os.close(g._fd)  # a crash: no clean close, no sidecar for the active segment
    os.close(g._lock_fd)
    g._fd = g._lock_fd = -1
    big = [n for n in scanned if n > 8192]
    assert big == [], "a clean close left sidecars: only record tails are checked"
    scanned.clear()
    g = RedexFile("s", cfg)
    assert g.next_seq == 40_000
    g.close()
    segs = sorted((tmp_path / "s").glob("*.seg"))
    big = [n for n in scanned if n > 8192]
    assert len(segs) >= 2 and big == [segs[-1].stat().st_size], "after a crash: the active one"


def test_after_a_crash_only_the_records_after_the_last_checkpoint_are_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17 §3: the active segment gets a checkpoint sidecar every CHECKPOINT_BYTES,
    so a crashed log reopens by scanning at most that much (and its torn tail)."""
    from netmesh.log import record

    monkeypatch.setattr(file_mod, "CHECKPOINT_BYTES", 64 << 10)
    cfg = RedexFileConfig(path=str(tmp_path / "k"), segment_bytes=1 << 30)
    f = RedexFile("k", cfg)
    events = [b"%08d" % i for i in range(30_000)]  # ~1.5 MB of single-event records
    for e in events:
        f.append(e)
    crash(f)
    seg = next((tmp_path / "k").glob("*.seg"))
    size = seg.stat().st_size
    scanned: list[int] = []
    real = record.scan_index

    def counting(buf: bytes, *a: object, **kw: object) -> record.IndexScan:
        scanned.append(len(buf))
        return real(buf, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(record, "scan_index", counting)
    g = RedexFile("k", cfg)
    assert g.read_payloads(0, 30_000)[0] == events and g.torn_tail_truncations == 0
    assert scanned and max(scanned) <= (64 << 10) + 4096, "not a rescan of every record"
    g.append(b"more")
    crash(g)
    with open(seg, "r+b") as fh:  # a torn write after the checkpoint
        fh.truncate(seg.stat().st_size - 3)
    h = RedexFile("k", cfg)
    assert h.next_seq == 30_000 and h.torn_tail_truncations == 1
    assert seg.stat().st_size < size + 100
    h.truncate_from(100)  # below every checkpoint: they go with the cut
    h.append(b"after")
    crash(h)
    k = RedexFile("k", cfg)
    assert k.read_payloads(0, 200)[0] == [*events[:100], b"after"]
    k.close()

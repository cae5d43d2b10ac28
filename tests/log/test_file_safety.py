"""Issue 10 at the log: a self-describing log (terms in records), lost state detected,
fail-stop storage, one writer per directory, no two histories mixed for a subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.config import RedexFileConfig
from netmesh.errors import (
    Lagged,
    LogCorrupt,
    LogLocked,
    OutOfOrder,
    StorageFailed,
    Truncated,
)
from netmesh.log import record
from netmesh.log.file import HEAD_FILE, RedexFile


def persisted(tmp_path: Path, **kw: object) -> RedexFileConfig:
    return RedexFileConfig(path=str(tmp_path / "log"), **kw)  # type: ignore[arg-type]


def segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "log").glob("*.seg"))


# -- 1. the log describes itself ----------------------------------------------------------


def test_epochs_are_rebuilt_from_the_records_on_open(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("e", cfg)
    f.append_batch([b"a"] * 3)  # term 0
    f.apply_batch([b"b"] * 2000, term=3)  # spans segments
    f.append_term = 5
    f.append(b"c")
    assert f.epochs == ((0, 0), (3, 3), (5, 2003))
    f.close()
    g = RedexFile("e", cfg)
    assert len(segments(tmp_path)) > 1
    assert g.epochs == ((0, 0), (3, 3), (5, 2003))
    assert [g.term_at(s) for s in (0, 2, 3, 2002, 2003, 2004)] == [0, 0, 3, 3, 5, None]
    assert g.last_term == 5
    g.close()


def test_a_term_never_goes_back_within_a_log(tmp_path: Path) -> None:
    f = RedexFile("t", persisted(tmp_path))
    f.apply_batch([b"x"], term=4)
    with pytest.raises(OutOfOrder, match="term 3 after term 4"):
        f.apply_batch([b"y"], term=3)
    assert f.next_seq == 1
    f.close()


def test_truncate_inside_a_batch_keeps_the_prefix_and_its_term(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, fsync="batch")
    f = RedexFile("m", cfg)
    f.apply_batch([b"p%d" % i for i in range(10)], term=2)
    f.apply_batch([b"q%d" % i for i in range(10)], term=3)
    assert f.truncate_from(14) == 6
    assert f.epochs == ((2, 0), (3, 10))
    assert f.truncate_from(5) == 9
    assert f.epochs == ((2, 0),)
    f.apply_batch([b"r"], term=4)
    f.close()
    g = RedexFile("m", cfg)
    assert [e.payload for e in g.read_range(0, 10)] == [b"p0", b"p1", b"p2", b"p3", b"p4", b"r"]
    assert g.epochs == ((2, 0), (4, 5))
    g.close()


def test_retention_keeps_the_epoch_that_covers_the_head() -> None:
    f = RedexFile("r", RedexFileConfig(retention_max_events=5))
    f.apply_batch([b"a"] * 10, term=1)
    f.apply_batch([b"b"] * 3, term=2)
    assert f.first_retained_seq == 8
    assert f.epochs == ((1, 0), (2, 10))
    assert f.term_at(8) == 1 and f.term_at(7) is None


# -- 2. lost state is detected ------------------------------------------------------------


def test_a_deleted_first_segment_is_corruption_naming_the_directory(tmp_path: Path) -> None:
    """Issue 10 §2: a replica whose first segment was deleted silently served 525 of 600."""
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("d", cfg)
    for i in range(600):
        f.append(b"%05d" % i * 20)
    f.close()
    first = segments(tmp_path)[0]
    first.unlink()
    with pytest.raises(LogCorrupt) as info:
        RedexFile("d", cfg)
    assert info.value.path == str(tmp_path / "log")
    assert "missing" in str(info.value)


def test_retention_deletes_first_segments_and_still_reopens(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096, retention_max_events=50)
    f = RedexFile("h", cfg)
    for i in range(600):
        f.append(b"%05d" % i * 20)
    f.close()
    assert (tmp_path / "log" / HEAD_FILE).exists()
    g = RedexFile("h", cfg)
    assert g.next_seq == 600 and len(g) == 50
    g.close()
    # and a segment deleted beyond what retention recorded is still caught
    segments(tmp_path)[0].unlink()
    with pytest.raises(LogCorrupt, match="missing"):
        RedexFile("h", cfg)


def test_a_middle_segment_gap_is_corruption(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("g", cfg)
    for i in range(600):
        f.append(b"%05d" % i * 20)
    f.close()
    segs = segments(tmp_path)
    assert len(segs) >= 3
    segs[1].unlink()
    with pytest.raises(LogCorrupt, match="expected"):
        RedexFile("g", cfg)


# -- 7. storage failures stop the file, never corrupt it ----------------------------------


def _eio(*_: object) -> None:
    raise OSError(errno.EIO, "injected I/O error")


def test_failed_fsync_stops_the_file_and_reuses_no_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = persisted(tmp_path, fsync="batch")
    f = RedexFile("f", cfg)
    f.append_batch([b"ok0", b"ok1"])
    monkeypatch.setattr(os, "fdatasync", _eio)
    with pytest.raises(StorageFailed, match="injected"):
        f.append(b"lost")
    monkeypatch.undo()
    assert f.next_seq == 2 and f.failed is not None
    with pytest.raises(StorageFailed):
        f.append(b"retry")  # nothing more is written until reopened
    with pytest.raises(StorageFailed):
        f.truncate_from(0)
    f.close()
    g = RedexFile("f", cfg)  # reopens cleanly: no reused seq, no LogCorrupt
    assert [e.payload for e in g.read_range(0, 5)][:2] == [b"ok0", b"ok1"]
    assert g.append(b"after") == g.next_seq - 1
    g.close()


def test_failed_truncate_keeps_memory_and_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = persisted(tmp_path, fsync="batch")
    f = RedexFile("t", cfg)
    f.append_batch([b"a", b"b", b"c"])
    fd = f._fd
    monkeypatch.setattr(os, "ftruncate", _eio)
    with pytest.raises(StorageFailed):
        f.truncate_from(1)
    monkeypatch.undo()
    assert f.next_seq == 3  # disk first, then memory: memory untouched
    assert f._fd == fd and os.fstat(fd).st_size > 0  # the descriptor stayed open
    f.close()
    g = RedexFile("t", cfg)
    assert g.next_seq == 3
    g.close()


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_file_and_what_was_acknowledged_survives(tmp_path: Path) -> None:
    """A real ENOSPC from a 64 KiB tmpfs, no injection."""
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        cfg = RedexFileConfig(path=str(mnt / "log"), fsync="batch", segment_bytes=1 << 20)
        f = RedexFile("full", cfg)
        acked = 0
        with pytest.raises(StorageFailed) as info:
            while True:
                f.append(b"z" * 1000)
                acked += 1
        assert info.value.cause.errno == errno.ENOSPC
        assert acked > 10 and f.next_seq == acked
        with pytest.raises(StorageFailed):
            f.append(b"z")
        f.close()
        g = RedexFile("full", RedexFileConfig(path=str(mnt / "log"), fsync="batch"))
        assert g.next_seq == acked  # the partial batch was cut back, nothing torn left
        g.close()


def test_segment_roll_syncs_the_old_segment_before_the_new_one_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("s", cfg)
    events: list[str] = []
    real_sync, real_open = os.fdatasync, os.open

    def sync(fd: int) -> None:
        events.append(f"sync {os.readlink(f'/proc/self/fd/{fd}').rsplit('/', 1)[-1]}")
        real_sync(fd)

    def opener(path: str, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".seg") and flags & os.O_CREAT:
            events.append(f"create {os.path.basename(path)}")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(os, "open", opener)
    f.append(b"x" * 5000)  # passes segment_bytes: rolls
    monkeypatch.undo()
    first = "00000000000000000000.seg"
    assert events.index(f"sync {first}") < next(i for i, e in enumerate(events) if "create" in e)
    f.close()


# -- one writer per directory -------------------------------------------------------------


def test_a_second_opener_gets_log_locked_in_process_and_across_processes(tmp_path: Path) -> None:
    cfg = persisted(tmp_path)
    f = RedexFile("l", cfg)
    with pytest.raises(LogLocked):
        RedexFile("l", cfg)
    code = (
        "import sys\nfrom netmesh.config import RedexFileConfig\n"
        "from netmesh.errors import LogLocked\n"
        "from netmesh.log.file import RedexFile\n"
        "try:\n    RedexFile('l', RedexFileConfig(path=sys.argv[1]))\n"
        "except LogLocked:\n    sys.exit(7)\n"
    )
    r = subprocess.run([sys.executable, "-P", "-c", code, cfg.path or ""], check=False, timeout=60)
    assert r.returncode == 7
    f.close()
    RedexFile("l", cfg).close()  # released on close


# -- a subscriber never sees two histories mixed ------------------------------------------


def test_truncate_and_new_events_in_one_loop_turn_raise_truncated() -> None:
    """Issue 10 §1: a subscriber that yielded 8 and 9 must not receive new 10, 11 after a
    truncate-to-8 plus apply in the same loop turn."""

    async def body() -> None:
        f = RedexFile("mix")
        f.apply_batch([b"old%d" % i for i in range(10)], term=1)
        got: list[int] = []
        with pytest.raises(Truncated) as info:
            async for ev in f.tail(8):
                got.append(ev.entry.seq)
                if ev.entry.seq == 9:
                    f.truncate_from(8)
                    f.apply_batch([b"new%d" % i for i in range(4)], term=2)
        assert got == [8, 9] and info.value.seq == 8

    asyncio.run(body())


def test_a_truncation_above_the_subscriber_is_not_an_error() -> None:
    async def body() -> None:
        f = RedexFile("above")
        f.apply_batch([b"%d" % i for i in range(10)], term=1)
        got: list[bytes] = []
        async for ev in f.tail(0):
            got.append(ev.payload)
            if ev.entry.seq == 2:
                f.truncate_from(5)  # nothing this subscriber has seen
                f.apply_batch([b"x", b"y"], term=2)
            if len(got) == 7:
                break
        assert got == [b"0", b"1", b"2", b"3", b"4", b"x", b"y"]

    asyncio.run(body())


def test_record_size_matches_the_file(tmp_path: Path) -> None:
    f = RedexFile("z", persisted(tmp_path))
    f.append_batch([b"abc", b"de"])
    f.close()
    assert segments(tmp_path)[0].stat().st_size == record.FILE_HEADER_SIZE + record.record_size(
        [b"abc", b"de"]
    )


# -- a replica behind the leader's retained head restarts its log (issue 10 §4) -----------


@pytest.mark.parametrize("persisted_file", [False, True])
def test_reset_to_restarts_the_log_at_the_leaders_head(
    tmp_path: Path, persisted_file: bool
) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096) if persisted_file else RedexFileConfig()
    f = RedexFile("r", cfg)
    f.apply_batch([b"%d" % i for i in range(50)], term=1)
    f.reset_to(850, prev_term=3)
    assert (f.first_retained_seq, f.next_seq, len(f)) == (850, 850, 0)
    assert f.epochs == ((3, 849),) and f.read_range(0, 900) == []
    f.apply_batch([b"x%d" % i for i in range(200)], expect_seq=850, term=3)
    assert f.next_seq == 1050 and f.term_at(1049) == 3
    f.close()
    if persisted_file:
        g = RedexFile("r", cfg)
        assert (g.first_retained_seq, g.next_seq) == (850, 1050)
        assert g.epochs[0] == (3, 849) and g.read_range(850, 851)[0].payload == b"x0"
        g.close()


def test_an_interrupted_reset_completes_on_open(tmp_path: Path) -> None:
    from netmesh.log.file import RESET_MARK

    cfg = persisted(tmp_path)
    f = RedexFile("i", cfg)
    f.apply_batch([b"a"] * 10, term=1)
    f.close()
    # the crash came right after the HEAD marker was written
    (tmp_path / "log" / HEAD_FILE).write_bytes(record.encode_batch(500, [RESET_MARK], 2))
    g = RedexFile("i", cfg)
    assert (g.first_retained_seq, g.next_seq, g.epochs) == (500, 500, ((2, 499),))
    g.append_term = 2
    assert g.append(b"next") == 500
    g.close()
    assert [p.name[:20] for p in segments(tmp_path)] == ["00000000000000000500"]


def test_a_reset_tells_subscribers_they_lagged() -> None:
    async def body() -> None:
        f = RedexFile("s")
        f.apply_batch([b"a", b"b"], term=1)
        with pytest.raises(Lagged):
            async for ev in f.tail(0):
                if ev.entry.seq == 1:
                    f.reset_to(100, 2)

    asyncio.run(body())

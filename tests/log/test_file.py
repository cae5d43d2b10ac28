"""Event files in memory and on disk: append, read, recover, retention, corruption."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from netmesh.channel import ChannelName
from netmesh.config import RedexFileConfig
from netmesh.errors import (
    ChannelNameError,
    Closed,
    ConfigError,
    Lagged,
    LogCorrupt,
    OutOfOrder,
    PayloadTooLarge,
    Truncated,
)
from netmesh.log import record
from netmesh.log.file import RedexFile
from netmesh.replication.registry import Redex
from tests.conftest import wait_until

CTX = mp.get_context("fork")


def persisted(tmp_path: Path, **kw: object) -> RedexFileConfig:
    return RedexFileConfig(path=str(tmp_path / "log"), **kw)  # type: ignore[arg-type]


def segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "log").glob("*.seg"))


def test_in_memory_append_and_read() -> None:
    f = Redex().open_file("mem", RedexFileConfig())
    assert f.next_seq == 0
    assert f.append(b"a") == 0
    assert f.append_batch([b"b", b"c"]) == 1
    assert f.append_batch([]) == 3
    assert f.next_seq == 3
    evs = f.read_range(0, 10)
    assert [(e.entry.seq, e.payload) for e in evs] == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert f.read_range(1, 2)[0].payload == b"b"
    assert f.read_range(2, 1) == []


def test_payload_limit_rejects_whole_batch() -> None:
    f = RedexFile("lim", RedexFileConfig(max_payload=10))
    with pytest.raises(PayloadTooLarge) as info:
        f.append_batch([b"ok", b"x" * 11])
    assert info.value.size == 11 and info.value.limit == 10
    assert f.next_seq == 0  # no seq burnt
    assert f.append(b"x" * 10) == 0


def test_default_payload_limit_is_one_mib() -> None:
    f = RedexFile("big")
    f.append(b"x" * (1 << 20))
    with pytest.raises(PayloadTooLarge):
        f.append(b"x" * ((1 << 20) + 1))


def test_bad_channel_name_and_config() -> None:
    with pytest.raises(ChannelNameError):
        Redex().open_file("bad name")
    with pytest.raises(ConfigError):
        Redex().open_file("ok", RedexFileConfig(fsync="sometimes"))  # type: ignore[arg-type]


def test_expect_seq_guards_replica_appends() -> None:
    f = RedexFile("g")
    f.append_batch([b"a", b"b"], expect_seq=0)
    with pytest.raises(OutOfOrder):
        f.append_batch([b"c"], expect_seq=5)
    assert f.next_seq == 2


def test_closed_file_refuses_appends() -> None:
    f = RedexFile("c")
    f.close()
    f.close()
    with pytest.raises(Closed):
        f.append(b"x")


def test_reopen_same_name_returns_same_handle() -> None:
    r = Redex()
    f = r.open_file(ChannelName("x/y"))
    assert r.open_file("x/y") is f
    r.close_file("x/y")
    assert f.closed and r.get_file("x/y") is None


def test_persisted_reopen_restores(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, fsync="batch", segment_bytes=4096)
    f = RedexFile("p", cfg)
    payloads = [bytes([i % 256]) * (i % 300) for i in range(500)]
    for i in range(0, 500, 50):
        f.append_batch(payloads[i : i + 50])
    f.close()
    assert len(segments(tmp_path)) > 3  # rolled over several segments
    g = RedexFile("p", cfg)
    assert g.next_seq == 500
    assert [e.payload for e in g.read_range(0, 500)] == payloads
    assert g.append(b"more") == 500
    g.close()
    h = RedexFile("p", cfg)
    assert h.read_range(500, 501)[0].payload == b"more"
    h.close()


def test_every_truncation_of_the_last_segment_recovers(tmp_path: Path) -> None:
    cfg = persisted(tmp_path)
    f = RedexFile("t", cfg)
    payloads = [b"alpha", b"", b"gamma" * 20, b"d"]
    for p in payloads:
        f.append(p)  # one batch record each
    f.close()
    seg = segments(tmp_path)[0]
    full = seg.read_bytes()
    ends = [record.FILE_HEADER_SIZE]
    for p in payloads:
        ends.append(ends[-1] + record.record_size([p]))
    for cut in range(len(full)):
        seg.write_bytes(full[:cut])
        g = RedexFile("t", cfg)
        whole = max((i for i, e in enumerate(ends) if e <= cut), default=0)
        assert [e.payload for e in g.read_range(0, 10)] == payloads[:whole], cut
        assert g.torn_tail_truncations == (0 if cut in ends else 1), cut
        g.append(b"next")  # the file is usable after recovery
        g.close()
        h = RedexFile("t", cfg)
        assert h.next_seq == whole + 1
        h.close()


def test_corrupt_middle_record_raises_with_file_and_offset(tmp_path: Path) -> None:
    cfg = persisted(tmp_path)
    f = RedexFile("c", cfg)
    for p in (b"one", b"two", b"three"):
        f.append(p)
    f.close()
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    offset = record.FILE_HEADER_SIZE + record.record_size([b"one"])  # second record
    data[offset + record.RECORD_HEADER_SIZE + record.LENGTH_SIZE] ^= 0x01  # a bit of "two"
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt) as info:
        RedexFile("c", cfg)
    assert info.value.path == str(seg) and info.value.offset == offset
    assert seg.read_bytes() == bytes(data)  # nothing truncated or repaired behind our back


def test_torn_earlier_segment_is_corruption(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("s", cfg)
    for _ in range(10):
        f.append_batch([b"x" * 1000])
    f.close()
    first = segments(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-5])
    with pytest.raises(LogCorrupt):
        RedexFile("s", cfg)


def test_retention_by_events_and_bytes(tmp_path: Path) -> None:
    f = RedexFile("r", RedexFileConfig(retention_max_events=100))
    for i in range(10):
        f.append_batch([b"%d" % j for j in range(i * 30, i * 30 + 30)])
    assert len(f) == 100 and f.first_retained_seq == 200 and f.next_seq == 300
    assert f.read_range(0, 201)[0].entry.seq == 200
    g = RedexFile("b", persisted(tmp_path, retention_max_bytes=5000, segment_bytes=4096))
    for _ in range(50):
        g.append(b"y" * 500)
    assert g.retained_bytes <= 5000 and len(g) == 10
    assert len(segments(tmp_path)) <= 3  # whole old segments deleted on disk
    g.close()
    h = RedexFile("b", persisted(tmp_path, retention_max_bytes=5000, segment_bytes=4096))
    assert h.next_seq == 50 and len(h) == 10


def test_truncate_from_drops_suffix_on_disk(tmp_path: Path) -> None:
    cfg = persisted(tmp_path, segment_bytes=4096)
    f = RedexFile("tr", cfg)
    for i in range(20):
        f.append(bytes([i]) * 500)
    assert f.truncate_from(7) == 13
    assert f.next_seq == 7 and f.append(b"new") == 7
    f.close()
    g = RedexFile("tr", cfg)
    assert g.next_seq == 8
    assert [e.payload for e in g.read_range(5, 8)] == [b"\5" * 500, b"\6" * 500, b"new"]


def write_forever(path: str, conn: object) -> None:
    f = RedexFile("k", RedexFileConfig(path=path, fsync="batch", segment_bytes=1 << 16))
    i = 0
    while True:
        first = f.append_batch([b"%08d" % (i + j) * 8 for j in range(10)])
        i += 10
        conn.send(first + 9)  # type: ignore[attr-defined]  # acknowledged: durable


def test_sigkill_during_appends_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    recv, send = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=write_forever, args=(path, send))
    proc.start()
    acked = -1
    wait_until(lambda: recv.poll(0.1), timeout=10, message="first ack")
    while acked < 3000:
        acked = recv.recv()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    while recv.poll():
        acked = recv.recv()
    f = RedexFile("k", RedexFileConfig(path=path))
    assert f.next_seq > acked
    evs = f.read_range(0, f.next_seq)
    assert [e.payload for e in evs] == [b"%08d" % i * 8 for i in range(f.next_seq)]
    f.close()


def test_stray_segment_name_is_corruption_not_a_crash(tmp_path: Path) -> None:
    cfg = persisted(tmp_path)
    RedexFile("n", cfg).close()
    (tmp_path / "log" / "notes.seg").write_bytes(b"hello")
    with pytest.raises(LogCorrupt, match="not a segment name"):
        RedexFile("n", cfg)


def test_tail_backfills_then_follows_live_appends_without_gaps() -> None:
    async def body() -> list[tuple[int, bytes]]:
        f = RedexFile("t")
        f.append_batch([b"a", b"b", b"c"])
        got: list[tuple[int, bytes]] = []

        async def reader() -> None:
            async for ev in f.tail(1):
                got.append((ev.entry.seq, ev.payload))

        task = asyncio.create_task(reader())
        while len(got) < 2:  # backfill arrives first
            await asyncio.sleep(0)
        f.append(b"d")
        f.append_batch([b"e", b"f"])
        while len(got) < 5:
            await asyncio.sleep(0)
        f.close()  # ends the iteration
        await asyncio.wait_for(task, 5)
        return got

    got = asyncio.run(body())
    assert got == [(1, b"b"), (2, b"c"), (3, b"d"), (4, b"e"), (5, b"f")]


def test_tail_reports_lost_history() -> None:
    async def body() -> None:
        f = RedexFile("l", RedexFileConfig(retention_max_events=2))
        f.append_batch([b"1", b"2", b"3"])
        with pytest.raises(Lagged, match="holds"):
            async for _ in f.tail(0):
                pass
        g = RedexFile("g")
        g.append_batch([b"x", b"y", b"z"])
        seen = []
        with pytest.raises(Truncated) as info:
            async for ev in g.tail(0):
                seen.append(ev.payload)
                if len(seen) == 3:
                    g.truncate_from(1)  # replication discarded what we already saw
        assert seen == [b"x", b"y", b"z"] and info.value.seq == 1

    asyncio.run(body())

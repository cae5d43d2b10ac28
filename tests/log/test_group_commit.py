"""Group commit (issue 15 §3): one fsync round per loop turn for every dirty file, run
off the event loop; nothing is acknowledged before the round covering it completed."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
import threading
from typing import Any

import pytest

from netmesh.config import PlacementStrategy, RedexFileConfig, ReplicationConfig
from netmesh.errors import StorageFailed
from netmesh.log.commit import GroupCommitter
from netmesh.log.file import RedexFile
from netmesh.replication.coordinator import Apply, ReplicationCoordinator, Send, Truncate
from netmesh.replication.executor import ExecutorHooks, OutputExecutor
from netmesh.replication.messages import Ack, Message, SyncRequest
from netmesh.replication.runtime import FileStorage


class CountingSync:
    """fdatasync stand-in: counts calls and their threads; may fail or block."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.fail = False
        self.gate: threading.Event | None = None

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)


def open_files(tmp_path: pathlib.Path, n: int, gc: GroupCommitter) -> list[RedexFile]:
    files = []
    for i in range(n):
        f = RedexFile(f"gc/c{i}", RedexFileConfig(path=str(tmp_path / f"c{i}"), fsync="batch"))
        f.use_group_commit(gc)
        files.append(f)
    return files


async def durable(f: RedexFile, seq: int) -> None:
    done = asyncio.get_running_loop().create_future()
    f.when_durable(seq, lambda: done.done() or done.set_result(None))
    await asyncio.wait_for(done, 10)


def test_appends_of_several_channels_in_one_turn_share_one_round(tmp_path: pathlib.Path) -> None:
    sync = CountingSync()
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        files = open_files(tmp_path, 3, gc)
        loop_thread = threading.get_ident()
        for _ in range(10):  # 30 appends in one loop turn
            for f in files:
                f.append_batch([b"e" * 100, b"f"])
        assert all(f.durable_seq == 0 and f.next_seq == 20 for f in files), "not synced yet"
        for f in files:
            await durable(f, 20)
        assert gc.rounds == 1, "one round for every append of the turn"
        assert sync.calls == gc.fsyncs == 3, "one fdatasync per file, not one per append"
        assert loop_thread not in sync.threads, "the fsync runs off the event loop"
        for f in files:
            f.close()

    asyncio.run(main())
    gc.close()


def test_appends_while_a_round_runs_go_in_the_next_round(tmp_path: pathlib.Path) -> None:
    sync = CountingSync()
    sync.gate = threading.Event()
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        f.append(b"a")
        await asyncio.sleep(0)  # the round starts and blocks in the writer thread
        await asyncio.sleep(0)
        for _ in range(50):  # while it runs: loop stays free, appends pile up
            f.append(b"b")
            await asyncio.sleep(0)
        assert f.durable_seq == 0 and f.next_seq == 51
        acked: list[int] = []
        f.when_durable(1, lambda: acked.append(1))
        f.when_durable(51, lambda: acked.append(51))
        assert acked == [], "nothing is released before its round completed"
        sync.gate.set()
        await durable(f, 51)
        assert acked == [1, 51]
        assert gc.rounds == 2, "the 50 later appends shared the second round"
        f.close()

    asyncio.run(main())
    gc.close()


def test_a_failed_fsync_stops_the_file_and_releases_no_ack(tmp_path: pathlib.Path) -> None:
    sync = CountingSync()
    sync.fail = True
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        f.append_batch([b"x", b"y"])
        done = asyncio.get_running_loop().create_future()
        f.when_durable(2, lambda: done.set_result(f.durable_seq))
        assert await asyncio.wait_for(done, 10) == 0, "woken by the failure, not durable"
        assert isinstance(f.failed, StorageFailed)
        with pytest.raises(StorageFailed):
            f.append(b"z")
        f.close()

    asyncio.run(main())
    gc.close()
    assert gc.errors == 1


def test_truncation_during_a_round_is_not_mistaken_for_durability(
    tmp_path: pathlib.Path,
) -> None:
    sync = CountingSync()
    sync.gate = threading.Event()
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        f.append_batch([b"a"] * 4)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # round 1 (target 4) is in flight
        assert f.truncate_from(2) == 2
        assert f.durable_seq == 2, "a truncation fdatasyncs the cut segment"
        f.append_batch([b"b"] * 3)  # seqs 2..4: not durable
        sync.gate.set()
        await durable(f, 5)
        assert f.durable_seq == 5 and gc.rounds == 2, "round 1's target was stale"
        f.close()
        g = RedexFile("gc/c0", RedexFileConfig(path=str(tmp_path / "c0"), fsync="batch"))
        assert [e.payload for e in g.read_range(0, 10)] == [b"a", b"a", b"b", b"b", b"b"]
        g.close()

    asyncio.run(main())
    gc.close()


def test_without_a_committer_batch_still_syncs_per_append(tmp_path: pathlib.Path) -> None:
    f = RedexFile("gc/plain", RedexFileConfig(path=str(tmp_path / "p"), fsync="batch"))
    f.append(b"x")
    assert f.durable_seq == f.next_seq == 1
    called: list[int] = []
    f.when_durable(1, lambda: called.append(1))
    assert called == [1]
    f.close()


# -- the executor holds acknowledgements until durable (executor rule 3) -----------------

A, B = 10, 20


class Hub:
    memory_hard_states: dict[str, Any] = {}


def follower(
    f: RedexFile,
) -> tuple[OutputExecutor, list[tuple[int, Message]], list[BaseException]]:
    cfg = ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))
    coord = ReplicationCoordinator(B, cfg, [A, B])
    sent: list[tuple[int, Message]] = []
    failures: list[BaseException] = []

    class Hooks(ExecutorHooks):
        def on_failed(self, exc: BaseException, out: object) -> None:
            failures.append(exc)

    storage = FileStorage(Hub(), "gc/f", f)  # type: ignore[arg-type]
    ex = OutputExecutor(coord, storage, lambda to, m: sent.append((to, m)), lambda: 0.0, Hooks())
    return ex, sent, failures


def test_a_follower_ack_waits_for_the_fsync_of_its_apply(tmp_path: pathlib.Path) -> None:
    sync = CountingSync()
    sync.gate = threading.Event()
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        ex, sent, _ = follower(f)
        req = SyncRequest(1, 3, 0, 1 << 20, 7)
        ex.run([Apply(0, (b"a", b"b", b"c"), 0), Send(A, Ack(1, 3)), Send(A, req)])
        assert sent == [(A, req)], "the ack is held; a request claiming nothing is not"
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sent == [(A, req)] and f.durable_seq == 0
        sync.gate.set()
        await durable(f, 3)
        assert sent == [(A, req), (A, Ack(1, 3))], "released once the round completed"
        f.close()

    asyncio.run(main())
    gc.close()


def test_a_failed_fsync_fails_the_follower_and_its_ack_never_leaves(
    tmp_path: pathlib.Path,
) -> None:
    sync = CountingSync()
    sync.fail = True
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        ex, sent, failures = follower(f)
        ex.run([Apply(0, (b"a",), 0), Send(A, Ack(1, 1))])
        done = asyncio.get_running_loop().create_future()
        f.when_durable(1, lambda: done.done() or done.set_result(None))
        await asyncio.wait_for(done, 10)
        assert sent == [], "no ack for bytes that never became durable"
        assert ex.stopped and len(failures) == 1 and isinstance(failures[0], StorageFailed)
        f.close()

    asyncio.run(main())
    gc.close()


def test_a_truncation_drops_held_acks_it_made_untrue(tmp_path: pathlib.Path) -> None:
    """An Ack held for an fsync claims seqs a truncation then takes back: it is
    dropped, so the Ack for the new history is not stuck behind it (found by an
    adversarial review: held sends leave in order, and the stale claim would only
    have come true once the log grew past it again)."""
    sync = CountingSync()
    sync.gate = threading.Event()
    gc = GroupCommitter(fsync=sync)

    async def main() -> None:
        (f,) = open_files(tmp_path, 1, gc)
        ex, sent, _ = follower(f)
        ex.run([Apply(0, (b"a", b"b", b"c"), 0), Send(A, Ack(1, 3))])
        assert sent == []
        ex.run([Truncate(1), Apply(1, (b"x",), 0), Send(A, Ack(2, 2))])
        sync.gate.set()
        await durable(f, 2)
        assert sent == [(A, Ack(2, 2))], sent
        f.close()

    asyncio.run(main())
    gc.close()

"""The node worker in process: its ring handling with stand-ins for the ring and the
registry (refusals are acknowledged per batch but logged once per change), and the
replication budget a loopback node's channels get."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from collections import deque
from typing import Any

import pytest

from netmesh.cluster.node_worker import NodeService
from netmesh.cluster.producer import REFUSED_NONE, REFUSED_NOT_LEADER, Producer
from netmesh.errors import NotLeader
from netmesh.identity import EntityKeypair
from netmesh.ratelimit import TokenBucket
from netmesh.replication.budget import UnlimitedBudget
from netmesh.ring import layout as L
from netmesh.ring.shm import ShmRing


class FakeRing:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int, int, int]] = []

    def ack(self, count: int, last_seq: int, rejected: int = 0, reason: int = 0) -> None:
        self.acks.append((count, last_seq, rejected, reason))


class FakeDrainer:
    """The attributes of RingDrainer that NodeService.on_ring_batch uses."""

    def __init__(self) -> None:
        self.channel = "orders"
        self.name = "/ring-1"
        self.ring = FakeRing()
        self.pending: deque[Any] = deque()
        self.detached = False
        self.count = self.rejected = self.last_seq = 0
        self.reason = self.logged_reason = REFUSED_NONE


class FakeRedex:
    def __init__(self) -> None:
        self.leader = True
        self.next = 0

    def append(self, channel: str, batch: list[bytes]) -> int:
        if not self.leader:
            raise NotLeader(channel, 7)
        first, self.next = self.next, self.next + len(batch)
        return first

    def commit_target(self, channel: str, last: int) -> int:
        return -1  # ack="leader": acknowledged once stored

    def get_file(self, channel: str) -> None:
        return None  # no event file: the plain (not idempotent) append path


def test_refusals_are_acked_per_batch_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> FakeDrainer:
        service = NodeService(None, None)  # type: ignore[arg-type]
        redex = FakeRedex()
        service.redex = redex  # type: ignore[assignment]
        d = FakeDrainer()
        service.on_ring_batch(d, [b"a", b"b"])  # type: ignore[arg-type]
        redex.leader = False
        for _ in range(5):
            service.on_ring_batch(d, [b"c"])  # type: ignore[arg-type]
        redex.leader = True
        service.on_ring_batch(d, [b"d"])  # type: ignore[arg-type]
        service.on_ring_batch(d, [b"e"])  # type: ignore[arg-type]
        return d

    with caplog.at_level(logging.INFO, logger="netmesh.worker"):
        d = asyncio.run(scenario())
    assert d.ring.acks[0] == (2, 1, 0, REFUSED_NONE)
    assert d.ring.acks[5] == (7, 1, 5, REFUSED_NOT_LEADER)  # every refused batch acked
    assert d.ring.acks[-1] == (9, 3, 5, REFUSED_NOT_LEADER)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refusing events" in ln for ln in lines) == 1, lines
    assert sum("accepting events again" in ln for ln in lines) == 1, lines


def test_a_detached_drainer_drops_its_batch_without_storing_or_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[FakeDrainer, FakeRedex]:
        service = NodeService(None, None)  # type: ignore[arg-type]
        redex = FakeRedex()
        service.redex = redex  # type: ignore[assignment]
        d = FakeDrainer()
        d.detached = True  # the node is shutting down (its supervisor went away)
        service.on_ring_batch(d, [b"late"])  # type: ignore[arg-type]
        return d, redex

    with caplog.at_level(logging.DEBUG, logger="netmesh.worker"):
        d, redex = asyncio.run(scenario())
    assert redex.next == 0 and d.ring.acks == []
    assert caplog.records == []


def test_a_loopback_nodes_replicated_channels_have_no_budget_cap() -> None:
    """Issue 17 §2: the default NIC peak ("auto") of a node bound to loopback is
    unlimited, so its runtimes' budget never refuses; an explicit peak still applies."""

    async def scenario() -> tuple[object, object, object]:
        service = NodeService(None, None)  # type: ignore[arg-type]
        kp = EntityKeypair.generate()
        await service.op_init(private_key=kp.private_key, psk=b"k" * 32, bind="127.0.0.1:0")
        try:
            service.op_open_channel("auto", {"factor": 1})
            service.op_open_channel("fixed", {"factor": 1, "nic_peak_bytes_per_s": 4000})
            auto = service.redex.replication_runtime("auto")
            fixed = service.redex.replication_runtime("fixed")
            assert auto is not None and fixed is not None
            return auto.coord.config.nic_peak_bytes_per_s, auto.coord.budget, fixed.coord.budget
        finally:
            await service.close()

    peak, auto_budget, fixed_budget = asyncio.run(scenario())
    assert peak is None
    assert isinstance(auto_budget, UnlimitedBudget)
    assert auto_budget.try_consume(1 << 40, 0.0)  # a terabyte at once: no cap
    assert not isinstance(fixed_budget, UnlimitedBudget)
    assert isinstance(fixed_budget, TokenBucket) and fixed_budget.rate == 2000  # 0.5 x 4000


def test_the_loop_drains_a_real_ring_with_no_thread() -> None:
    """A real shm ring into an in-process NodeService: singles and batches (the
    struct path included) from a producer thread arrive in order, acknowledged; the
    loop sleeps on the ring's wake socket (no drainer thread); a detached drainer's
    socket is closed and its ring unmapped."""
    name = f"/netmesh-test-nw-{os.getpid()}-{random.getrandbits(32):x}"

    async def scenario() -> tuple[int, list[bytes], int, bool, bool]:
        service = NodeService(None, None)  # type: ignore[arg-type]
        kp = EntityKeypair.generate()
        await service.op_init(private_key=kp.private_key, psk=b"k" * 32, bind="127.0.0.1:0")
        ring = ShmRing.create(name, 1 << 16)  # small: the producer blocks on a full ring
        threads = threading.active_count()
        try:
            service.op_open_channel("orders")
            service.op_attach_ring(name, "orders")
            drainer = service.drainers[name]
            added = threading.active_count() - threads

            def produce() -> int:
                with Producer(name, "orders") as p:
                    for i in range(200):
                        if i % 2:
                            p.append_batch([b"%d-%d" % (i, j) for j in range(50)])
                        else:
                            p.append(b"%d" % i)
                    return p.flush(timeout=30)

            last = await asyncio.to_thread(produce)
            got = service.op_read_range("orders", 0, 10_000)
            sock = drainer._sock
            service.op_detach_ring(name)
            return last, got, added, sock.fileno() == -1, drainer.ring.closed
        finally:
            await service.close()
            ring.close()
            ring.unlink()

    last, got, added, sock_closed, unmapped = asyncio.run(scenario())
    expected = [
        p
        for i in range(200)
        for p in ([b"%d-%d" % (i, j) for j in range(50)] if i % 2 else [b"%d" % i])
    ]
    assert got == expected
    assert last == len(expected) - 1
    assert added == 0
    assert sock_closed and unmapped


def test_a_lost_wake_up_costs_at_most_the_safety_look() -> None:
    """Frames published while the loop did not say it waits (so no datagram is sent)
    are taken by the service's periodic look at idle rings."""
    name = f"/netmesh-test-nw-{os.getpid()}-{random.getrandbits(32):x}"

    async def scenario() -> list[bytes]:
        service = NodeService(None, None)  # type: ignore[arg-type]
        kp = EntityKeypair.generate()
        await service.op_init(private_key=kp.private_key, psk=b"k" * 32, bind="127.0.0.1:0")
        ring = ShmRing.create(name, 1 << 16)
        try:
            service.op_open_channel("orders")
            service.op_attach_ring(name, "orders")
            await asyncio.sleep(0)  # one loop turn: the drainer's first look (call_soon)
            assert not service.drainers[name].scheduled  # it found nothing and armed
            words = ring.header_words()
            try:
                words[L.W_CONSUMER_WAITING] = 0  # as if the wake-up were lost
            finally:
                words.release()
            ring.put(b"late")  # no datagram: nobody said it waits
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while service.redex.get_file("orders").next_seq == 0:  # type: ignore[union-attr]
                assert loop.time() < deadline, "the safety look never took the frame"
                await asyncio.sleep(0.01)  # polling the state under test, with a deadline
            return service.op_read_range("orders", 0, 10)
        finally:
            await service.close()
            ring.close()
            ring.unlink()

    assert asyncio.run(scenario()) == [b"late"]


def test_a_wake_datagram_takes_the_frames_in_its_own_callback() -> None:
    """Issue 17 §3: the wake socket's callback appends the published frames itself,
    with no extra loop turn (a turn was ~15-20 us of every quorum flush)."""
    name = f"/netmesh-test-nw-{os.getpid()}-{random.getrandbits(32):x}"

    async def scenario() -> tuple[int, int]:
        service = NodeService(None, None)  # type: ignore[arg-type]
        kp = EntityKeypair.generate()
        await service.op_init(private_key=kp.private_key, psk=b"k" * 32, bind="127.0.0.1:0")
        ring = ShmRing.create(name, 1 << 16)
        try:
            service.op_open_channel("orders")
            service.op_attach_ring(name, "orders")
            drainer = service.drainers[name]
            await asyncio.sleep(0)  # one loop turn: the drainer's first look (call_soon)
            assert not drainer.scheduled  # it found nothing and armed
            ring.put_batch([b"a", b"b", b"c"])  # the drainer waits: a datagram is sent
            loop = asyncio.get_running_loop()
            loop.remove_reader(drainer._sock.fileno())  # this test runs the callback
            f = service.redex.get_file("orders")
            assert f is not None
            before = f.next_seq
            drainer._on_wake()  # what the loop runs when the datagram arrives
            return before, f.next_seq
        finally:
            await service.close()
            ring.close()
            ring.unlink()

    before, after = asyncio.run(scenario())
    assert (before, after) == (0, 3)

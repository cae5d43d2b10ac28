"""JetStream adapter against real nats-server processes: a three-node cluster with R3
streams whose stream leader is SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter

import nats
import pytest

from netmesh.bus import BatchConfig, EventBus, StoredEvent
from netmesh.bus.adapters.jetstream import JetStreamAdapter
from netmesh.errors import AdapterError, Backpressure, ConfigError
from netmesh.testing.servers import NatsCluster, NatsServer, free_port
from tests.conftest import wait_until

FAST = BatchConfig(min_size=20, max_size=200, max_delay=0.002)
TOTAL = 6000  # events the leader-kill run accepts


async def _stream_facts(urls: str, stream: str) -> tuple[str, int, int]:
    nc = await nats.connect(servers=urls.split(","), connect_timeout=2)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        return str(info.cluster.leader), int(info.config.num_replicas or 0), info.state.messages
    finally:
        await nc.close()


def stream_facts(urls: str, stream: str) -> tuple[str, int, int]:
    """(leader server name, replicas, messages) of a stream."""
    return asyncio.run(_stream_facts(urls, stream))


def test_leader_kill_in_r3_cluster_loses_and_duplicates_nothing(nats_cluster: NatsCluster) -> None:
    adapter = JetStreamAdapter(nats_cluster.urls, replicas=3, request_timeout=1.0)
    accepted: list[int] = []
    with EventBus(
        shards=1,
        ring_capacity=2000,  # bounds the backlog the outage builds up
        batch=FAST,
        adapter=adapter,
        backpressure="fail_producer",
        max_backoff=0.1,
    ) as bus:
        leader, replicas, _ = stream_facts(nats_cluster.urls, "net_shard_0")
        assert replicas == 3
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set() and len(accepted) < TOTAL:
                try:
                    bus.emit({"i": i})
                    accepted.append(i)
                except Backpressure:  # a producer's answer to backpressure: wait a little
                    with contextlib.suppress(TimeoutError):
                        bus.flush(timeout=0.05)
                i += 1

        t = threading.Thread(target=produce)
        t.start()
        try:
            wait_until(lambda: bus.stats().stored > 300, timeout=10, message="some stored")
            at_kill = bus.stats().stored
            nats_cluster.by_name(leader).kill()
            # nats-server 2.9's stream raft waits 4-9 s before a follower campaigns; more
            # than a ring and a batch stored since the kill went through the new leader
            wait_until(
                lambda: bus.stats().stored > at_kill + 2000 + 200,
                timeout=40,
                interval=0.05,
                message="events stored through a new leader",
            )
        finally:
            stop.set()
            t.join()
        survivors = ",".join(s.url for s in nats_cluster.servers if s.running)

        def new_leader() -> bool:
            try:
                return stream_facts(survivors, "net_shard_0")[0] not in ("", leader)
            except Exception:
                return False

        wait_until(new_leader, timeout=30, interval=0.1, message="the stream reports a new leader")
        bus.flush(timeout=30)
        stats = bus.stats()
        assert stats.ingested == stats.stored == len(accepted) and stats.pending == 0
        assert set(stats.dropped_by_reason) <= {"ring_full", "backend_down"}  # refusals only
        events: list[StoredEvent] = []
        cursor = None
        while True:
            resp = bus.poll(1000, cursor)
            events += resp.events
            cursor = resp.next_cursor
            if not resp.has_more:
                break
    ids = [e.json()["i"] for e in events]
    dups = [i for i, n in Counter(ids).items() if n > 1]
    assert not dups, f"duplicated: {dups[:10]}"
    assert ids == accepted  # one shard: exactly the accepted events, in order


def test_r1_duplicate_window_and_names(nats_server: NatsServer) -> None:
    from netmesh.bus.types import Batch

    adapter = JetStreamAdapter(nats_server.url, prefix="orders")
    adapter.init(2)
    try:
        b = Batch(1, 0, "0" * 16, [b"a", b"b"], [10, 20])
        adapter.on_batch(b)
        adapter.on_batch(b)
        got = adapter.poll_shard(1, None, 10)
        assert [(e.id, e.raw, e.insertion_ts) for e in got] == [("1", b"a", 10), ("2", b"b", 20)]
        assert adapter.duplicates_skipped == 2
        assert adapter.poll_shard(1, "2", 10) == [] and adapter.poll_shard(0, None, 10) == []
        assert adapter.is_healthy()
    finally:
        adapter.shutdown()
    assert not adapter.is_healthy()


def test_unreachable_server_and_bad_config() -> None:
    with pytest.raises(AdapterError):
        JetStreamAdapter(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5).init(1)
    with pytest.raises(ConfigError):
        JetStreamAdapter(replicas=0)
    with pytest.raises(ConfigError):
        JetStreamAdapter(prefix="a.b")

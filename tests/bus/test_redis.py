"""Redis Streams adapter against real redis-server processes: a primary with a replica,
a server killed and restarted mid-run, a server gone for longer than ``retry_for``
under each backpressure mode."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

import pytest
import redis

from netmesh.bus import BatchConfig, EventBus, StoredEvent
from netmesh.bus.adapters.redis_streams import RedisStreamsAdapter
from netmesh.errors import AdapterError, Backpressure
from netmesh.testing.servers import RedisServer
from tests.conftest import wait_until

FAST = BatchConfig(min_size=20, max_size=200, max_delay=0.002)


def read_all(adapter: RedisStreamsAdapter, shards: int) -> list[StoredEvent]:
    return [e for s in range(shards) for e in adapter.poll_shard(s, None, 1_000_000)]


def assert_exactly_once_in_order(events: list[StoredEvent], accepted: list[int]) -> None:
    ids = [e.json()["i"] for e in events]
    dups = [i for i, n in Counter(ids).items() if n > 1]
    assert not dups, f"duplicated: {dups[:10]}"
    assert sorted(ids) == sorted(accepted), f"missing: {sorted(set(accepted) - set(ids))[:10]}"
    for s in {e.shard for e in events}:  # per-shard (here: per-key) order kept
        mine = [e.json()["i"] for e in events if e.shard == s]
        assert mine == sorted(mine)


def test_primary_with_replica_acknowledges_after_wait(
    redis_pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = redis_pair
    adapter = RedisStreamsAdapter(primary.url, read_url=replica.url, wait_replicas=1)
    with EventBus(shards=2, batch=FAST, adapter=adapter) as bus:
        bus.emit_batch([{"i": i} for i in range(1000)])
        bus.flush(timeout=10)
        # WAIT 1 made every acknowledged batch reach the replica; poll reads the replica
        got = [e.json()["i"] for e in bus.poll(5000)]
        assert sorted(got) == list(range(1000))
        assert bus.stats().stored == 1000
    r = redis.Redis.from_url(replica.url)
    try:
        assert r.xlen("net:shard:0") + r.xlen("net:shard:1") == 1000
        assert r.hlen("net:shard:0:dedup") == 1  # one high-water mark per producer
        assert r.info("replication")["role"] == "slave"
    finally:
        r.close()


def test_wait_fails_without_enough_replicas(redis_server: RedisServer) -> None:
    from netmesh.bus.types import Batch

    adapter = RedisStreamsAdapter(redis_server.url, wait_replicas=1, wait_timeout=0.05)
    adapter.init(1)
    try:
        with pytest.raises(AdapterError, match="WAIT"):
            adapter.on_batch(Batch(0, 0, "0" * 16, [b"x"], [1]))
    finally:
        adapter.shutdown()


def test_restart_mid_run_loses_and_duplicates_nothing(redis_server: RedisServer) -> None:
    adapter = RedisStreamsAdapter(redis_server.url, connect_timeout=1.0, command_timeout=1.0)
    accepted: list[int] = []
    with EventBus(
        shards=2, batch=FAST, adapter=adapter, backpressure="fail_producer", max_backoff=0.05
    ) as bus:
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set() or i < 3000:
                try:
                    bus.emit({"i": i}, key=i % 5)
                    accepted.append(i)
                except Backpressure:  # a producer's answer to backpressure: wait a little
                    with contextlib.suppress(TimeoutError):
                        bus.flush(timeout=0.05)
                i += 1

        t = threading.Thread(target=produce)
        t.start()
        wait_until(lambda: bus.stats().stored > 500, timeout=10, message="some stored")
        redis_server.kill()  # SIGKILL: appendfsync always kept every acknowledged batch
        wait_until(lambda: not bus.is_healthy(), timeout=10, message="bus sees the outage")
        assert bus.stats().pending > 0
        redis_server.start()  # same port, same AOF
        stop.set()
        t.join()
        bus.flush(timeout=20)
        assert bus.is_healthy()
        stats = bus.stats()
        assert sum(s.retries for s in stats.shards) > 0
        assert stats.dropped == 0 and stats.stored == len(accepted)
    assert_exactly_once_in_order(read_all(RedisStreamsAdapter(redis_server.url), 2), accepted)


@pytest.mark.parametrize("mode", ["drop_oldest", "drop_newest", "fail_producer"])
def test_backend_down_past_retry_for(redis_server: RedisServer, mode: str) -> None:
    adapter = RedisStreamsAdapter(redis_server.url, connect_timeout=0.5, command_timeout=0.5)
    with EventBus(
        shards=1,
        batch=BatchConfig(1, 100, 0.001),
        adapter=adapter,
        backpressure=mode,
        retry_for=0.2,
        max_backoff=0.02,
    ) as bus:
        bus.emit({"i": 0})
        bus.flush(timeout=5)
        redis_server.kill()
        bus.emit({"i": 1})  # its batch fails for retry_for
        twos: list[int] = []
        if mode == "drop_oldest":
            wait_until(
                lambda: bus.stats().dropped_by_reason.get("backend_timeout") == 1,
                timeout=10,
                message="the batch given up",
            )
            # drop_oldest keeps accepting; whether this one is stored or also given up
            # depends on how fast the server comes back (the stats say which)
            assert bus.emit({"i": 2}) is not None
        else:

            def refused() -> bool:  # accepted until the batch has failed for retry_for
                try:
                    if bus.emit({"i": 2}) is not None:
                        twos.append(2)
                        return False
                    return True
                except Backpressure as exc:
                    assert exc.reason == "backend_down"
                    return True

            wait_until(refused, timeout=10, message="new events refused")
            assert bus.stats().dropped_by_reason["backend_down"] >= 1
            assert bus.stats().ingested == 2 + len(twos)  # accepted events are kept
        assert not bus.is_healthy()
        redis_server.start()
        wait_until(bus.is_healthy, timeout=10, message="recovery")
        assert bus.emit({"i": 3}) is not None
        bus.flush(timeout=10)
        got = [e.json()["i"] for e in bus.poll(100)]
        stats = bus.stats()
    if mode == "drop_oldest":
        lost = stats.dropped_by_reason["backend_timeout"]
        assert got == ([0, 2, 3] if lost == 1 else [0, 3]) and lost in (1, 2)
        assert stats.ingested == stats.stored + lost
    else:
        assert got == [0, 1, *twos, 3] and stats.ingested == stats.stored


def test_maxlen_trims_streams(redis_server: RedisServer) -> None:
    adapter = RedisStreamsAdapter(redis_server.url, maxlen=100, pipeline=7)
    with EventBus(shards=1, batch=BatchConfig(50, 500, 0.001), adapter=adapter) as bus:
        bus.emit_batch([{"i": i} for i in range(2000)])
        bus.flush(timeout=10)
        got = [e.json()["i"] for e in bus.poll(5000)]
    assert 100 <= len(got) < 2000 and got == list(range(2000 - len(got), 2000))


def test_unreachable_server_fails_at_init() -> None:
    from netmesh.testing.servers import free_port

    with pytest.raises(AdapterError, match="ping"):
        EventBus(adapter=RedisStreamsAdapter(f"redis://127.0.0.1:{free_port()}/0"))

"""EventBus behaviour on the memory adapter: backpressure modes, batching, flush and
shutdown, stats accounting, argument checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from netmesh.bus import BatchConfig, EventBus, MemoryAdapter, NetmeshAdapter
from netmesh.errors import (
    AdapterError,
    Backpressure,
    BadCursor,
    Closed,
    ConfigError,
    FilterError,
)
from tests.conftest import wait_until

# the worker takes nothing before flush(): min_size beyond the ring, a long max_delay
HOLD = BatchConfig(min_size=1000, max_size=1000, max_delay=60.0)


def values(bus: EventBus) -> list[int]:
    return [e.json()["i"] for e in bus.poll(10_000)]


def test_drop_oldest_evicts_and_counts() -> None:
    with EventBus(shards=1, ring_capacity=8, backpressure="drop_oldest", batch=HOLD) as bus:
        receipts = [bus.emit({"i": i}) for i in range(12)]
        assert all(r is not None for r in receipts)
        s = bus.stats()
        assert (s.ingested, s.pending, s.dropped_by_reason) == (12, 8, {"evicted": 4})
        bus.flush(timeout=5)
        assert values(bus) == list(range(4, 12))
        s = bus.stats()
        assert s.stored == 8 and s.ingested == s.stored + s.dropped_by_reason["evicted"]


def test_drop_newest_refuses_and_counts() -> None:
    with EventBus(shards=1, ring_capacity=8, backpressure="drop_newest", batch=HOLD) as bus:
        receipts = [bus.emit({"i": i}) for i in range(12)]
        assert receipts[8:] == [None] * 4 and None not in receipts[:8]
        assert bus.emit_batch([{"i": 99}, {"i": 100}]) == 0
        assert bus.stats().dropped_by_reason == {"ring_full": 6}
        bus.flush(timeout=5)
        assert values(bus) == list(range(8))
        assert bus.stats().ingested == 8


def test_fail_producer_raises() -> None:
    with EventBus(shards=1, ring_capacity=8, backpressure="fail_producer", batch=HOLD) as bus:
        for i in range(8):
            bus.emit({"i": i})
        with pytest.raises(Backpressure) as err:
            bus.emit({"i": 8})
        assert err.value.reason == "ring_full" and err.value.shard == 0
        bus.flush(timeout=5)
        assert bus.emit({"i": 9}) is not None  # room again
        bus.flush(timeout=5)
        assert values(bus) == [*range(8), 9]
        assert bus.stats().dropped_by_reason == {"ring_full": 1}


def test_max_delay_releases_a_small_batch_without_flush() -> None:
    cfg = BatchConfig(min_size=1000, max_size=1000, max_delay=0.02)
    with EventBus(shards=2, batch=cfg) as bus:
        bus.emit({"i": 1})
        wait_until(lambda: bus.stats().stored == 1, timeout=5, message="max_delay batch")
        assert bus.stats().shards[0].batches + bus.stats().shards[1].batches == 1


def test_min_size_releases_batches_of_min_size() -> None:
    cfg = BatchConfig(min_size=10, max_size=10, max_delay=60.0)
    with EventBus(shards=1, batch=cfg) as bus:
        bus.emit_batch([{"i": i} for i in range(35)])
        wait_until(lambda: bus.stats().stored == 30, timeout=5, message="three full batches")
        assert bus.stats().pending == 5
        bus.flush(timeout=5)
        assert bus.stats().shards[0].batches == 4 and values(bus) == list(range(35))


def test_shutdown_drains_and_then_refuses() -> None:
    adapter = MemoryAdapter()
    bus = EventBus(shards=3, batch=HOLD, adapter=adapter)
    bus.emit_batch([{"i": i} for i in range(100)])
    bus.shutdown()
    bus.shutdown()  # idempotent
    assert bus.closed and bus.stats().stored == 100
    assert sum(len(adapter.poll_shard(s, None, 1000)) for s in range(3)) == 100
    with pytest.raises(Closed):
        bus.emit({"i": 1})
    with pytest.raises(Closed):
        bus.emit_batch([{"i": 1}])
    assert list(bus.subscribe(timeout=5)) == []  # a closed bus ends its streams
    with pytest.raises(Closed):
        bus.poll()


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_encoding_and_argument_checks() -> None:
    with EventBus(shards=1, batch=BatchConfig(1, 10, 0.001)) as bus:
        bus.emit(Point(1, 2))
        bus.emit_raw("héllo")
        bus.flush(timeout=5)
        assert [e.raw for e in bus.poll()] == [b'{"x":1,"y":2}', "héllo".encode()]
        assert bus.poll().events[1].text == "héllo"
        with pytest.raises(TypeError):
            bus.emit("a str is raw")
        with pytest.raises(TypeError):
            bus.emit({"x": object()})
        with pytest.raises(TypeError):
            bus.emit_raw(3)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            bus.emit_batch([{"a": 1}], keys=[])
        with pytest.raises(ConfigError):
            bus.poll(0)
        with pytest.raises(BadCursor):
            bus.poll(cursor="nope")
        with pytest.raises(FilterError):
            bus.poll(filter={"$nor": []})
        assert bus.is_healthy()
    for bad in ({"shards": 0}, {"ring_capacity": 0}, {"backpressure": "block"}):
        with pytest.raises(ConfigError):
            EventBus(**bad)  # type: ignore[arg-type]


def test_netmesh_adapter_without_a_cluster_is_a_clear_adapter_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path))
    with pytest.raises(AdapterError, match="no cluster named 'orders'"):
        NetmeshAdapter(name="orders")


def test_memory_adapter_max_events_trims_oldest_and_keeps_ids() -> None:
    adapter = MemoryAdapter(max_events=10)
    with EventBus(shards=1, batch=BatchConfig(1, 5, 0.001), adapter=adapter) as bus:
        bus.emit_batch([{"i": i} for i in range(25)])
        bus.flush(timeout=5)
        page = bus.poll(100)
    assert [e.json()["i"] for e in page] == list(range(15, 25))
    assert [e.id for e in page][:2] == ["15", "16"]


def test_concurrent_producers_lose_nothing() -> None:
    import threading

    with EventBus(shards=4, batch=BatchConfig(50, 500, 0.002)) as bus:

        def produce(p: int) -> None:
            for i in range(2000):
                bus.emit({"p": p, "i": i}, key=p)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bus.flush(timeout=10)
        per: dict[int, list[int]] = {}
        for e in bus.poll(10_000):
            d = e.json()
            per.setdefault(d["p"], []).append(d["i"])
    assert all(v == list(range(2000)) for v in per.values()) and len(per) == 4


def test_pages_rotate_over_shards_and_bad_positions_are_bad_cursors() -> None:
    from netmesh.bus.cursor import Cursor

    with EventBus(shards=2, batch=BatchConfig(1, 1000, 0.001)) as bus:
        bus.emit_batch([{"i": i} for i in range(100)], keys=[i % 2 for i in range(100)])
        bus.flush(timeout=5)
        first = bus.poll(10)
        second = bus.poll(10, first.next_cursor)
        assert {e.shard for e in first} != {e.shard for e in second}  # no shard starves
        assert first.has_more and second.has_more
        with pytest.raises(BadCursor):
            bus.poll(cursor=Cursor({0: "1-0"}).encode())


def test_insertion_ts_ordering_sorts_a_page() -> None:
    with EventBus(shards=3, batch=BatchConfig(1, 1000, 0.001)) as bus:
        for i in range(60):
            bus.emit({"i": i})
        bus.flush(timeout=5)
        page = bus.poll(100, ordering="insertion_ts")
        assert [e.json()["i"] for e in page] == list(range(60))
        assert len({e.shard for e in page}) > 1
        with pytest.raises(ConfigError):
            bus.poll(ordering="seq")

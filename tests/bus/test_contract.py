"""The adapter contract, run unchanged on every backend (memory, a real Redis, a real
JetStream server): what emit stores, poll returns, in per-key order, with exact cursor
resumption, filters, idempotent retries and the producer nonce across restarts."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

from netmesh.bus import BatchConfig, EventBus, StoredEvent
from netmesh.bus.dedup import SESSION_SHIFT, split_dedup_id
from netmesh.bus.types import Batch
from tests.bus.conftest import AdapterFactory

FAST = BatchConfig(min_size=16, max_size=256, max_delay=0.002)


@dataclasses.dataclass
class Order:
    id: int
    user: str
    kind: str


def drain(
    bus: EventBus, cursor: str | None = None, page: int = 1000, **kw: object
) -> tuple[list[StoredEvent], str | None]:
    """Poll until a page says nothing more; return the events and the cursor."""
    out: list[StoredEvent] = []
    while True:
        resp = bus.poll(page, cursor, **kw)  # type: ignore[arg-type]
        out += resp.events
        cursor = resp.next_cursor
        if not resp.has_more:
            return out, cursor


def test_round_trip_keeps_per_key_order_and_receipts(make_adapter: AdapterFactory) -> None:
    users = ["ann", "bob", "cy", "dee", "eve"]
    with EventBus(shards=3, batch=FAST, adapter=make_adapter()) as bus:
        receipts = [bus.emit(Order(i, users[i % 5], "buy"), key=users[i % 5]) for i in range(500)]
        raw = bus.emit_raw(b"\x00raw bytes", key="ann")
        assert bus.emit_batch([{"n": 1}, "text", b"bytes"]) == 3
        bus.flush(timeout=10)
        events, _ = drain(bus, page=128)
        stats = bus.stats()
    assert len(events) == 504 and stats.stored == 504 and stats.pending == 0
    assert all(r is not None for r in receipts) and raw is not None
    by_ts = {(r.shard, r.timestamp) for r in receipts if r is not None}
    orders = [e for e in events if e.raw.startswith(b'{"id"')]
    assert all((e.shard, e.insertion_ts) in by_ts for e in orders)
    seen: dict[str, list[int]] = defaultdict(list)
    shard_of: dict[str, set[int]] = defaultdict(set)
    for e in orders:
        doc = e.json()
        seen[doc["user"]].append(doc["id"])
        shard_of[doc["user"]].add(e.shard)
    assert all(ids == sorted(ids) and len(ids) == 100 for ids in seen.values()), seen
    assert all(len(s) == 1 for s in shard_of.values())  # one key, one shard
    assert shard_of["ann"] == {next(e.shard for e in events if e.raw == b"\x00raw bytes")}
    dedup = [e.dedup_id for e in events]
    assert len(set(dedup)) == len(dedup)
    assert {split_dedup_id(d)[0] for d in dedup} == {bus.producer_nonce}


def test_cursor_resumes_exactly_across_buses(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    with EventBus(shards=2, batch=FAST, adapter=adapter) as bus:
        bus.emit_batch([{"i": i} for i in range(300)])
        bus.flush(timeout=10)
        first: list[StoredEvent] = []
        cursor = None
        while len(first) < 300:
            resp = bus.poll(37, cursor)
            assert len(resp) <= 37
            first += resp.events
            cursor = resp.next_cursor
        assert bus.poll(50, cursor).events == []
    # a new bus on the same backend continues from the saved cursor
    with EventBus(shards=2, batch=FAST, adapter=make_adapter()) as bus2:
        bus2.emit_batch([{"i": i} for i in range(300, 500)])
        bus2.flush(timeout=10)
        rest, cursor = drain(bus2, cursor, page=64)
        assert bus2.poll(10, cursor).events == []
    got = sorted(e.json()["i"] for e in first + rest)
    assert got == list(range(500))


def test_filters_select_exactly_the_matching_events(make_adapter: AdapterFactory) -> None:
    with EventBus(shards=2, batch=FAST, adapter=make_adapter()) as bus:
        kinds = ["buy", "sell", "hold"]
        bus.emit_batch(
            [{"i": i, "kind": kinds[i % 3], "meta": {"vip": i % 2 == 0}} for i in range(240)]
        )
        bus.emit_raw(b"not json")
        bus.flush(timeout=10)
        sells, _ = drain(bus, page=25, filter={"path": "kind", "value": "sell"})
        vip_buys, _ = drain(
            bus,
            page=25,
            filter='{"$and": [{"path": "kind", "value": "buy"},'
            ' {"path": "meta.vip", "value": true}]}',
        )
        not_buy, _ = drain(bus, filter={"$not": {"path": "kind", "value": "buy"}})
    assert sorted(e.json()["i"] for e in sells) == [i for i in range(240) if i % 3 == 1]
    assert sorted(e.json()["i"] for e in vip_buys) == [i for i in range(240) if i % 6 == 0]
    assert len(not_buy) == 160 + 1  # the non-JSON event is "not buy"


def test_a_retried_batch_is_stored_once(make_adapter: AdapterFactory) -> None:
    adapter = make_adapter()
    adapter.init(1)
    try:
        nonce = "00000000000000aa"
        b1 = Batch(0, 7, nonce, [b"a", b"b", b"c"], [1, 2, 3])
        adapter.on_batch(b1)
        adapter.on_batch(b1)  # the reply was lost: the bus sends the identical batch
        adapter.on_batch(Batch(0, 8, nonce, [b"d"], [4]))
        adapter.on_batch(b1)  # a late repeat of an older batch
        adapter.on_batch(Batch(0, 8, "00000000000000bb", [b"other producer"], [5]))
        events = adapter.poll_shard(0, None, 100)
    finally:
        adapter.shutdown()
    assert [e.raw for e in events] == [b"a", b"b", b"c", b"d", b"other producer"]
    assert events[1].dedup_id == f"{nonce}:0:7:1" and events[1].insertion_ts == 2
    assert adapter.poll_shard is not None and [e.raw for e in events[3:4]] == [b"d"]


def test_a_persisted_nonce_never_hides_new_events(make_adapter: AdapterFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "producer.nonce"
    adapter = make_adapter()
    with EventBus(shards=1, batch=FAST, adapter=adapter, producer_nonce_path=path) as a:
        a.emit_batch([{"run": 1, "i": i} for i in range(50)])
        a.flush(timeout=10)
        nonce = a.producer_nonce
    with EventBus(shards=1, batch=FAST, adapter=make_adapter(), producer_nonce_path=path) as b:
        assert b.producer_nonce == nonce
        b.emit_batch([{"run": 2, "i": i} for i in range(50)])
        b.flush(timeout=10)
        events, _ = drain(b)
    assert len(events) == 100
    seqs = [split_dedup_id(e.dedup_id)[2] for e in events if e.json()["run"] == 2]
    assert min(seqs) >= 1 << SESSION_SHIFT


def test_subscribe_sync_and_async(make_adapter: AdapterFactory) -> None:
    with EventBus(shards=2, batch=FAST, adapter=make_adapter()) as bus:
        bus.emit_batch([{"i": i} for i in range(120)])
        stream = bus.subscribe(limit=50, timeout=10)
        got = [next(stream).json()["i"] for _ in range(120)]
        assert sorted(got) == list(range(120))
        bus.emit_batch([{"i": i} for i in range(120, 150)])

        async def consume() -> list[int]:
            out = []
            async for ev in bus.subscribe(limit=20, cursor=stream.cursor, timeout=10):
                out.append(ev.json()["i"])
                if len(out) == 30:
                    break
            return out

        assert sorted(asyncio.run(consume())) == list(range(120, 150))
        # an empty stream ends at its timeout
        assert (
            list(
                bus.subscribe(cursor=stream.cursor, timeout=0.05, filter={"path": "i", "value": -1})
            )
            == []
        )

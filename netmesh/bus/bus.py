"""EventBus: sharded in-process rings, one batching worker thread per shard, an adapter
that stores the batches, and ``poll`` that reads them back with an opaque cursor.

Theory of operation (the reference's bus, ``mesh_spec.md`` §6.1, in Python)::

    emit(obj, key) -> JSON bytes -> shard = crc32c(key or bytes) -> ring[shard] (bounded)
    worker[shard]: wait for min_size / max_delay / flush -> Batch -> adapter.on_batch
                   (retried with back-off for up to retry_for s) -> counted stored
    poll(limit, cursor, filter) -> adapter.poll_shard per shard -> filter -> next cursor

Why threads and not asyncio tasks: ``emit`` must be a plain call usable from any code,
sync or async, without the caller owning an event loop; the adapters' clients are
blocking (redis-py) or run their own private loop (nats-py, see the JetStream adapter);
and a worker spends its time waiting on the backend, which releases the GIL. One thread
per shard is also the simplest way to keep per-shard order: a shard's batches are
handed to the adapter by exactly one thread, one at a time.

Rules:

1. Per-shard FIFO. Events of one shard reach the adapter in emit order; a retried batch
   is the identical batch (same ``seq``), so the adapter can de-duplicate it.
2. Nothing accepted is lost silently: every accepted event ends up stored or counted in
   ``stats().dropped_by_reason`` (``ingested == stored + evicted + backend_timeout +
   shutdown + pending``). ``drop_newest`` and ``fail_producer`` never drop an accepted
   event while the bus runs: a shard whose backend has failed for ``retry_for`` s keeps
   its batch and keeps retrying, and refuses *new* events (``"backend_down"``) until the
   backend answers again. ``drop_oldest`` keeps accepting: a full ring evicts its oldest
   event, and a batch that failed for ``retry_for`` s is dropped.
3. ``emit`` never blocks on the backend: it takes one shard lock for a few appends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from netmesh.bus import cursor as cursor_mod
from netmesh.bus.adapters.base import Adapter
from netmesh.bus.adapters.memory import MemoryAdapter
from netmesh.bus.dedup import load_identity
from netmesh.bus.filter import compile_filter
from netmesh.bus.shard import Key, key_bytes, shard_for
from netmesh.bus.types import (
    BACKPRESSURE_MODES,
    Batch,
    BatchConfig,
    BusStats,
    PollResponse,
    Receipt,
    ShardStats,
    StoredEvent,
)
from netmesh.errors import Backpressure, Closed, ConfigError

log = logging.getLogger(__name__)

MAX_SHARD_FETCH = 10_000  # per-shard page cap of one poll (the reference's)
_ACCEPTED_DROPS = ("evicted", "backend_timeout", "shutdown")
FilterSpec = dict[str, Any] | str
# one compact encoder: json.dumps with arguments builds a new encoder per call
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode_event(obj: Any) -> bytes:
    """JSON bytes of an event: a dataclass instance goes through ``asdict``, an object
    with ``model_dump`` (Pydantic) through ``model_dump(mode="json")``, anything else
    through ``json.dumps``. ``str``/``bytes`` raise TypeError: they are ``emit_raw``'s."""
    if type(obj) is dict:  # the common case first
        return _dumps(obj).encode()
    if isinstance(obj, str | bytes | bytearray):
        raise TypeError("emit() takes a dict or dataclass; use emit_raw() for str/bytes")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return _dumps(obj).encode()


def _raw(data: bytes | bytearray | str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    raise TypeError(f"emit_raw() takes bytes or str, not {type(data).__name__}")


class _Shard:
    """One shard's ring and counters; every field is guarded by ``cond``'s lock."""

    def __init__(self, idx: int, first_seq: int) -> None:
        self.idx = idx
        self.cond = threading.Condition(threading.Lock())
        self.payloads: deque[bytes] = deque()
        self.stamps: deque[int] = deque()
        self.head = 0  # acceptance index of payloads[0]
        self.accepted = 0  # events accepted so far (next acceptance index)
        self.inflight: int | None = None  # acceptance index of the in-flight batch's first
        self.inflight_n = 0
        self.flush_to = 0  # a flush waits for every index below this
        self.closing = False
        self.abandon = False  # shutdown deadline passed with the backend down
        self.stored = 0
        self.dropped: Counter[str] = Counter()
        self.batches = 0
        self.retries = 0
        self.failing = False  # the last on_batch call failed
        self.down = False  # failing for longer than retry_for
        self.next_seq = first_seq

    def oldest_pending(self) -> int:
        """Acceptance index of the oldest event not yet stored or dropped."""
        if self.inflight is not None:
            return self.inflight
        return self.head if self.payloads else self.accepted

    def pending(self) -> int:
        return len(self.payloads) + (self.inflight_n if self.inflight is not None else 0)


class EventBus:
    """A sharded event bus over a storage adapter.

    Args:
        shards: number of shards (default: CPU count); each gets a ring and a worker thread.
        ring_capacity: events per shard ring (default 65,536; the reference's 1,048,576
            costs ~100 MB of Python objects per shard when full).
        backpressure: what a full ring or a down backend does, see module rule 2:
            ``"drop_oldest"`` (default, the reference's), ``"drop_newest"`` (``emit``
            returns None) or ``"fail_producer"`` (``emit`` raises :class:`Backpressure`).
        batch: :class:`BatchConfig` (default 1,000 / 10,000 / 10 ms).
        adapter: where events are stored (default :class:`MemoryAdapter`); ``init`` is
            called here, so an unreachable backend raises :class:`AdapterError` now.
        producer_nonce_path: file that keeps this producer's nonce across restarts
            (:mod:`netmesh.bus.dedup`); None: a fresh nonce per bus.
        retry_for: seconds a failing batch is retried (back-off 10 ms doubling up to
            ``max_backoff``) before the backpressure mode applies (default 30 s, the
            reference's adapter timeout).
        max_backoff: the longest wait between retries, seconds (default 0.5).

    Raises :class:`ConfigError` naming the bad argument.
    """

    def __init__(
        self,
        shards: int | None = None,
        ring_capacity: int = 65_536,
        backpressure: str = "drop_oldest",
        batch: BatchConfig | None = None,
        adapter: Adapter | None = None,
        *,
        producer_nonce_path: str | os.PathLike[str] | None = None,
        retry_for: float = 30.0,
        max_backoff: float = 0.5,
    ) -> None:
        n = shards if shards is not None else (os.cpu_count() or 1)
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"EventBus.shards must be an int >= 1, got {shards!r}")
        if ring_capacity < 1:
            raise ConfigError(f"EventBus.ring_capacity must be >= 1, got {ring_capacity}")
        if backpressure not in BACKPRESSURE_MODES:
            raise ConfigError(
                f"EventBus.backpressure must be one of {BACKPRESSURE_MODES}, got {backpressure!r}"
            )
        if not retry_for >= 0 or not max_backoff > 0:
            raise ConfigError("EventBus.retry_for must be >= 0 and max_backoff > 0")
        self.num_shards = n
        self.ring_capacity = ring_capacity
        self.backpressure = backpressure
        self.batch = batch or BatchConfig()
        self.adapter = adapter if adapter is not None else MemoryAdapter()
        self.retry_for = retry_for
        self.max_backoff = max_backoff
        self.identity = load_identity(producer_nonce_path)
        self._close_lock = threading.Lock()
        self._closed = False
        self._close_deadline = float("inf")
        try:
            self.adapter.init(n)
        except BaseException:
            self.adapter.shutdown()
            raise
        self._shards = [_Shard(i, self.identity.first_seq) for i in range(n)]
        self._threads = [
            threading.Thread(target=self._worker, args=(s,), name=f"bus-shard-{s.idx}", daemon=True)
            for s in self._shards
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ ingest
    @property
    def producer_nonce(self) -> str:
        """This producer's nonce (16 hex digits), the first part of every dedup id."""
        return self.identity.nonce

    def emit(self, obj: Any, key: Key | None = None) -> Receipt | None:
        """Accept a dict/dataclass event (stored as JSON, :func:`encode_event`).

        ``key`` (str, bytes or int) picks the shard, so events with one key keep their
        order; without it the JSON bytes are hashed. Returns the :class:`Receipt`, or None
        when ``drop_newest`` refused the event. Raises :class:`Backpressure`
        (``fail_producer``), :class:`Closed` after ``shutdown()`` began, TypeError for a
        value JSON cannot encode.
        """
        return self._push(encode_event(obj), key)

    def emit_raw(self, data: bytes | str, key: Key | None = None) -> Receipt | None:
        """Accept an event given as bytes (or str, stored as UTF-8) as is; as :meth:`emit`."""
        return self._push(_raw(data), key)

    def emit_batch(self, items: Sequence[Any], keys: Sequence[Key | None] | None = None) -> int:
        """Accept many events (dicts/dataclasses as JSON, bytes/str raw), one lock per
        shard; return how many were accepted. Refused events are counted in ``stats()``
        as for :meth:`emit`; this never raises :class:`Backpressure`, the count tells.
        ``keys``, if given, has one key (or None) per item."""
        if keys is not None and len(keys) != len(items):
            raise ConfigError(f"emit_batch: {len(keys)} keys for {len(items)} items")
        n = self.num_shards
        groups: dict[int, list[bytes]] = {}
        for j, item in enumerate(items):
            if type(item) is dict:
                data = _dumps(item).encode()
            elif isinstance(item, str | bytes | bytearray):
                data = _raw(item)
            else:
                data = encode_event(item)
            k = keys[j] if keys is not None else None
            s = shard_for(key_bytes(k) if k is not None else data, n)
            group = groups.get(s)
            if group is None:
                groups[s] = [data]
            else:
                group.append(data)
        accepted = 0
        ts = time.time_ns()
        for s, datas in groups.items():
            sh = self._shards[s]
            with sh.cond:
                if sh.closing:
                    raise Closed("the event bus is shut down")
                if not sh.down and len(datas) <= self.ring_capacity - len(sh.payloads):
                    sh.payloads.extend(datas)  # room for all: no per-event checks
                    sh.stamps.extend([ts] * len(datas))
                    sh.accepted += len(datas)
                    accepted += len(datas)
                    sh.cond.notify()
                    continue
                for data in datas:
                    if self._admit(sh):
                        sh.payloads.append(data)
                        sh.stamps.append(ts)
                        sh.accepted += 1
                        accepted += 1
                sh.cond.notify()
        return accepted

    def _push(self, data: bytes, key: Key | None) -> Receipt | None:
        sh = self._shards[shard_for(key_bytes(key) if key is not None else data, self.num_shards)]
        ts = time.time_ns()
        with sh.cond:
            if not self._admit(sh):
                if self.backpressure == "fail_producer":
                    raise Backpressure(sh.idx, "backend_down" if sh.down else "ring_full")
                return None
            sh.payloads.append(data)
            sh.stamps.append(ts)
            sh.accepted += 1
            size = len(sh.payloads)
            if size == 1 or size == self.batch.min_size:
                sh.cond.notify()
        return Receipt(sh.idx, ts)

    def _admit(self, sh: _Shard) -> bool:
        """Make room for one event under ``sh.cond``; False (counted) if refused."""
        if sh.closing:
            raise Closed("the event bus is shut down")
        if sh.down and self.backpressure != "drop_oldest":
            sh.dropped["backend_down"] += 1
            return False
        if len(sh.payloads) >= self.ring_capacity:
            if self.backpressure != "drop_oldest":
                sh.dropped["ring_full"] += 1
                return False
            sh.payloads.popleft()
            sh.stamps.popleft()
            sh.head += 1
            sh.dropped["evicted"] += 1
        return True

    # ------------------------------------------------------------------ workers
    def _worker(self, sh: _Shard) -> None:
        cfg = self.batch
        while True:
            with sh.cond:
                noticed: float | None = None
                while True:
                    size = len(sh.payloads)
                    if sh.abandon and size:
                        self._drop_ring(sh, "shutdown")
                        continue
                    if size >= cfg.min_size or (size and (sh.closing or sh.flush_to > sh.head)):
                        break
                    if not size:
                        if sh.closing:
                            return
                        noticed = None
                        sh.cond.wait()
                        continue
                    now = time.monotonic()
                    if noticed is None:
                        noticed = now
                    if now - noticed >= cfg.max_delay:
                        break
                    sh.cond.wait(noticed + cfg.max_delay - now)
                take = min(size, cfg.max_size)
                if take == size:
                    payloads, stamps = list(sh.payloads), list(sh.stamps)
                    sh.payloads.clear()
                    sh.stamps.clear()
                else:
                    payloads = [sh.payloads.popleft() for _ in range(take)]
                    stamps = [sh.stamps.popleft() for _ in range(take)]
                sh.inflight, sh.inflight_n = sh.head, take
                sh.head += take
                batch = Batch(sh.idx, sh.next_seq, self.identity.nonce, payloads, stamps)
                sh.next_seq += 1
            outcome = self._deliver(sh, batch)
            with sh.cond:
                sh.inflight, sh.inflight_n = None, 0
                if outcome is None:
                    sh.stored += take
                    sh.batches += 1
                else:
                    sh.dropped[outcome] += take
                sh.cond.notify_all()

    def _drop_ring(self, sh: _Shard, reason: str) -> None:
        n = len(sh.payloads)
        sh.payloads.clear()
        sh.stamps.clear()
        sh.head += n
        sh.dropped[reason] += n
        sh.cond.notify_all()

    def _deliver(self, sh: _Shard, batch: Batch) -> str | None:
        """Hand ``batch`` to the adapter until it takes it; None when stored, else the
        drop reason (``backend_timeout`` in drop_oldest mode, ``shutdown``)."""
        give_up = time.monotonic() + self.retry_for
        backoff = 0.01
        while True:
            try:
                self.adapter.on_batch(batch)
            except Exception as exc:  # an adapter bug must not kill the worker either
                now = time.monotonic()
                with sh.cond:
                    sh.retries += 1
                    if not sh.failing:
                        log.warning("bus shard %d: %s failed: %s", sh.idx, self.adapter.name, exc)
                    sh.failing = True
                    if now >= self._close_deadline:
                        sh.abandon = True
                        return "shutdown"
                    if now >= give_up:
                        if self.backpressure == "drop_oldest":
                            # given up: nothing of this shard is failing any more; the
                            # next batch finds out afresh (is_healthy asks the adapter)
                            sh.failing = False
                            return "backend_timeout"
                        sh.down = True
                pause = min(backoff, self._close_deadline - now)
                if now < give_up:
                    pause = min(pause, give_up - now)
                time.sleep(max(pause, 0.001))  # back-off between retries
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if sh.failing:
                with sh.cond:
                    sh.failing = sh.down = False
                log.warning("bus shard %d: %s recovered", sh.idx, self.adapter.name)
            return None

    # ------------------------------------------------------------------ flush, shutdown
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event accepted before this call is stored (or dropped and
        counted), then flush the adapter. Raises TimeoutError after ``timeout`` s (None:
        wait; with a down backend and drop_newest/fail_producer that can be long)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for sh in self._shards:
            with sh.cond:
                mark = sh.accepted
                sh.flush_to = max(sh.flush_to, mark)
                sh.cond.notify_all()
                while sh.oldest_pending() < mark:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"bus flush: shard {sh.idx} still has events pending")
                    sh.cond.wait(left)
        self.adapter.flush()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting (``emit`` raises :class:`Closed`), hand every pending event to
        the adapter, flush and shut the adapter down. Events the backend has not taken
        ``timeout`` s (default ``retry_for``) after the call are dropped and counted as
        ``"shutdown"``. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        wait = self.retry_for if timeout is None else timeout
        self._close_deadline = time.monotonic() + wait
        for sh in self._shards:
            with sh.cond:
                sh.closing = True
                sh.cond.notify_all()
        for t in self._threads:
            t.join()
        try:
            self.adapter.flush()
        finally:
            self.adapter.shutdown()

    @property
    def closed(self) -> bool:
        """True once ``shutdown()`` began."""
        return self._closed

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ read side
    def poll(
        self,
        limit: int = 100,
        cursor: str | None = None,
        filter: FilterSpec | None = None,
        ordering: str | None = None,
    ) -> PollResponse:
        """Up to ``limit`` stored events after ``cursor`` (None: from the start).

        Each shard is read in order; shards take turns being read first. ``filter``
        (:mod:`netmesh.bus.filter`) is applied after the fetch; events it rejects are
        consumed all the same. ``ordering="insertion_ts"`` sorts the page by insertion
        time (the reference's option; within the page only, shard order is kept either
        way); None keeps shard by shard. Returns :class:`PollResponse` whose ``next_cursor``
        resumes exactly after this page. Raises :class:`BadCursor`, :class:`FilterError`,
        :class:`ConfigError` (limit < 1), :class:`AdapterError` (backend failed),
        :class:`Closed` after ``shutdown()``.
        """
        if limit < 1:
            raise ConfigError(f"poll limit must be >= 1, got {limit}")
        if ordering not in (None, "none", "insertion_ts"):
            raise ConfigError(f"poll ordering is None or 'insertion_ts', got {ordering!r}")
        if self._closed:
            raise Closed("the event bus is shut down (its adapter too)")
        cur = cursor_mod.decode(cursor)
        pred = compile_filter(filter) if filter is not None else None
        n = self.num_shards
        events: list[StoredEvent] = []
        has_more = False
        for k in range(n):
            left = limit - len(events)
            if left <= 0:
                has_more = True
                break
            s = (cur.start + k) % n
            want = min(left, MAX_SHARD_FETCH)
            got = self.adapter.poll_shard(s, cur.positions.get(s), want)
            if got:
                cur.positions[s] = got[-1].id
            if len(got) >= want:
                has_more = True
            events.extend(got if pred is None else [e for e in got if pred(e.raw)])
        cur.start = (cur.start + 1) % n
        if ordering == "insertion_ts":
            events.sort(key=lambda e: e.insertion_ts)  # stable: per-shard order holds on ties
        return PollResponse(events, cur.encode(), has_more)

    def subscribe(
        self,
        limit: int = 100,
        filter: FilterSpec | None = None,
        cursor: str | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.001,
        max_backoff: float = 0.1,
    ) -> EventStream:
        """A sync and async iterator of stored events built on :meth:`poll` (the
        reference SDK's ``subscribe``): it keeps the cursor (``stream.cursor`` resumes
        it), polls again at once after a full page, waits ``poll_interval`` s after a
        partial one and backs off exponentially up to ``max_backoff`` s while empty. It
        ends after ``timeout`` s (None: never) or once the bus is shut down."""
        return EventStream(self, limit, filter, cursor, timeout, poll_interval, max_backoff)

    # ------------------------------------------------------------------ observation
    def stats(self) -> BusStats:
        """Counters now; see :class:`BusStats` for the drop reasons."""
        per: list[ShardStats] = []
        for sh in self._shards:
            with sh.cond:
                per.append(
                    ShardStats(
                        sh.idx,
                        sh.accepted,
                        sh.stored,
                        dict(sh.dropped),
                        sh.pending(),
                        sh.batches,
                        sh.retries,
                        not sh.failing,
                    )
                )
        reasons: Counter[str] = Counter()
        for p in per:
            reasons.update(p.dropped)
        return BusStats(
            ingested=sum(p.ingested for p in per),
            stored=sum(p.stored for p in per),
            dropped=sum(reasons.values()),
            dropped_by_reason=dict(reasons),
            pending=sum(p.pending for p in per),
            shards=per,
        )

    def pending_in_rings(self) -> int:
        """Events accepted but not yet stored or dropped (rings plus in-flight batches)."""
        return self.stats().pending

    def is_healthy(self) -> bool:
        """True when no shard's backend calls are failing and the adapter answers."""
        if any(sh.failing for sh in self._shards):
            return False
        return self.adapter.is_healthy()


class EventStream:
    """Iterator of :class:`StoredEvent` over repeated polls; see :meth:`EventBus.subscribe`."""

    def __init__(
        self,
        bus: EventBus,
        limit: int,
        filter: FilterSpec | None,
        cursor: str | None,
        timeout: float | None,
        poll_interval: float,
        max_backoff: float,
    ) -> None:
        self._bus = bus
        self._limit = limit
        self._filter = filter
        self.cursor = cursor
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._interval = poll_interval
        self._max_backoff = max_backoff
        self._backoff = poll_interval
        self._pause = 0.0
        self._buffer: deque[StoredEvent] = deque()

    def _fetch(self) -> None:
        resp = self._bus.poll(self._limit, self.cursor, self._filter)
        self.cursor = resp.next_cursor
        self._buffer.extend(resp.events)
        if resp.has_more:
            self._pause, self._backoff = 0.0, self._interval
        elif resp.events:
            self._pause, self._backoff = self._interval, self._interval
        else:
            self._pause = self._backoff
            self._backoff = min(self._backoff * 2, self._max_backoff)

    def _wait(self) -> float | None:
        """Seconds to pause before the next poll; None when the stream has ended."""
        if self._bus.closed:
            return None
        if self._deadline is None:
            return self._pause
        left = self._deadline - time.monotonic()
        return None if left <= 0 else min(self._pause, left)

    def __iter__(self) -> Iterator[StoredEvent]:
        return self

    def __next__(self) -> StoredEvent:
        while not self._buffer:
            pause = self._wait()
            if pause is None:
                raise StopIteration
            if pause:
                time.sleep(pause)  # poll cadence (back-off), not synchronisation
            self._fetch()
        return self._buffer.popleft()

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self

    async def __anext__(self) -> StoredEvent:
        while not self._buffer:
            pause = self._wait()
            if pause is None:
                raise StopAsyncIteration
            if pause:
                await asyncio.sleep(pause)
            await asyncio.to_thread(self._fetch)
        return self._buffer.popleft()

"""Value types of the event bus: configuration, receipts, stored events, poll answers,
the batch handed to an adapter, and statistics. Pure data; no IO.

Names follow the reference's Python SDK (``mesh_spec.md`` §7.1: ``Receipt``,
``StoredEvent``, ``PollResponse``, ``Stats``) in netmesh's spelling.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from netmesh.errors import ConfigError

BACKPRESSURE_MODES = ("drop_oldest", "drop_newest", "fail_producer")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """When a shard's worker hands pending events to the adapter.

    A batch leaves when ``min_size`` events are pending, or ``max_delay`` seconds after the
    worker noticed the first pending event, or on ``flush()``/``shutdown()``; it holds at
    most ``max_size`` events. Defaults are the reference's (``mesh_spec.md`` §6.2: 1,000 /
    10,000 / 10 ms). ``min_size`` may exceed the ring capacity: then only ``max_delay`` and
    ``flush()`` release events. Raises :class:`ConfigError` naming the field.
    """

    min_size: int = 1000
    max_size: int = 10_000
    max_delay: float = 0.010

    def __post_init__(self) -> None:
        if self.min_size < 1:
            raise ConfigError(f"BatchConfig.min_size must be >= 1, got {self.min_size}")
        if not 1 <= self.max_size <= 1_000_000:
            raise ConfigError(f"BatchConfig.max_size must be in 1..1000000, got {self.max_size}")
        if self.min_size > self.max_size:
            raise ConfigError(
                f"BatchConfig.min_size ({self.min_size}) exceeds max_size ({self.max_size})"
            )
        if not self.max_delay > 0:
            raise ConfigError(f"BatchConfig.max_delay must be > 0 s, got {self.max_delay}")

    @classmethod
    def low_latency(cls) -> BatchConfig:
        """The reference's low-latency preset: 100 / 1,000 / 1 ms."""
        return cls(100, 1000, 0.001)

    @classmethod
    def high_throughput(cls) -> BatchConfig:
        """The reference's high-throughput preset: 5,000 / 50,000 / 5 ms."""
        return cls(5000, 50_000, 0.005)


class Receipt(NamedTuple):
    """What ``emit`` returns for an accepted event: its shard and the insertion
    timestamp (``time.time_ns()``, ns since the epoch) the bus stored with it."""

    shard: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from the adapter.

    ``id``: the adapter's position of the event in its shard (memory: index, Redis: the
    stream entry id ``"ms-seq"``, JetStream: the stream sequence), a string, ordered within
    the shard; ``raw``: the payload bytes as emitted; ``insertion_ts``: ns since the
    epoch, taken at ``emit``; ``shard``: shard id; ``dedup_id``:
    ``"{producer nonce}:{shard}:{batch seq}:{i}"``.
    """

    id: str
    raw: bytes
    insertion_ts: int
    shard: int
    dedup_id: str

    def json(self) -> Any:
        """The payload parsed as JSON (raises ``json.JSONDecodeError`` if it is not)."""
        return json.loads(self.raw)

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.raw.decode()


@dataclass(frozen=True, slots=True)
class PollResponse:
    """One page of events. ``next_cursor`` continues exactly after the last event this
    page consumed (events a filter rejected are consumed too); ``has_more`` is True when
    some shard may hold more than this page returned. Iterable and sized, like the
    reference SDK's response."""

    events: list[StoredEvent]
    next_cursor: str
    has_more: bool

    def __iter__(self) -> Iterator[StoredEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(slots=True)
class Batch:
    """What a shard worker hands to ``Adapter.on_batch``: the events of one shard, in
    emit order. ``seq`` is the batch sequence of this producer on this shard (monotonic,
    also across restarts when the nonce is persisted); ``nonce`` the producer nonce (16 hex
    digits). A retry hands the identical batch again, so an adapter can make it idempotent
    with the de-duplication ids (``mesh_spec.md`` §6.5)."""

    shard: int
    seq: int
    nonce: str
    payloads: list[bytes]
    timestamps: list[int]

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def id_prefix(self) -> str:
        """``"{nonce}:{shard}:{seq}:"``; append the event's index for its dedup id."""
        return f"{self.nonce}:{self.shard}:{self.seq}:"

    def dedup_id(self, i: int) -> str:
        """The de-duplication id of event ``i``: ``"{nonce}:{shard}:{seq}:{i}"``."""
        return f"{self.nonce}:{self.shard}:{self.seq}:{i}"


@dataclass(frozen=True, slots=True)
class ShardStats:
    """Counters of one shard. ``ingested``: events accepted by ``emit*``; ``stored``:
    events the adapter acknowledged; ``dropped``: by reason (see :class:`BusStats`);
    ``pending``: in the ring or in flight; ``retries``: failed ``on_batch`` calls;
    ``healthy``: False while the shard's backend calls fail."""

    shard: int
    ingested: int
    stored: int
    dropped: dict[str, int]
    pending: int
    batches: int
    retries: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class BusStats:
    """Bus counters (sums over shards). Drop reasons:

    - ``"evicted"``: ``drop_oldest`` pushed a pending event out of a full ring;
    - ``"ring_full"``: ``drop_newest``/``fail_producer`` refused a new event, ring full;
    - ``"backend_down"``: ``drop_newest``/``fail_producer`` refused a new event because
      the shard's backend failed for longer than ``retry_for``;
    - ``"backend_timeout"``: ``drop_oldest`` gave up a batch after ``retry_for``;
    - ``"shutdown"``: ``shutdown`` gave up events the backend did not take in time.

    ``ingested == stored + dropped_after_accept + pending`` where the refused reasons
    (``ring_full``, ``backend_down``) are not part of ``ingested``.
    """

    ingested: int
    stored: int
    dropped: int
    dropped_by_reason: dict[str, int]
    pending: int
    shards: list[ShardStats] = field(default_factory=list)

    @property
    def events_ingested(self) -> int:
        """The reference's name for ``ingested``."""
        return self.ingested

    @property
    def events_dropped(self) -> int:
        """The reference's name for ``dropped``."""
        return self.dropped

"""JetStreamAdapter: each shard is a NATS JetStream stream (nats-py).

Layout (the reference's, ``mesh_spec.md`` §6.5): stream ``{prefix}_shard_{id}`` with the
one subject ``{prefix}.shard.{id}``, ``replicas`` copies (1, or 3 on a cluster), file
storage. Each event is a message with headers ``Nats-Msg-Id`` (the dedup id
``nonce:shard:seq:i``) and ``Netmesh-Ts`` (insertion ns); its id is the stream sequence.

Writing: a batch is published with ``js.publish_async`` (one pipelined burst; per
connection, so the stream keeps the batch's order) and ``on_batch`` returns only once
every publish ack arrived. Any failure (no ack in ``request_timeout``, no responders
while a stream leader is elected, a disconnect) raises :class:`AdapterError` and the bus
retries the whole batch; the server's duplicate window drops the events an earlier
attempt had stored, also across a leader change (the window is rebuilt from the
replicated stream). The window is 10 min by default, not the reference's 1 h: the server
keeps every id of the window in memory (roughly 100 B each by our estimate, so an hour
at 20k events/s would be ~7 GB per server). A retry is exactly-once as long as the
outage that caused it is shorter than the window; raise it if backends may be away
for longer.

Reading: the stream's ``last_seq`` (``STREAM.INFO``); then up to 32 events are read with
concurrent ``STREAM.MSG.GET`` requests answered by the stream leader, and more through a
throw-away consumer (memory storage, one replica, no acks, starting at the wanted
sequence) and one ``no_wait`` pull request, deleted afterwards (when a degraded cluster
cannot place that consumer in time, by sequence for the next 30 s). A sequence missing
(trimmed or deleted) is skipped.

Threads: nats-py is asyncio-only and the bus's workers are threads, so the adapter runs
a private event loop in one daemon thread and hands it coroutines
(``run_coroutine_threadsafe``); batches of different shards interleave on that loop. A
user's own event loop is never touched, and a sync program needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.types import Batch, StoredEvent
from netmesh.errors import AdapterError, BadCursor, ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
TS_HEADER = "Netmesh-Ts"
ID_HEADER = "Nats-Msg-Id"
DIRECT_READ_MAX = 32  # larger reads go through a throw-away pull consumer
CONSUMER_PAUSE = 30.0  # seconds of by-sequence reads after a consumer read failed


def _event(shard: int, seq: int | None, data: bytes | None, headers: Any) -> StoredEvent:
    h = headers or {}
    return StoredEvent(str(seq), data or b"", int(h.get(TS_HEADER, 0)), shard, h.get(ID_HEADER, ""))


class JetStreamAdapter(Adapter):
    """NATS JetStream storage (nats-py, on a private event loop thread).

    Args:
        url: server URL, or a comma-separated list of a cluster's URLs (the client
            reconnects to another one when its server dies); default local.
        prefix: names: stream ``{prefix}_shard_{id}``, subject ``{prefix}.shard.{id}``.
        replicas: stream replicas, 1..5 (3 on a three-node cluster); default 1.
        duplicate_window: seconds the server remembers dedup ids (default 600; see above).
        max_msgs: per-stream message bound (oldest discarded); None: unbounded.
        connect_timeout: seconds for the first connection (default 5, the reference's).
        request_timeout: seconds to wait for a batch's acks or a read (default 5).
        init_timeout: seconds ``init`` keeps trying to create the streams while a fresh
            cluster elects its meta leader (default 15).

    Raises :class:`ConfigError` for bad values; ``init`` raises :class:`AdapterError`.
    """

    name = "jetstream"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        prefix: str = "net",
        replicas: int = 1,
        *,
        duplicate_window: float = 600.0,
        max_msgs: int | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        init_timeout: float = 15.0,
    ) -> None:
        if not 1 <= replicas <= 5:
            raise ConfigError(f"JetStreamAdapter.replicas must be in 1..5, got {replicas}")
        if not prefix or any(c in prefix for c in ". *>"):
            raise ConfigError(f"JetStreamAdapter.prefix must be a plain token, got {prefix!r}")
        self.servers = [u.strip() for u in url.split(",") if u.strip()]
        self.url, self.prefix, self.replicas = url, prefix, replicas
        self.duplicate_window, self.max_msgs = duplicate_window, max_msgs
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.init_timeout = init_timeout
        self.duplicates_skipped = 0  # acks that said "duplicate" (an earlier attempt stored it)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bus-jetstream-loop", daemon=True
        )
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        self._closed = False
        self._no_consumers_until = 0.0  # loop time

    # names
    def stream_name(self, shard: int) -> str:
        return f"{self.prefix}_shard_{shard}"

    def subject(self, shard: int) -> str:
        return f"{self.prefix}.shard.{shard}"

    # plumbing
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            fut.cancel()  # no-op when it finished (with this error)
            raise AdapterError(self.name, f"{type(exc).__name__}: {exc}", exc) from exc

    async def _quiet(self, exc: Exception) -> None:
        log.debug("nats: %s", exc)  # reconnects are normal here; failures surface per call

    async def _connect(self) -> None:
        self._nc = await nats.connect(
            servers=self.servers,
            connect_timeout=self.connect_timeout,
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
            error_cb=self._quiet,
        )
        self._js = self._nc.jetstream(timeout=self.request_timeout)

    async def _ensure_streams(self, num_shards: int) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.init_timeout
        for shard in range(num_shards):
            cfg = api.StreamConfig(
                name=self.stream_name(shard),
                subjects=[self.subject(shard)],
                num_replicas=self.replicas,
                storage=api.StorageType.FILE,
                duplicate_window=self.duplicate_window,
                max_msgs=self.max_msgs if self.max_msgs is not None else -1,
            )
            while True:
                try:
                    await self._js.add_stream(cfg)
                    break
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code == 10058:  # name in use: keep the existing stream
                        break
                    raise
                except (TimeoutError, nats.errors.Error):
                    if loop.time() > give_up:  # a fresh cluster may have no meta leader yet
                        raise
                    await asyncio.sleep(0.1)

    # the interface
    def init(self, num_shards: int) -> None:
        try:
            self._call(self._connect(), self.connect_timeout + 1)
            self._call(self._ensure_streams(num_shards), self.init_timeout + self.request_timeout)
        except AdapterError:
            self.shutdown()  # no loop thread left behind by a bus that was never built
            raise

    async def _publish(self, batch: Batch) -> None:
        subject, prefix = self.subject(batch.shard), batch.id_prefix
        futs: list[asyncio.Future[Any]] = []
        try:
            for i, (raw, ts) in enumerate(zip(batch.payloads, batch.timestamps, strict=True)):
                headers = {ID_HEADER: f"{prefix}{i}", TS_HEADER: str(ts)}
                fut = await self._js.publish_async(subject, raw, headers=headers)
                futs.append(fut)
            acks = await asyncio.wait_for(asyncio.gather(*futs), self.request_timeout)
        finally:
            for f in futs:  # free the pending-publish slots of what will never be acked
                if not f.done():
                    f.cancel()
        self.duplicates_skipped += sum(1 for a in acks if a.duplicate)

    def on_batch(self, batch: Batch) -> None:
        self._call(self._publish(batch), self.request_timeout * 2 + 1)

    async def _read(self, shard: int, after: int, limit: int) -> list[StoredEvent]:
        name = self.stream_name(shard)
        state = (await self._js.stream_info(name)).state
        first = max(after + 1, state.first_seq)
        last = min(after + limit, state.last_seq)
        if last < first:
            return []

        now = asyncio.get_running_loop().time()
        if last - first + 1 > DIRECT_READ_MAX and now >= self._no_consumers_until:
            try:
                return await self._read_consumer(shard, name, first, last - first + 1)
            except (TimeoutError, nats.errors.Error) as exc:
                # a cluster that just lost a server may not place a consumer in time:
                # read by sequence for a while instead of stalling every page
                self._no_consumers_until = now + CONSUMER_PAUSE
                log.debug("jetstream: consumer read of %s failed (%s), reading by seq", name, exc)

        async def one(seq: int) -> Any:
            try:
                return await self._js.get_msg(name, seq)
            except nats.js.errors.NotFoundError:
                return None  # trimmed or deleted

        msgs = await asyncio.gather(*(one(s) for s in range(first, last + 1)))
        return [_event(shard, m.seq, m.data, m.headers) for m in msgs if m is not None]

    async def _read_consumer(self, shard: int, name: str, first: int, n: int) -> list[StoredEvent]:
        """``n`` messages from ``first`` on through a throw-away consumer (in memory, R1,
        no acks): one pull request instead of ``n`` gets."""
        cfg = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=first,
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,  # the server removes it if our delete is lost
        )
        consumer = (await self._js.add_consumer(name, cfg)).name
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, pending_msgs_limit=n + 16)
        out: list[StoredEvent] = []
        try:
            request = json.dumps({"batch": n, "no_wait": True}).encode()
            await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{name}.{consumer}", request, inbox)
            while len(out) < n:
                msg = await sub.next_msg(self.request_timeout)
                if msg.headers and msg.headers.get("Status"):
                    break  # 404 no more messages (the rest were deleted), 408 expired
                out.append(_event(shard, msg.metadata.sequence.stream, msg.data, msg.headers))
        finally:
            await sub.unsubscribe()
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._js.delete_consumer(name, consumer)
        return out

    def poll_shard(self, shard: int, after: str | None, limit: int) -> list[StoredEvent]:
        if after is not None and not after.isdigit():
            raise BadCursor(f"{after!r} is not a JetStream stream sequence")
        return self._call(
            self._read(shard, 0 if after is None else int(after), limit), self.request_timeout * 4
        )

    def is_healthy(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def _close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(AdapterError):
            self._call(self._close(), self.request_timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

"""RedisStreamsAdapter: each shard is a Redis stream ``{prefix}:shard:{id}`` (redis-py).

Writing. A batch is stored by a Lua script, one ``EVAL`` per ``pipeline`` events, all of
a batch's calls in one pipelined round trip. The script XADDs each event as the fields
``d`` (payload), ``t`` (insertion ns), ``i`` (dedup id ``nonce:shard:seq:i``) and, in the
same atomic step, moves this producer's high-water mark ``(batch seq, i)`` in the hash
``{prefix}:shard:{id}:dedup`` (field = producer nonce). An event at or below the mark
is skipped.

Why a Lua-checked XADD and not a consumer-side filter (the reference's
``RedisStreamDedup``): a retry happens exactly when the first attempt's outcome is
unknown (connection lost mid-pipeline, server killed after the append, a timeout), and
with a consumer-side filter every reader (other languages, ``redis-cli``, a restarted
consumer without the LRU's memory) would have to repeat the filtering and size its
window for the longest possible outage. Checked on the server, the stream itself holds
each event once. It costs one hash field per producer and shard (not per event), because
a shard's batches reach the adapter in sequence order from one worker thread; and as a
script is atomic, the mark can never be ahead or behind the events (Redis 7 replicates a
script's effects, XADD ids included, so a replica agrees).

Reading: ``XRANGE key (after + COUNT limit`` (exclusive start, Redis >= 6.2); ids are the
stream entry ids. ``read_url`` points reads at a replica (reads may lag the primary; the
ids are the same, so cursors stay valid across the two).

Durability: ``wait_replicas=k`` ends every batch with ``WAIT k`` and treats fewer acks as
a failure (retried; the script makes the retry harmless), so an acknowledged event is
on k replicas. Pair it with the server's ``appendonly``/``appendfsync`` for disk.

Redis Cluster (``cluster=True``): the stream and its dedup hash must live in one slot
(the script touches both), so in cluster mode the shard part of the key names is a hash
tag: ``{prefix}:{shard:<id>}`` and ``{prefix}:{shard:<id>}:dedup``. Different shards
land in different slots, so the shards spread over the cluster's primaries. The
reference's names (``{prefix}:shard:{id}``) are kept outside cluster mode. ``WAIT`` is
per connection and not routed by key, so ``wait_replicas`` needs a single server.
"""

from __future__ import annotations

import re
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from netmesh.bus.adapters.base import Adapter
from netmesh.bus.types import Batch, StoredEvent
from netmesh.errors import AdapterError, BadCursor, ConfigError

_STREAM_ID = re.compile(r"\d+-\d+")
# KEYS: stream, dedup hash. ARGV: nonce, batch seq, first index, id prefix, maxlen ("" =
# none), then payload, timestamp pairs. Returns how many events it appended.
STORE_SCRIPT = """
local mark = redis.call('HGET', KEYS[2], ARGV[1])
local mseq, mi = -1, -1
if mark then
  local p = string.find(mark, ':', 1, true)
  mseq = tonumber(string.sub(mark, 1, p - 1))
  mi = tonumber(string.sub(mark, p + 1))
end
local seq = tonumber(ARGV[2])
local first = tonumber(ARGV[3])
local n = (#ARGV - 5) / 2
local added = 0
for k = 0, n - 1 do
  local i = first + k
  if seq > mseq or (seq == mseq and i > mi) then
    local d, t = ARGV[6 + 2 * k], ARGV[7 + 2 * k]
    if ARGV[5] == '' then
      redis.call('XADD', KEYS[1], '*', 'd', d, 't', t, 'i', ARGV[4] .. i)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'd', d, 't', t, 'i', ARGV[4] .. i)
    end
    added = added + 1
  end
end
local last = first + n - 1
if n > 0 and (seq > mseq or (seq == mseq and last > mi)) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. last)
end
return added
"""


def _client(url: str, connect_timeout: float, command_timeout: float) -> redis.Redis:
    # no client-side retries: the bus retries whole batches, idempotently
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=command_timeout,
        retry=Retry(NoBackoff(), 0),
    )


class RedisStreamsAdapter(Adapter):
    """Redis Streams storage (redis-py).

    Args:
        url: ``redis://host:port/db`` of the primary (default local).
        prefix: key prefix; shard ``i`` is the stream ``{prefix}:shard:{i}`` (default "net").
        maxlen: approximate per-stream length bound (``XADD MAXLEN ~``); None: unbounded.
        pipeline: events per script call (default 1,000); a batch's calls share one
            round trip.
        read_url: where ``poll`` reads (a replica); default ``url``.
        wait_replicas: replicas that must acknowledge each batch (``WAIT``); default 0.
        wait_timeout: seconds ``WAIT`` may take (default 1.0).
        connect_timeout, command_timeout: socket timeouts, seconds (default 5.0 each, the
            reference's connect timeout; a dead server is found by a refused connect).
        cluster: ``url`` names a node of a Redis Cluster (see the module doc).

    Raises :class:`ConfigError` for bad values; ``init`` raises :class:`AdapterError` if the
    server does not answer.
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "net",
        maxlen: int | None = None,
        pipeline: int = 1000,
        *,
        read_url: str | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        cluster: bool = False,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ConfigError(f"RedisStreamsAdapter.maxlen must be >= 1, got {maxlen}")
        if pipeline < 1:
            raise ConfigError(f"RedisStreamsAdapter.pipeline must be >= 1, got {pipeline}")
        if wait_replicas < 0:
            raise ConfigError(
                f"RedisStreamsAdapter.wait_replicas must be >= 0, got {wait_replicas}"
            )
        if cluster and (wait_replicas or read_url):
            raise ConfigError("RedisStreamsAdapter(cluster=True) takes no wait_replicas/read_url")
        self.url, self.prefix, self.maxlen, self.pipeline = url, prefix, maxlen, pipeline
        self.wait_replicas, self.wait_timeout = wait_replicas, wait_timeout
        self.cluster = cluster
        self._w: Any
        if cluster:
            from redis.cluster import RedisCluster

            self._w = RedisCluster.from_url(
                url, socket_connect_timeout=connect_timeout, socket_timeout=command_timeout
            )
        else:
            self._w = _client(url, connect_timeout, command_timeout)
        self._r = _client(read_url, connect_timeout, command_timeout) if read_url else self._w
        self.duplicates_skipped = 0  # events a retry found already stored

    def stream_key(self, shard: int) -> str:
        """``{prefix}:shard:{shard}`` (cluster mode: ``{prefix}:{shard:<id>}``)."""
        if self.cluster:
            return f"{self.prefix}:{{shard:{shard}}}"
        return f"{self.prefix}:shard:{shard}"

    def _fail(self, what: str, exc: BaseException) -> AdapterError:
        return AdapterError(self.name, f"{what} against {self.url}: {exc}", exc)

    def init(self, num_shards: int) -> None:
        try:
            self._w.ping()
        except redis.RedisError as exc:
            raise self._fail("ping", exc) from exc

    def on_batch(self, batch: Batch) -> None:
        key = self.stream_key(batch.shard)
        keys = (key, f"{key}:dedup")
        maxlen = "" if self.maxlen is None else str(self.maxlen)
        prefix = batch.id_prefix
        sizes = []
        if self.cluster:  # cluster pipelines refuse EVAL: one call per chunk, routed by key
            self._store_unpipelined(batch, keys, maxlen, prefix)
            return
        try:
            pipe = self._w.pipeline(transaction=False)
            for first in range(0, len(batch), self.pipeline):
                end = min(first + self.pipeline, len(batch))
                args: list[bytes | str | int] = [batch.nonce, batch.seq, first, prefix, maxlen]
                for j in range(first, end):
                    args += (batch.payloads[j], batch.timestamps[j])
                pipe.eval(STORE_SCRIPT, 2, *keys, *args)
                sizes.append(end - first)
            if self.wait_replicas:
                pipe.wait(self.wait_replicas, int(self.wait_timeout * 1000))
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise self._fail(f"storing batch {batch.seq} of shard {batch.shard}", exc) from exc
        self.duplicates_skipped += sum(n - int(a) for n, a in zip(sizes, replies, strict=False))
        if self.wait_replicas and int(replies[-1]) < self.wait_replicas:
            raise AdapterError(
                self.name, f"WAIT: {replies[-1]} of {self.wait_replicas} replicas acknowledged"
            )

    def _store_unpipelined(
        self, batch: Batch, keys: tuple[str, str], maxlen: str, prefix: str
    ) -> None:
        try:
            for first in range(0, len(batch), self.pipeline):
                end = min(first + self.pipeline, len(batch))
                args: list[bytes | str | int] = [batch.nonce, batch.seq, first, prefix, maxlen]
                for j in range(first, end):
                    args += (batch.payloads[j], batch.timestamps[j])
                stored = self._w.eval(STORE_SCRIPT, 2, *keys, *args)
                self.duplicates_skipped += (end - first) - int(stored)
        except redis.RedisError as exc:
            raise self._fail(f"storing batch {batch.seq} of shard {batch.shard}", exc) from exc

    def poll_shard(self, shard: int, after: str | None, limit: int) -> list[StoredEvent]:
        if after is not None and not _STREAM_ID.fullmatch(after):
            raise BadCursor(f"{after!r} is not a Redis stream entry id")
        start = "-" if after is None else f"({after}"
        try:
            rows: Any = self._r.xrange(self.stream_key(shard), min=start, max="+", count=limit)
        except redis.RedisError as exc:
            raise self._fail(f"XRANGE shard {shard}", exc) from exc
        return [
            StoredEvent(rid.decode(), f[b"d"], int(f[b"t"]), shard, f[b"i"].decode())
            for rid, f in rows
        ]

    def is_healthy(self) -> bool:
        try:
            return bool(self._w.ping())
        except redis.RedisError:
            return False

    def shutdown(self) -> None:
        self._w.close()
        if self._r is not self._w:
            self._r.close()

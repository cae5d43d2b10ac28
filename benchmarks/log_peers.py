"""Replicated-log peers on loopback: Redis with an asynchronous replica, NATS JetStream.

Servers are started once per ``netmesh bench`` run by :class:`Servers` (lazily, on the
first trial that needs them) on free loopback ports, with temp dirs, a parent-death
signal, and are stopped by PID (SIGTERM, SIGKILL after a grace period) on every exit
path:

* Redis: a primary and one replica (``--replicaof``), no persistence (Debian's
  ``redis-server``); clients are redis-py (pipelined ``XADD`` in batches of 500,
  hiredis parser when installed) and the ``redis-benchmark`` C client (``-c 1 -P 500``),
  which is the server's own bound: the Python client spends ~90% of its time in the
  client.
* NATS: a 3-node ``nats-server`` cluster with JetStream (file store in a temp dir);
  streams with 1 (R1) or 3 (R3) replicas; nats-py ``publish_async``.

Trials (each returns events/s, 64 B payloads by default):

* ``*_sustained``: publish as fast as the client can for ``seconds``, then wait until
  every replica holds every event (Redis: the replica's ``XLEN``) or every publish is
  acknowledged (JetStream: an ack means the stream's quorum stored it);
* ``*_acked_every``: an acknowledgement per ``every`` events: Redis ``XADD`` x 500 +
  ``WAIT 1``, JetStream R3 500 ``publish_async`` then waiting for their acks; per-batch
  latencies are kept for the CDF plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.peers import (
    RedisServer,
    _free_port,
    _no_interrupts,
    _parent_death_signal,
    _wait_replica_link,
)
from benchmarks.trials import Unavailable

BATCH = 500
CATCH_UP_TIMEOUT_S = 120.0


class NatsCluster:
    """Three ``nats-server -js`` processes routed to each other on loopback."""

    def __init__(self, exe: str, size: int = 3) -> None:
        self.exe, self.size = exe, size
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.argv: list[list[str]] = []
        self.tmp = ""

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="netmesh-bench-nats-")
        cports = [_free_port() for _ in range(self.size)]
        self.ports = [_free_port() for _ in range(self.size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cports)
        for i in range(self.size):
            store = os.path.join(self.tmp, f"n{i}")
            os.makedirs(store)
            self.argv.append(
                [
                    self.exe,
                    *("-a", "127.0.0.1", "-p", str(self.ports[i]), "-js", "-sd", store),
                    *("-n", f"bench-n{i}", "--cluster_name", "bench"),
                    *("--cluster", f"nats://127.0.0.1:{cports[i]}", "--routes", routes),
                ]
            )
            self.procs.append(self._spawn(i))

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.tmp, f"n{i}.log"), "ab") as log:
            return subprocess.Popen(
                self.argv[i],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_signal,
            )

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` and reap it."""
        self.procs[i].kill()
        self.procs[i].wait()

    def restart(self, i: int) -> None:
        """Start server ``i`` again on its ports and store (it rejoins and recovers)."""
        self.procs[i] = self._spawn(i)

    def stop(self) -> None:
        with _no_interrupts():
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.procs = []
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = ""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


async def _quiet(_exc: Exception) -> None:
    """nats-py's error callback: connection errors surface as exceptions instead."""


class Servers:
    """The peers' servers for one run; started on first use, stopped by :meth:`close`."""

    def __init__(self) -> None:
        self.redis: list[RedisServer] = []
        self.redis_clients: list[Any] = []
        self.solo: RedisServer | None = None
        self.solo_client: Any = None
        self.redis_error: str | None = None
        self.nats: NatsCluster | None = None
        self.nats_error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None
        self._streams: set[str] = set()

    def prestart(self) -> None:
        """Start the NATS processes now (JetStream forms its cluster in the background
        while other suites run); errors surface at first use."""
        exe = shutil.which("nats-server")
        if exe is None or self.nats is not None:
            return
        try:
            self.nats = NatsCluster(exe)
            self.nats.start()
        except OSError as exc:
            self.nats_error = f"nats cluster did not start: {exc}"

    # -- redis ---------------------------------------------------------------------------
    def redis_pair(self) -> tuple[Any, Any, int]:
        """(primary client, replica client, primary port); Unavailable if not here."""
        if self.redis_error:
            raise Unavailable(self.redis_error)
        if self.redis_clients:
            return self.redis_clients[0], self.redis_clients[1], self.redis[0].port
        exe = shutil.which("redis-server")
        try:
            import redis
        except ImportError:
            self.redis_error = "redis-py not installed (pip install redis hiredis)"
            raise Unavailable(self.redis_error) from None
        if exe is None:
            self.redis_error = "redis-server not on PATH (apt-get install redis-server)"
            raise Unavailable(self.redis_error)
        try:
            prim = RedisServer(exe)
            self.redis.append(prim)
            prim.start()
            repl = RedisServer(exe, replicaof=prim.port)
            self.redis.append(repl)
            repl.start()
            cp = redis.Redis(host="127.0.0.1", port=prim.port, socket_timeout=60.0)
            cr = redis.Redis(host="127.0.0.1", port=repl.port, socket_timeout=60.0)
            self.redis_clients = [cp, cr]
            _wait_replica_link(cp, cr, 30.0)
        except Exception as exc:
            self.redis_error = f"redis servers did not start: {exc}"
            raise Unavailable(self.redis_error) from exc
        return cp, cr, prim.port

    def redis_solo(self) -> Any:
        """A client of a standalone Redis (no replica); Unavailable if not here."""
        if self.solo_client is not None:
            return self.solo_client
        self.redis_pair()  # same checks, and the pair is wanted beside it
        import redis

        exe = shutil.which("redis-server")
        assert exe is not None
        try:
            self.solo = RedisServer(exe)
            self.solo.start()
        except Exception as exc:
            raise Unavailable(f"standalone redis did not start: {exc}") from exc
        self.solo_client = redis.Redis(host="127.0.0.1", port=self.solo.port, socket_timeout=60.0)
        return self.solo_client

    # -- nats ----------------------------------------------------------------------------
    def jetstream(self, replicas: int) -> tuple[asyncio.AbstractEventLoop, Any, str]:
        """(loop, JetStream context, subject) of a fresh-enough stream with ``replicas``
        replicas on the 3-node cluster; Unavailable if not here."""
        if self.nats_error:
            raise Unavailable(self.nats_error)
        if self.js is None:
            exe = shutil.which("nats-server")
            try:
                import nats
            except ImportError:
                self.nats_error = "nats-py not installed (pip install nats-py)"
                raise Unavailable(self.nats_error) from None
            if exe is None:
                self.nats_error = "nats-server not on PATH (apt-get install nats-server)"
                raise Unavailable(self.nats_error)
            try:
                if self.nats is None:
                    self.nats = NatsCluster(exe)
                    self.nats.start()
                self.loop = asyncio.new_event_loop()
                self.nc = self.loop.run_until_complete(self._connect(nats, self.nats.ports))
                self.js = self.nc.jetstream(timeout=10, publish_async_max_pending=4000)
            except Exception as exc:
                self.nats_error = f"nats cluster did not start: {type(exc).__name__}: {exc}"
                raise Unavailable(self.nats_error) from exc
        assert self.loop is not None
        name = f"BENCH_R{replicas}"
        subject = f"bench.r{replicas}"
        if name not in self._streams:
            self.loop.run_until_complete(self._add_stream(name, subject, replicas))
            self._streams.add(name)
        else:
            self.loop.run_until_complete(self.js.purge_stream(name))
        return self.loop, self.js, subject

    async def _connect(self, nats: Any, ports: list[int]) -> Any:
        deadline = time.monotonic() + 20
        while True:
            try:
                nc = await nats.connect(
                    servers=[f"nats://127.0.0.1:{p}" for p in ports],
                    connect_timeout=1,
                    max_reconnect_attempts=0,
                    allow_reconnect=False,
                    error_cb=_quiet,
                )
                return nc
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # polling cadence while the servers start

    async def _add_stream(self, name: str, subject: str, replicas: int) -> None:
        from nats.js.api import StreamConfig

        deadline = time.monotonic() + 30
        while True:  # JetStream needs its meta leader and enough peers first
            try:
                await self.js.add_stream(
                    StreamConfig(name=name, subjects=[subject], num_replicas=replicas)
                )
                await self.js.publish(subject, b"warm", timeout=10)
                await self.js.purge_stream(name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # polling cadence while JetStream forms

    # -- lifecycle -------------------------------------------------------------------------
    def pids(self) -> list[int]:
        out = [s.pid for s in self.redis if s.pid]
        out += [self.solo.pid] if self.solo is not None and self.solo.pid else []
        return out + (self.nats.pids if self.nats else [])

    def close(self) -> None:
        with _no_interrupts():
            if self.nc is not None and self.loop is not None:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(self.nc.close())
            if self.loop is not None:
                self.loop.close()
            self.loop = self.nc = self.js = None
            for c in self.redis_clients:
                with contextlib.suppress(Exception):
                    c.close()
            self.redis_clients = []
            for s in reversed(self.redis):
                s.stop()
            self.redis = []
            if self.solo_client is not None:
                with contextlib.suppress(Exception):
                    self.solo_client.close()
                self.solo_client = None
            if self.solo is not None:
                self.solo.stop()
                self.solo = None
            if self.nats is not None:
                self.nats.stop()
                self.nats = None


# --------------------------------------------------------------------------- redis trials


def _poll(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.0005)  # polling cadence for the replica's progress


def redis_sustained(servers: Servers, seconds: float, size: int = 64) -> float:
    """redis-py: pipelined XADD x 500 for ``seconds``, until the replica's XLEN has all."""
    cp, cr, _port = servers.redis_pair()
    key = f"bench:sus:{time.monotonic_ns()}"
    fields = {b"p": b"x" * size}
    pipe = cp.pipeline(transaction=False)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(BATCH):
            pipe.xadd(key, fields)
        pipe.execute()
        n += BATCH
    _poll(lambda: cr.xlen(key) >= n, CATCH_UP_TIMEOUT_S, "redis replica catch-up")
    rate = n / (time.perf_counter() - t0)
    cp.delete(key)
    return rate


def redis_overhead_round(servers: Servers, n: int, size: int = 64) -> float:
    """Time of ``n`` XADDs (redis-py, pipelined x500) acknowledged by the primary with
    an asynchronous replica / by a standalone Redis: what a replica costs the writer,
    the Redis side of netmesh's overhead ratio."""
    solo = servers.redis_solo()
    cp, _cr, _port = servers.redis_pair()
    fields = {b"p": b"x" * size}

    def timed(client: Any) -> float:
        key = f"bench:ovh:{time.monotonic_ns()}"
        pipe = client.pipeline(transaction=False)
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            for _ in range(min(BATCH, n - start)):
                pipe.xadd(key, fields)
            pipe.execute()
        dt = time.perf_counter() - t0
        client.delete(key)
        return dt

    plain = timed(solo)
    return timed(cp) / plain


def _latency_reader(port: int, key: str, conn: Any) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60.0)
    lat: list[float] = []
    last: Any = "0-0"
    conn.send("ready")
    while True:
        got: Any = client.xread({key: last}, count=1000, block=1000)
        now = time.monotonic_ns()
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                last = entry_id
                p = fields[b"p"]
                if p == b"END":
                    conn.send(lat)
                    client.close()
                    return
                lat.append((now - int.from_bytes(p[:8], "little")) / 1e6)


def redis_replica_latency(
    servers: Servers, seconds: float, rate: int = 10_000, size: int = 64
) -> list[float]:
    """Append -> readable on the replica, ms, at ``rate`` events/s offered: redis-py
    XADDs to the primary each millisecond (the due events pipelined), a reader process
    blocked in XREAD on the replica stamps each entry's arrival (CLOCK_MONOTONIC is
    shared by processes). Includes the reader's round trip, which netmesh's probe (in
    the replica node) does not: a bound in Redis's favour only if anything."""
    import multiprocessing as mp

    cp, _cr, _port = servers.redis_pair()
    key = f"bench:lat:{time.monotonic_ns()}"
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_latency_reader, args=(servers.redis[1].port, key, child), daemon=True
    )
    proc.start()
    try:
        parent.recv()
        pipe = cp.pipeline(transaction=False)
        per_tick, tick = rate // 1000, 0.001
        sent = 0
        pad = b"x" * max(0, size - 8)
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed / tick) * per_tick
            if sent < due:
                for _ in range(due - sent):
                    pipe.xadd(key, {b"p": time.monotonic_ns().to_bytes(8, "little") + pad})
                pipe.execute()
                sent = due
            else:
                time.sleep(tick / 4)  # pacing of the offered load
        cp.xadd(key, {b"p": b"END"})
        if not parent.poll(60):
            raise TimeoutError("redis latency reader did not finish")
        lat: list[float] = parent.recv()
        proc.join(10)
        cp.delete(key)
        return lat
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
        child.close()


class RedisBenchmark:
    """The redis-benchmark C client (``-c 1 -P 500``) XADDing to the primary; the
    count per trial is calibrated once so that a trial lasts about ``seconds``."""

    def __init__(self, servers: Servers, seconds: float, size: int = 64) -> None:
        self.servers, self.seconds, self.size = servers, seconds, size
        self.exe = shutil.which("redis-benchmark")
        self.n = 0

    def _run(self, n: int) -> float:
        cp, cr, port = self.servers.redis_pair()
        if self.exe is None:
            raise Unavailable("redis-benchmark not on PATH (apt-get install redis-tools)")
        key = f"bench:rb:{time.monotonic_ns()}"
        cmd = [self.exe, "-h", "127.0.0.1", "-p", str(port), "-c", "1", "-P", str(BATCH)]
        cmd += ["-n", str(n), "-q", "XADD", key, "*", "p", "x" * self.size]
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, timeout=300, check=True)
        _poll(lambda: cr.xlen(key) >= n, CATCH_UP_TIMEOUT_S, "redis replica catch-up")
        rate = n / (time.perf_counter() - t0)
        cp.delete(key)
        return rate

    def __call__(self) -> float:
        if not self.n:  # calibration, not reported
            rate = self._run(20_000)
            self.n = max(20_000, int(rate * self.seconds)) // BATCH * BATCH  # whole pipelines
        return self._run(self.n)


def redis_wait_every(
    servers: Servers, seconds: float, lat_ms: list[float], every: int = BATCH, size: int = 64
) -> float:
    """redis-py: pipelined XADD x ``every`` + ``WAIT 1 1000`` per batch for ``seconds``.
    Batches whose WAIT saw no replica acknowledgement are not counted."""
    cp, _cr, _port = servers.redis_pair()
    key = f"bench:wait:{time.monotonic_ns()}"
    fields = {b"p": b"x" * size}
    pipe = cp.pipeline(transaction=False)
    n = 0
    t0 = time.perf_counter()
    while (t1 := time.perf_counter()) - t0 < seconds:
        for _ in range(every):
            pipe.xadd(key, fields)
        pipe.execute_command("WAIT", 1, 1000)
        res = pipe.execute()
        lat_ms.append((time.perf_counter() - t1) * 1e3)
        if int(res[-1]) >= 1:
            n += every
    rate = n / (time.perf_counter() - t0)
    cp.delete(key)
    return rate


def redis_catchup(n: int, size: int = 1024) -> float:
    """A Redis replica started empty while its primary holds ``n`` stream entries of
    ``size`` bytes: payload MB/s from starting the replica process until its XLEN is
    ``n`` (a full resynchronisation, diskless: the RDB goes over the socket). Its own
    primary, filled by redis-benchmark, so the shared pair is not disturbed."""
    exe, bench = shutil.which("redis-server"), shutil.which("redis-benchmark")
    try:
        import redis
    except ImportError:
        raise Unavailable("redis-py not installed (pip install redis hiredis)") from None
    if exe is None or bench is None:
        raise Unavailable("redis-server / redis-benchmark not on PATH (apt-get install redis)")
    prim = RedisServer(exe)
    repl: RedisServer | None = None
    clients: list[Any] = []
    try:
        prim.start()
        cmd = [bench, "-h", "127.0.0.1", "-p", str(prim.port), "-c", "1", "-P", str(BATCH)]
        cmd += ["-n", str(n), "-q", "XADD", "bench:c", "*", "p", "x" * size]
        subprocess.run(cmd, capture_output=True, timeout=600, check=True)
        cp = redis.Redis(host="127.0.0.1", port=prim.port, socket_timeout=60.0)
        clients.append(cp)
        n = int(cp.xlen("bench:c"))  # redis-benchmark rounds up to whole pipelines
        repl = RedisServer(exe, replicaof=prim.port)
        t0 = time.perf_counter()
        repl.start()
        cr = redis.Redis(host="127.0.0.1", port=repl.port, socket_timeout=60.0)
        clients.append(cr)

        def holds_all() -> bool:
            try:
                return bool(cr.xlen("bench:c") >= n)
            except redis.exceptions.BusyLoadingError:
                return False

        _poll(holds_all, 600, "redis replica full resync")
        return n * size / (time.perf_counter() - t0) / 1e6
    finally:
        with _no_interrupts():
            for c in clients:
                with contextlib.suppress(Exception):
                    c.close()
            if repl is not None:
                repl.stop()
            prim.stop()


# --------------------------------------------------------------------------- nats trials


class NatsFailover:
    """JetStream R3 write unavailability: SIGKILL the stream leader's server, then
    retry ``js.publish`` (250 ms ack timeout; the client reconnects by itself) until a
    publish is acknowledged. One trial per call (ms); its own 3-node cluster, so the
    shared one is not disturbed. Between trials the killed server is restarted and the
    next trial waits until all three replicas are current."""

    def __init__(self) -> None:
        self.cluster: NatsCluster | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None
        self.error: str | None = None

    def _setup(self) -> None:
        exe = shutil.which("nats-server")
        try:
            import nats
        except ImportError:
            raise Unavailable("nats-py not installed (pip install nats-py)") from None
        if exe is None:
            raise Unavailable("nats-server not on PATH (apt-get install nats-server)")
        self.cluster = NatsCluster(exe)
        self.cluster.start()
        self.loop = asyncio.new_event_loop()
        ports = self.cluster.ports

        async def connect() -> None:
            deadline = time.monotonic() + 20
            while True:
                try:
                    self.nc = await nats.connect(
                        servers=[f"nats://127.0.0.1:{p}" for p in ports],
                        connect_timeout=1,
                        reconnect_time_wait=0.02,
                        max_reconnect_attempts=-1,
                        error_cb=_quiet,
                    )
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)  # polling cadence while the servers start
            self.js = self.nc.jetstream(timeout=5)
            from nats.js.api import StreamConfig

            while True:
                try:
                    await self.js.add_stream(
                        StreamConfig(name="BENCH_FO", subjects=["bench.fo"], num_replicas=3)
                    )
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)  # polling cadence while JetStream forms

        self.loop.run_until_complete(connect())

    async def _healthy(self) -> str:
        """Wait until the stream has a leader and two current replicas; the leader."""
        deadline = time.monotonic() + 60
        while True:
            try:
                info = await self.js.stream_info("BENCH_FO")
                cl = info.cluster
                replicas = (cl.replicas or []) if cl else []
                if (
                    cl
                    and cl.leader
                    and len(replicas) == 2
                    and all(r.current and not r.offline for r in replicas)
                ):
                    await self.js.publish("bench.fo", b"ok", timeout=2)
                    return str(cl.leader)
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("JetStream R3 stream not healthy again")
            await asyncio.sleep(0.05)  # polling cadence while the replicas catch up

    def __call__(self) -> float:
        if self.error:
            raise Unavailable(self.error)
        if self.cluster is None:
            try:
                self._setup()
            except Unavailable as exc:
                self.error = str(exc)
                raise
        assert self.loop is not None and self.cluster is not None
        cluster = self.cluster

        async def trial() -> float:
            leader = await self._healthy()
            victim = int(leader.rsplit("n", 1)[1])
            t_end = time.perf_counter() + 0.3
            while time.perf_counter() < t_end:  # steady acknowledged writes first
                await self.js.publish("bench.fo", b"f" * 64, timeout=2)
            cluster.kill(victim)
            t_kill = time.perf_counter()
            while True:
                try:
                    await self.js.publish("bench.fo", b"f" * 64, timeout=0.25)
                    break
                except Exception:
                    if time.perf_counter() - t_kill > 120:
                        raise
            ms = (time.perf_counter() - t_kill) * 1e3
            cluster.restart(victim)
            return ms

        return self.loop.run_until_complete(trial())

    def close(self) -> None:
        with _no_interrupts():
            if self.nc is not None and self.loop is not None:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(self.nc.close())
            if self.loop is not None:
                self.loop.close()
            self.loop = self.nc = self.js = None
            if self.cluster is not None:
                self.cluster.stop()
                self.cluster = None


def nats_sustained(servers: Servers, replicas: int, seconds: float, size: int = 64) -> float:
    """nats-py ``publish_async`` for ``seconds`` (at most 4000 unacknowledged), until
    every publish is acknowledged."""
    loop, js, subject = servers.jetstream(replicas)
    payload = b"x" * size

    async def run() -> float:
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(BATCH):
                await js.publish_async(subject, payload)
            n += BATCH
        await asyncio.wait_for(js.publish_async_completed(), CATCH_UP_TIMEOUT_S)
        return n / (time.perf_counter() - t0)

    return loop.run_until_complete(run())


def nats_acked_every(
    servers: Servers,
    replicas: int,
    seconds: float,
    lat_ms: list[float],
    every: int = BATCH,
    size: int = 64,
) -> float:
    """``every`` ``publish_async`` then wait for their acks, for ``seconds``."""
    loop, js, subject = servers.jetstream(replicas)
    payload = b"x" * size

    async def run() -> float:
        n = 0
        t0 = time.perf_counter()
        while (t1 := time.perf_counter()) - t0 < seconds:
            futs = [await js.publish_async(subject, payload) for _ in range(every)]
            await asyncio.gather(*futs)
            lat_ms.append((time.perf_counter() - t1) * 1e3)
            n += every
        return n / (time.perf_counter() - t0)

    return loop.run_until_complete(run())

"""``netmesh bench storage``: a persisted log past RAM, next to its peers (issue 15 Figures).

One run, every figure beside the peers measured in the same invocation (absolute
figures on a shared machine move 2-4x between hours; only same-run ratios mean
anything, shared/PEERS.md). 1 KiB payloads unless named; MB = 10^6 B of payload.

=========================  =================================================================
storage_rss_mib            node process RSS holding a persisted log (``Cluster(data_dir=)``,
                           fsync "never" while it is filled) at the largest size the peers
                           reach too; peers: redis-server (``appendonly yes``, ``appendfsync
                           everysec``: Redis holds its data in RAM), nats-server JetStream R1
                           file store. Lower is better. The points at every size (0.25, 0.5,
                           1, 2, 4 GiB; --quick: 64, 128, 256 MiB) are the plot
storage_rss_largest_mib    the node holding the largest log (4 GiB; issue 15 §1) against the
                           stated bound (:data:`BOUND`), its peak (VmHWM) too, the slope (MiB
                           of RSS per GiB of log past the first point), and the RSS after the
                           node reopens that log
cold_read_mb_s             ``RedexFile.read_range`` over a reopened persisted file (netmesh's
                           cache empty), chunks of 1000 events, page cache dropped for the
                           segment files first (``posix_fadvise(DONTNEED)``, checked with
                           ``fincore``); peers: Redis ``XRANGE COUNT 1000`` (in RAM: Redis has
                           no cold path), JetStream R1 pull ``fetch(1000)`` after a server
                           restart with its store files dropped from the page cache
quorum_fsync_batch_eps     factor 3, ``ack="quorum"``, ``data_dir``, ``fsync="batch"``, a flush
                           per 500 events of 64 B (``quorum_fsync_batch_4ch_eps``: 4 channels,
                           a producer thread each, the total: what group commit shares);
                           this checkout and ``--baseline PATH`` (the same measurement with
                           the netmesh package of another checkout, e.g. before group
                           commit) in worker processes, interleaved; peers:
                           JetStream R3 file store (500 ``publish_async`` then their acks),
                           Redis AOF ``always`` / ``everysec`` (XADD x500 pipelined; the
                           ``redis-benchmark -P 500`` C client on ``always`` as the server's
                           bound)
append_fsync_batch_eps     the same on one node without replication (append_batch(500) +
                           flush, fsync="batch"): local durability; peers JetStream R1 file,
                           Redis AOF always / everysec
catchup_disk_mb_s          an empty replica restarted behind a persisted leader whose segment
                           files were dropped from the page cache: payload MB/s until it holds
                           all, default budget; ``catchup_disk_lifted_mb_s``: budget lifted
                           (``nic_peak_bytes_per_s=10**12``); beside: the same catch-up in
                           memory; peers: a Redis replica started empty (full resync), a
                           JetStream R3 server restarted behind its peers' file stores
=========================  =================================================================

JetStream 2.9 file store fsyncs on a timer (``sync_interval``, 2 min), not before an
acknowledgement; Redis ``everysec`` fsyncs once a second: both acknowledge writes a power
cut can lose, netmesh ``fsync="batch"`` and Redis ``always`` do not. Figures say so.

``--quick`` fits in about 90 s and labels what it shrinks. Files go to ``--dir`` (default:
the temp dir) after a free-space check, and are deleted afterwards; the servers are
children of this process, stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.trials import (
    Trial,
    Unavailable,
    figure,
    git_commit,
    interleave,
    load,
    provenance,
    summary,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = "netmesh-bench-storage/1"
HB = 150
KIB = 1024
MIB = 1 << 20
GIB = 1 << 30
EVERY = 500  # events per acknowledgement (flush / WAIT / awaited publishes)
READ_CHUNK = 1000  # events per read_range / XRANGE / fetch
Log = Callable[[str], None]
#: the stated RSS bound of a node holding a persisted log: what ``netmesh.log.file``
#: documents per event and per index interval, doubled for allocator slack, plus a fixed
#: 64 MiB for the 8 MiB payload cache, the 4 MiB producer ring and the batches in flight
#: between them (a drained ring, its record encoding, the write)
BOUND = "RSS(empty node) + 64 MiB + 2 x (4 B per event + 24 B per index_interval_bytes of records)"
BOUND_FIXED = 64 * MIB


@dataclasses.dataclass(frozen=True)
class StoragePlan:
    """Sizes of one run; ``quick`` shrinks them (the figures say so)."""

    quick: bool = False
    rounds: int = 3
    rss_sizes: tuple[int, ...] = (GIB // 4, GIB // 2, GIB, 2 * GIB, 4 * GIB)
    peer_rss_max: int = GIB  # peers are filled up to this (Redis needs it in RAM)
    cold_bytes: int = 512 * MIB
    ack_s: float = 5.0
    catchup_bytes: int = GIB

    @classmethod
    def make(cls, quick: bool, rounds: int | None = None) -> StoragePlan:
        if not quick:
            return cls(rounds=rounds or 3)
        return cls(
            quick=True,
            rounds=rounds or 3,
            rss_sizes=(64 * MIB, 128 * MIB, 256 * MIB),
            peer_rss_max=256 * MIB,
            cold_bytes=16 * MIB,
            ack_s=0.5,
            catchup_bytes=24 * MIB,
        )

    @classmethod
    def tiny(cls) -> StoragePlan:
        """For the plumbing test: seconds, not minutes."""
        return cls(
            quick=True,
            rounds=1,
            rss_sizes=(4 * MIB, 8 * MIB),
            peer_rss_max=4 * MIB,
            cold_bytes=4 * MIB,
            ack_s=0.2,
            catchup_bytes=4 * MIB,
        )

    def disk_bytes(self) -> int:
        """Disk this run needs at its peak (the largest log and Redis' AOF beside it)."""
        return max(self.rss_sizes) + 2 * self.peer_rss_max + 2 * self.catchup_bytes + 2 * GIB

    def note(self, what: str, full: str) -> str:
        return f"QUICK: {what} (full run: {full})" if self.quick else ""


def _gib(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB // 4 else f"{n // MIB} MiB"


# --------------------------------------------------------------------------- page cache


def drop_page_cache(paths: list[str]) -> None:
    """Write back and drop the page-cache pages of ``paths`` (``fdatasync`` then
    ``posix_fadvise(POSIX_FADV_DONTNEED)``): this file only, no root, nothing global."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[str]) -> float | None:
    """Fraction of ``paths``' bytes in the page cache (util-linux ``fincore``), or None
    when fincore is missing."""
    exe = shutil.which("fincore")
    if exe is None or not paths:
        return None
    out = subprocess.run(
        [exe, "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *paths],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    res = size = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            res += int(parts[0])
            size += int(parts[1])
    return res / size if size else None


def _files(directory: str, suffix: str = "") -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(directory):
        out += [os.path.join(dirpath, n) for n in names if n.endswith(suffix)]
    return sorted(out)


def _rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak) of ``pid`` in bytes, from /proc/<pid>/status."""
    got = {"VmRSS": 0, "VmHWM": 0}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in got:
                got[key] = int(line.split()[1]) * 1024
    return got["VmRSS"], got["VmHWM"]


def work_dir(base: str | None, need: int) -> str:
    """A fresh directory under ``base`` (default: the temp dir) on a disk with ``need``
    bytes free; ``Unavailable`` naming the shortfall otherwise (checked first, like
    ``df``). Never tmpfs (/dev/shm): the log must be on a disk, not in RAM."""
    base = base or tempfile.gettempdir()
    free = shutil.disk_usage(base).free
    if free < need:
        raise Unavailable(
            f"{base} has {free / GIB:.1f} GiB free, the run needs {need / GIB:.1f} GiB "
            "(pass --dir on a larger disk, or --quick)"
        )
    return tempfile.mkdtemp(prefix="netmesh-bench-storage-", dir=base)


# --------------------------------------------------------------------------- servers


class Peers:
    """The peers' servers for one run, started on first use, children of this process
    (``netmesh.testing.servers``: free loopback ports, stopped by PID):

    * ``redis("everysec" | "always")``: ``appendonly yes`` with that ``appendfsync``;
    * ``nats1``: one JetStream server; ``nats3``: a 3-server cluster on loopback.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._redis: dict[str, Any] = {}
        self._nats1: Any = None
        self._nats3: Any = None
        self._nats3_ready = False
        self.errors: dict[str, str] = {}

    def redis(self, fsync: str) -> Any:
        """The running RedisServer with ``appendfsync fsync``; Unavailable if not here."""
        key = f"redis_{fsync}"
        if key in self.errors:
            raise Unavailable(self.errors[key])
        if fsync not in self._redis:
            try:
                import redis  # noqa: F401

                from netmesh.testing import servers
            except ImportError as exc:
                self.errors[key] = f"redis-py not installed: {exc}"
                raise Unavailable(self.errors[key]) from None
            if shutil.which("redis-server") is None:
                self.errors[key] = "redis-server not on PATH (apt-get install redis-server)"
                raise Unavailable(self.errors[key])

            class _Redis(servers.RedisServer):
                def _argv(self) -> list[str]:
                    argv = super()._argv()
                    return [*argv[:-1], fsync] if argv[-2] == "--appendfsync" else argv

            srv = _Redis(os.path.join(self.dir, key))
            try:
                srv.start()
            except Exception as exc:
                self.errors[key] = f"redis-server did not start: {exc}"
                raise Unavailable(self.errors[key]) from exc
            self._redis[fsync] = srv
        return self._redis[fsync]

    def redis_client(self, fsync: str) -> Any:
        import redis

        srv = self.redis(fsync)
        return redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=120.0)

    def nats1(self) -> Any:
        """The single JetStream server (NatsServer); Unavailable if not here."""
        if "nats1" in self.errors:
            raise Unavailable(self.errors["nats1"])
        if self._nats1 is None:
            self._check_nats("nats1")
            from netmesh.testing import servers

            srv = servers.NatsServer(os.path.join(self.dir, "nats1"))
            try:
                srv.start()
            except Exception as exc:
                self.errors["nats1"] = f"nats-server did not start: {exc}"
                raise Unavailable(self.errors["nats1"]) from exc
            self._nats1 = srv
        return self._nats1

    def prestart_nats3(self) -> None:
        """Spawn the 3 JetStream servers now (they form their cluster while other
        figures run); :meth:`nats3` waits until they answer. Errors surface there."""
        if self._nats3 is not None or "nats3" in self.errors:
            return
        try:
            self._check_nats("nats3")
        except Unavailable:
            return
        from netmesh.testing import servers

        self._nats3 = servers.NatsCluster(os.path.join(self.dir, "nats3"), name="bench")
        self._nats3_ready = False
        try:
            for srv in self._nats3.servers:
                srv.start(wait=False)
        except Exception as exc:
            self.errors["nats3"] = f"nats cluster did not start: {exc}"

    def nats3(self) -> Any:
        """The 3-server JetStream cluster (NatsCluster); Unavailable if not here."""
        if "nats3" in self.errors:
            raise Unavailable(self.errors["nats3"])
        self.prestart_nats3()
        if "nats3" in self.errors:
            raise Unavailable(self.errors["nats3"])
        if not self._nats3_ready:
            try:
                for srv in self._nats3.servers:
                    srv.wait_ready(30.0)
            except Exception as exc:
                self.errors["nats3"] = f"nats cluster did not start: {exc}"
                raise Unavailable(self.errors["nats3"]) from exc
            self._nats3_ready = True
        return self._nats3

    def _check_nats(self, key: str) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:
            self.errors[key] = "nats-py not installed (pip install nats-py)"
            raise Unavailable(self.errors[key]) from None
        if shutil.which("nats-server") is None:
            self.errors[key] = "nats-server not on PATH (apt-get install nats-server)"
            raise Unavailable(self.errors[key])

    def close(self) -> None:
        for srv in self._redis.values():
            srv.stop()
        self._redis = {}
        if self._nats1 is not None:
            self._nats1.stop()
            self._nats1 = None
        if self._nats3 is not None:
            self._nats3.stop()
            self._nats3 = None


# --------------------------------------------------------------------------- nats helpers


async def _nats_connect(urls: str | list[str]) -> Any:
    import nats

    deadline = time.monotonic() + 30
    while True:
        try:
            return await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=3)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # polling cadence while the servers start


async def _nats_stream(js: Any, name: str, replicas: int) -> None:
    """(Re)create file-store stream ``name`` on subject ``name.lower()``, empty."""
    from nats.js.api import StorageType, StreamConfig

    with contextlib.suppress(Exception):
        await js.delete_stream(name)
    deadline = time.monotonic() + 30
    while True:  # JetStream needs its meta leader and enough peers first
        try:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[name.lower()],
                    num_replicas=replicas,
                    storage=StorageType.FILE,
                    max_bytes=-1,
                    max_msg_size=-1,
                )
            )
            await js.publish(name.lower(), b"warm", timeout=10)
            await js.purge_stream(name)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # polling cadence while JetStream forms


def nats_acked_every(
    urls: str | list[str], replicas: int, seconds: float, every: int, size: int
) -> float:
    """JetStream file store, ``replicas`` replicas: ``every`` publish_async then their
    acks, for ``seconds``; events/s."""

    async def go() -> float:
        nc = await _nats_connect(urls)
        try:
            js = nc.jetstream(timeout=30, publish_async_max_pending=every * 2)
            name = f"STORE_R{replicas}"
            await _nats_stream(js, name, replicas)
            payload = b"x" * size
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                futs = [await js.publish_async(name.lower(), payload) for _ in range(every)]
                await asyncio.gather(*futs)
                n += every
            rate = n / (time.perf_counter() - t0)
            await js.delete_stream(name)
            return rate
        finally:
            await nc.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------- redis helpers


def redis_bench_fill(port: int, key: str, n: int, size: int) -> None:
    """``n`` XADDs through the redis-benchmark C client (-c 1 -P 500); Unavailable
    without it."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise Unavailable("redis-benchmark not on PATH (apt-get install redis-tools)")
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-c", "1", "-P", str(EVERY)]
    cmd += ["-n", str(n), "-q", "XADD", key, "*", "p", "x" * size]
    subprocess.run(cmd, capture_output=True, timeout=600, check=True)


def redis_acked_every(peers: Peers, fsync: str, seconds: float, every: int, size: int) -> float:
    """redis-py: XADD x ``every`` pipelined (one round trip; Redis fsyncs per its
    ``appendfsync`` before replying with ``always``), for ``seconds``; events/s."""
    client = peers.redis_client(fsync)
    try:
        key = f"bench:ack:{time.monotonic_ns()}"
        fields = {b"p": b"x" * size}
        pipe = client.pipeline(transaction=False)
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(every):
                pipe.xadd(key, fields)
            pipe.execute()
            n += every
        rate = n / (time.perf_counter() - t0)
        client.delete(key)
        return rate
    finally:
        client.close()


class RedisBenchAcked:
    """redis-benchmark C client XADDing (-c 1 -P 500) to the ``always`` server, count
    calibrated once to last about ``seconds`` (the server's bound)."""

    def __init__(self, peers: Peers, fsync: str, seconds: float, size: int) -> None:
        self.peers, self.fsync, self.seconds, self.size = peers, fsync, seconds, size
        self.n = 0

    def _run(self, n: int) -> float:
        srv = self.peers.redis(self.fsync)
        key = f"bench:rb:{time.monotonic_ns()}"
        t0 = time.perf_counter()
        redis_bench_fill(srv.port, key, n, self.size)
        rate = n / (time.perf_counter() - t0)
        srv.command("DEL", key)
        return rate

    def __call__(self) -> float:
        if not self.n:  # calibration, not reported
            rate = self._run(5 * EVERY)
            self.n = max(5 * EVERY, int(rate * self.seconds)) // EVERY * EVERY
        return self._run(self.n)


# --------------------------------------------------------------------------- RSS


def netmesh_rss(directory: str, sizes: tuple[int, ...], size: int, log: Log) -> dict[str, Any]:
    """One node with ``data_dir`` filled through a producer ring (append_batch(64),
    fsync "never": the figure is memory, not the disk) to each of ``sizes`` bytes of
    payload; the node's RSS and peak RSS at each, then after it reopens the log."""
    from netmesh.cluster.cluster import Cluster
    from netmesh.cluster.producer_worker import produce
    from netmesh.config import RedexFileConfig

    cfg = RedexFileConfig()
    points: list[list[int]] = []
    ch = "bench/rss"
    data = os.path.join(directory, "rss")
    with Cluster(nodes=1, data_dir=data, heartbeat_ms=HB) as c:
        c.open_channel(ch, fsync="never")
        pid = c.info[0]["pid"]
        with c.producer(0, ch) as p:  # a first batch: the channel's buffers exist
            produce(p, 64, 64, size, 0)
        base, _peak = _rss(pid)
        points.append([0, base, base])
        held = 64
        t0 = time.perf_counter()
        for target in sizes:
            n = target // size - held
            if n > 0:
                with c.producer(0, ch) as p:
                    produce(p, n, 64, size, 0)
                held += n
            rss, peak = _rss(pid)
            points.append([held * size, rss, peak])
            log(
                f"rss: {_gib(held * size)} held, node RSS {rss / MIB:.0f} MiB peak {peak / MIB:.0f}"
            )
        fill_s = time.perf_counter() - t0
        assert c.next_seq(0, ch) == held
        head = c.read_range(0, ch, 0, 10)  # served from disk: the cache holds the tail
        assert len(head) == 10 and all(len(x) == size for x in head)
        after_read = _rss(pid)[0]
        disk = sum(os.path.getsize(f) for f in _files(data, ".seg"))
        c.kill(0)
        t1 = time.perf_counter()
        c.restart(0)
        c.wait_until(lambda: c.next_seq(0, ch) == held, timeout=600, message="reopened")
        reopen_s = time.perf_counter() - t1
        reopened = _rss(c.info[0]["pid"])
    shutil.rmtree(data, ignore_errors=True)
    events = held
    documented = 4 * events + 24 * (disk // cfg.index_interval_bytes)
    bound = base + BOUND_FIXED + 2 * documented
    return {
        "points": points,
        "base_rss": base,
        "events": events,
        "segment_bytes_on_disk": disk,
        "fill_s": round(fill_s, 2),
        "rss_after_head_read": after_read,
        "reopen_s": round(reopen_s, 2),
        "rss_after_reopen": reopened[0],
        "peak_after_reopen": reopened[1],
        "documented_bytes": documented,
        "bound_bytes": bound,
        "bound": BOUND,
    }


def redis_rss(peers: Peers, sizes: list[int], size: int, log: Log) -> list[list[int]]:
    """redis-server (AOF everysec) filled by redis-benchmark to each size; its RSS."""
    srv = peers.redis("everysec")
    held = 0
    out = [[0, *_rss(srv.pid)]]
    for target in sizes:
        n = (target // size - held) // EVERY * EVERY
        if n > 0:
            redis_bench_fill(srv.port, "bench:rss", n, size)
            held += n
        out.append([held * size, *_rss(srv.pid)])
        log(f"rss redis: {_gib(held * size)} {out[-1][1] / MIB:.0f} MiB")
    srv.command("DEL", "bench:rss")
    return out


def nats_rss(peers: Peers, sizes: list[int], size: int, log: Log) -> list[list[int]]:
    """nats-server (JetStream R1 file store) filled with nc.publish to each size."""
    srv = peers.nats1()

    async def go() -> list[list[int]]:
        nc = await _nats_connect(srv.url)
        try:
            js = nc.jetstream(timeout=30)
            await _nats_stream(js, "RSS", 1)
            held = 0
            out = [[0, *_rss(srv.pid)]]
            for target in sizes:
                n = target // size - held
                if n > 0:
                    await _publish(nc, "rss", n, size)
                    held += n
                    await _wait_count(js, "RSS", held)
                out.append([held * size, *_rss(srv.pid)])
                log(f"rss jetstream: {_gib(held * size)} {out[-1][1] / MIB:.0f} MiB")
            await js.delete_stream("RSS")
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


async def _publish(nc: Any, subject: str, n: int, size: int) -> None:
    payload = b"x" * size
    for i in range(0, n, 1000):
        for _ in range(min(1000, n - i)):
            await nc.publish(subject, payload)
        await nc.flush(timeout=60)


async def _wait_count(js: Any, name: str, n: int) -> None:
    deadline = time.monotonic() + 300
    while (await js.stream_info(name)).state.messages < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"JetStream stored fewer than {n} messages")
        await asyncio.sleep(0.01)  # polling cadence for the stream's count


def bench_rss(plan: StoragePlan, peers: Peers, directory: str, log: Log) -> dict[str, Any]:
    """RSS vs log size (the plot) and the two RSS figures."""
    size = KIB
    before = load()
    nm = netmesh_rss(directory, plan.rss_sizes, size, log)
    peer_sizes = [s for s in plan.rss_sizes if s <= plan.peer_rss_max]
    curves: dict[str, list[list[int]]] = {"netmesh": nm["points"]}
    errors: dict[str, str] = {}
    for name, fn in (("redis_everysec", redis_rss), ("jetstream_r1", nats_rss)):
        try:
            curves[name] = fn(peers, peer_sizes, size, log)
        except Unavailable as exc:
            errors[name] = str(exc)
        except Exception as exc:  # a peer's failure is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {exc}"
    common = max(peer_sizes)

    def at(points: list[list[int]]) -> list[float]:
        return [p[1] / MIB for p in points if abs(p[0] - common) < size * EVERY]

    fig = figure(
        "MiB RSS",
        f"RSS of the process holding a persisted log of {_gib(common)} (1 KiB events)",
        at(nm["points"]),
        {k: at(v) for k, v in curves.items() if k != "netmesh" and at(v)},
        errors,
        lower_is_better=True,
        peer_labels={
            "redis_everysec": "redis-server, appendonly yes, appendfsync everysec (data in RAM)",
            "jetstream_r1": "nats-server, JetStream R1 file store",
        },
        note="one fill per system (a trial is the whole fill); netmesh node fsync never "
        "while filling"
        + (
            "; " + plan.note(f"up to {_gib(common)}", "1 GiB beside the peers")
            if plan.quick
            else ""
        ),
    )
    fig["load_before"], fig["load_after"] = before, load()
    largest = nm["points"][-1]
    growth = largest[1] - nm["base_rss"]
    first = nm["points"][1]
    slope = (
        (largest[1] - first[1]) / MIB / ((largest[0] - first[0]) / GIB)
        if largest[0] > first[0]
        else float("nan")
    )
    demo: dict[str, Any] = {
        "unit": "MiB RSS",
        "label": f"node RSS holding a {_gib(largest[0])} persisted log (issue 15 §1)",
        "lower_is_better": True,
        "netmesh": summary([largest[1] / MIB]),
        "peers": {},
        "bound_mib": round(nm["bound_bytes"] / MIB, 1),
        "within_bound": largest[1] <= nm["bound_bytes"] and largest[2] <= nm["bound_bytes"],
        "peak_mib": round(largest[2] / MIB, 1),
        "growth_mib": round(growth / MIB, 1),
        "slope_mib_per_gib": round(slope, 2),
        "empty_node_mib": round(nm["base_rss"] / MIB, 1),
        "log_bytes": largest[0],
        "rss_after_reopen_mib": round(nm["rss_after_reopen"] / MIB, 1),
        "peak_after_reopen_mib": round(nm["peak_after_reopen"] / MIB, 1),
        "reopen_s": nm["reopen_s"],
        "fill_s": nm["fill_s"],
        "bound": nm["bound"],
        "load_before": before,
        "load_after": fig["load_after"],
        "note": f"{'WITHIN' if largest[2] <= nm['bound_bytes'] else 'OVER'} the bound "
        f"{nm['bound_bytes'] / MIB:.0f} MiB ({nm['bound']}); peak {largest[2] / MIB:.0f} MiB; "
        f"empty node {nm['base_rss'] / MIB:.0f} MiB; slope {slope:.1f} MiB per GiB of log "
        f"past {_gib(first[0])}; after reopen {nm['rss_after_reopen'] / MIB:.0f} MiB "
        f"(reopen {nm['reopen_s']:g} s)"
        + ("; " + plan.note(f"{_gib(largest[0])}", "4 GiB") if plan.quick else ""),
    }
    return {
        "figures": {"storage_rss_mib": fig, "storage_rss_largest_mib": demo},
        "samples": {
            "rss_vs_log_disk": {
                "what": "[payload bytes held, RSS bytes, peak RSS bytes] per system",
                "curves": curves,
                "bound_bytes": nm["bound_bytes"],
                "documented_bytes": nm["documented_bytes"],
            }
        },
    }


# --------------------------------------------------------------------------- cold reads


class ColdReadNetmesh:
    """A persisted RedexFile of ``nbytes`` of 1 KiB events, reopened for each trial
    (netmesh's cache empty) with its segments dropped from the page cache, then read
    with read_range in chunks of READ_CHUNK; payload MB/s."""

    def __init__(self, directory: str, nbytes: int, size: int) -> None:
        from netmesh.config import RedexFileConfig
        from netmesh.log.file import RedexFile

        self.path = os.path.join(directory, "cold")
        self.size = size
        f = RedexFile("bench/cold", RedexFileConfig(path=self.path))
        batch = [os.urandom(size) for _ in range(64)]
        for _ in range(nbytes // size // 64):
            f.append_batch(batch)
        self.n = f.next_seq
        f.close()
        self.resident: list[float | None] = []
        self.warm: list[float] = []
        self.payloads: list[float] = []

    def _read(self, events: bool) -> float:
        from netmesh.config import RedexFileConfig
        from netmesh.log.file import RedexFile

        f = RedexFile("bench/cold", RedexFileConfig(path=self.path))
        try:
            segs = _files(self.path, ".seg")
            drop_page_cache(segs)
            self.resident.append(resident_fraction(segs))
            t0 = time.perf_counter()
            got = 0
            for start in range(0, self.n, READ_CHUNK):
                if events:
                    got += sum(len(e.payload) for e in f.read_range(start, start + READ_CHUNK))
                else:
                    got += sum(map(len, f.read_payloads(start, start + READ_CHUNK)[0]))
            cold = got / (time.perf_counter() - t0) / 1e6
            assert got == self.n * self.size, (got, self.n)
            if events:  # again, page cache warm now, netmesh cache still cold
                t0 = time.perf_counter()
                for start in range(0, self.n, READ_CHUNK):
                    f.read_range(start, start + READ_CHUNK)
                self.warm.append(got / (time.perf_counter() - t0) / 1e6)
            return cold
        finally:
            f.close()

    def __call__(self) -> float:
        self.payloads.append(self._read(events=False))
        return self._read(events=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ColdReadRedis:
    """XRANGE COUNT 1000 over a stream of the same events (Redis keeps it in RAM)."""

    def __init__(self, peers: Peers, n: int, size: int) -> None:
        self.peers, self.n, self.size = peers, n, size
        self.filled = False

    def __call__(self) -> float:
        srv = self.peers.redis("everysec")
        if not self.filled:
            redis_bench_fill(srv.port, "bench:cold", self.n // EVERY * EVERY, self.size)
            self.filled = True
        client = self.peers.redis_client("everysec")
        try:
            got = 0
            last = "-"
            t0 = time.perf_counter()
            while True:
                entries = client.xrange("bench:cold", min=last, count=READ_CHUNK)
                if last != "-":
                    entries = entries[1:]  # the bound is inclusive
                if not entries:
                    break
                got += sum(len(fields[b"p"]) for _id, fields in entries)
                last = entries[-1][0]
            return got / (time.perf_counter() - t0) / 1e6
        finally:
            client.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.peers.redis("everysec").command("DEL", "bench:cold")


class ColdReadNats:
    """JetStream R1 file store: restart the server with its store dropped from the page
    cache, then an ephemeral pull consumer (no acks) fetches batches of READ_CHUNK."""

    def __init__(self, peers: Peers, n: int, size: int) -> None:
        self.peers, self.n, self.size = peers, n, size
        self.filled = False

    def __call__(self) -> float:
        srv = self.peers.nats1()
        if not self.filled:

            async def fill() -> None:
                nc = await _nats_connect(srv.url)
                try:
                    js = nc.jetstream(timeout=30)
                    await _nats_stream(js, "COLD", 1)
                    await _publish(nc, "cold", self.n, self.size)
                    await _wait_count(js, "COLD", self.n)
                finally:
                    await nc.close()

            asyncio.run(fill())
            self.filled = True
        srv.stop()
        drop_page_cache(_files(str(srv.dir / "js")))
        srv.start()
        return asyncio.run(self._read(srv.url))

    async def _read(self, url: str) -> float:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        nc = await _nats_connect(url)
        try:
            js = nc.jetstream(timeout=30)
            psub = await js.pull_subscribe(
                "cold",
                durable=None,
                stream="COLD",
                config=ConsumerConfig(ack_policy=AckPolicy.NONE),
            )
            got = count = 0
            t0 = time.perf_counter()
            while count < self.n:
                try:
                    msgs = await psub.fetch(READ_CHUNK, timeout=10)
                except nats.errors.TimeoutError:
                    break
                count += len(msgs)
                got += sum(len(m.data) for m in msgs)
            rate = got / (time.perf_counter() - t0) / 1e6
            if count < self.n:
                raise RuntimeError(f"JetStream delivered {count} of {self.n}")
            return rate
        finally:
            await nc.close()

    def close(self) -> None:
        pass


def bench_cold_read(plan: StoragePlan, peers: Peers, directory: str, log: Log) -> dict[str, Any]:
    size = KIB
    nm = ColdReadNetmesh(directory, plan.cold_bytes, size)
    redis_r = ColdReadRedis(peers, nm.n, size)
    nats_r = ColdReadNats(peers, nm.n, size)
    before = load()
    try:
        xs, ps, errs = interleave(
            nm, {"redis_xrange": redis_r, "jetstream_r1": nats_r}, plan.rounds, log
        )
    finally:
        nm.close()
        redis_r.close()
    resident = [r for r in nm.resident if r is not None]
    cold_note = (
        f"page cache dropped for the segment files (fadvise DONTNEED): at most "
        f"{max(resident):.1%} resident when the read started (fincore)"
        if resident
        else "page cache dropped with fadvise DONTNEED (fincore missing: not checked)"
    )
    fig = figure(
        "MB/s (payload, 10^6)",
        f"read_range of cold events, {nm.n * size / 1e6:.0f} MB of 1 KiB, {READ_CHUNK} per call",
        xs,
        ps,
        errs,
        peer_labels={
            "redis_xrange": "Redis XRANGE COUNT 1000 (redis-py; in RAM, no cold path)",
            "jetstream_r1": "JetStream R1 file store after a restart with its files dropped "
            "from the page cache, pull fetch(1000), no acks (nats-py)",
        },
        note=f"{cold_note}; netmesh cache empty (file reopened per trial)"
        + ("; " + plan.note(f"{_gib(plan.cold_bytes)}", "512 MiB") if plan.quick else ""),
    )
    fig["read_payloads"] = summary(nm.payloads)
    fig["page_cache_warm"] = summary(nm.warm)
    fig["resident_fraction_before_read"] = nm.resident
    fig["load_before"], fig["load_after"] = before, load()
    return {"figures": {"cold_read_mb_s": fig}}


# --------------------------------------------------------------------------- acked writes


WORKER_CODE = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from benchmarks.storage import worker_main; sys.exit(worker_main(*sys.argv[2:]))"
)


class AckWorker:
    """A worker process running :func:`worker_main` against the netmesh package of
    ``checkout`` (None: the one this process imports, ``PYTHONPATH`` inherited): a
    3-node ``Cluster(data_dir=...)`` with quorum channels and an unreplicated one, all
    fsync="batch"; each ``trial(kind)`` is one timed run in it. With a checkout,
    ``netmesh`` comes from a directory whose only entry is a symlink to
    ``<checkout>/netmesh`` (``PYTHONPATH``, inherited by the node processes), and
    ``benchmarks`` from this checkout."""

    def __init__(self, directory: str, seconds: float, checkout: str | None = None) -> None:
        self.checkout = checkout
        self.seconds = seconds
        self.shim = ""
        env = dict(os.environ)
        if checkout is not None:
            if not os.path.isdir(os.path.join(checkout, "netmesh")):
                raise Unavailable(f"--baseline {checkout}: no netmesh package there")
            self.shim = tempfile.mkdtemp(prefix="netmesh-bench-shim-")
            os.symlink(os.path.join(os.path.abspath(checkout), "netmesh"), f"{self.shim}/netmesh")
            env["PYTHONPATH"] = self.shim
        self.data = tempfile.mkdtemp(prefix="ack-", dir=directory)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", WORKER_CODE, ROOT, self.data],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._info: dict[str, Any] | None = None
        #: leader moves (NotLeader, re-targeted) per trial, in trial order
        self.leader_moves: list[int] = []

    @property
    def info(self) -> dict[str, Any]:
        """The worker's ready line (waits for it): {"netmesh": package path}."""
        if self._info is None:
            self._info = self._answer()
        return self._info

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise RuntimeError(f"storage worker exited with {code}")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def trial(self, kind: str) -> float:
        assert self.proc.stdin is not None
        _ = self.info
        self.proc.stdin.write(f"{kind} {self.seconds}\n")
        self.proc.stdin.flush()
        got = self._answer()
        self.leader_moves.append(int(got.get("leader_moves", 0)))
        return float(got["eps"])

    def close(self) -> None:
        """Ask the worker to quit (its cluster stops), kill it after 60 s; idempotent."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        shutil.rmtree(self.data, ignore_errors=True)
        if self.shim:
            shutil.rmtree(self.shim, ignore_errors=True)


def worker_main(data_dir: str) -> int:
    """The :class:`AckWorker` process: prints a JSON line when ready ({"netmesh": the
    package's real path}), then answers each stdin line ``KIND SECONDS`` with {"eps":
    events/s of append_batch(500) + flush for that long}: ``quorum`` (one producer, a
    factor-3 quorum channel), ``quorum4`` (4 producer threads on 4 such channels, the
    total: what group commit shares), ``single`` (one node, unreplicated); ``quit``
    ends it. Every channel: data_dir, fsync="batch", leaders pinned to node 0."""
    import threading

    import netmesh
    from netmesh.cluster.cluster import Cluster
    from netmesh.config import ReplicationConfig
    from netmesh.errors import NotLeader

    try:
        c = Cluster(nodes=3, heartbeat_ms=HB, data_dir=data_dir)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    with c:
        quorum = [f"bench/q{i}" for i in range(4)]
        for name in quorum:
            cfg = ReplicationConfig(
                factor=3, heartbeat_ms=HB, ack="quorum", leader_pinned=c.node_ids[0]
            )
            c.open_channel(name, cfg, fsync="batch")
        c.open_channel("bench/one", fsync="batch")
        for name in quorum:
            c.wait_until(functools.partial(_leads, c, name), timeout=20, message="leader")
        chunk = [b"x" * 64] * EVERY

        moves: list[str] = []  # channels whose leader moved during a trial

        def drive(ch: str, seconds: float, out: list[float]) -> None:
            """append_batch + flush for ``seconds`` (at least one batch); when the
            leader moved (NotLeader), re-target it and go on: the refused batch is not
            counted, the time is."""
            n = 0
            t0 = time.perf_counter()
            while True:
                lead = 0 if ch == "bench/one" else c.wait_for_leader(ch, timeout=30)
                try:
                    with c.producer(lead, ch) as p:
                        while True:
                            p.append_batch(chunk)
                            p.flush(timeout=60)
                            n += EVERY
                            if time.perf_counter() - t0 >= seconds:
                                break
                    break
                except NotLeader:
                    moves.append(ch)
            out.append(n / (time.perf_counter() - t0))

        for ch in [*quorum, "bench/one"]:  # warm-up: every replica streams
            drive(ch, 0.0, [])
        print(json.dumps({"netmesh": os.path.realpath(netmesh.__file__)}), flush=True)
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "quit":
                break
            kind, seconds = parts[0], float(parts[1])
            rates: list[float] = []
            moves.clear()
            try:
                if kind == "quorum4":
                    threads = [
                        threading.Thread(target=drive, args=(ch, seconds, rates)) for ch in quorum
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    if len(rates) != len(quorum):
                        raise RuntimeError("a producer thread failed (its traceback is above)")
                else:
                    drive(quorum[0] if kind == "quorum" else "bench/one", seconds, rates)
            except Exception as exc:  # reported to the suite, which reports it
                print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
                continue
            print(json.dumps({"eps": sum(rates), "leader_moves": len(moves)}), flush=True)
    return 0


def _leads(c: Any, name: str) -> bool:
    return bool(c.leader(name) == 0)


def _git_head(path: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def start_ack_workers(
    plan: StoragePlan, directory: str, baseline: str | None
) -> tuple[dict[str, AckWorker], dict[str, str]]:
    """The AckWorkers of this checkout and of ``baseline``, spawned now (their clusters
    start while other figures run); errors by name."""
    workers: dict[str, AckWorker] = {"netmesh": AckWorker(directory, plan.ack_s)}
    errors: dict[str, str] = {}
    if baseline is None:
        errors["netmesh_baseline"] = "no --baseline PATH given"
    else:
        try:
            workers["netmesh_baseline"] = AckWorker(directory, plan.ack_s, baseline)
        except (Unavailable, OSError) as exc:
            errors["netmesh_baseline"] = f"{type(exc).__name__}: {exc}"
    return workers, errors


def bench_acked(
    plan: StoragePlan,
    peers: Peers,
    workers: dict[str, AckWorker],
    errors: dict[str, str],
    baseline: str | None,
    log: Log,
) -> dict[str, Any]:
    """quorum_fsync_batch_eps, quorum_fsync_batch_4ch_eps and append_fsync_batch_eps
    (see the module doc), measured in ``workers`` (closed afterwards)."""
    size = 64
    figures: dict[str, Any] = {}
    if "netmesh_baseline" in workers:
        try:
            _ = workers["netmesh_baseline"].info
        except (RuntimeError, OSError, ValueError) as exc:
            errors["netmesh_baseline"] = f"{type(exc).__name__}: {exc}"
            workers.pop("netmesh_baseline").close()
    try:
        for key, kind, replicas in (
            ("quorum_fsync_batch_eps", "quorum", 3),
            ("quorum_fsync_batch_4ch_eps", "quorum4", 0),
            ("append_fsync_batch_eps", "single", 1),
        ):
            log(f"acked: {key}")
            peer_fns: dict[str, Trial] = {}
            if "netmesh_baseline" in workers:
                peer_fns["netmesh_baseline"] = functools.partial(
                    workers["netmesh_baseline"].trial, kind
                )

            def js(replicas: int = replicas) -> float:
                urls = peers.nats3().urls.split(",") if replicas == 3 else peers.nats1().url
                return nats_acked_every(urls, replicas, plan.ack_s, EVERY, size)

            if replicas:  # the 4-channel case is netmesh before / after only
                peer_fns[f"jetstream_r{replicas}"] = js
                peer_fns["redis_always"] = functools.partial(
                    redis_acked_every, peers, "always", plan.ack_s, EVERY, size
                )
                peer_fns["redis_everysec"] = functools.partial(
                    redis_acked_every, peers, "everysec", plan.ack_s, EVERY, size
                )
                peer_fns["redis_benchmark_always"] = RedisBenchAcked(
                    peers, "always", plan.ack_s, size
                )
            before = load()
            for w in workers.values():
                w.leader_moves.clear()
            xs, ps, errs = interleave(
                functools.partial(workers["netmesh"].trial, kind), peer_fns, plan.rounds, log
            )
            what = {
                "quorum": "factor 3, ack='quorum', one producer",
                "quorum4": "factor 3, ack='quorum', 4 channels x 1 producer thread (total)",
                "single": "one node, no replication",
            }[kind]
            fig = figure(
                "events/s",
                f"{what}, data_dir, fsync='batch', append_batch({EVERY}) + flush, 64 B",
                xs,
                ps,
                {**errors, **errs},
                peer_labels={
                    "netmesh_baseline": f"netmesh at --baseline ({baseline}), same measurement",
                    f"jetstream_r{replicas}": f"NATS JetStream R{replicas} file store, "
                    f"{EVERY} publish_async then their acks (2.9: fsync on a 2 min timer)",
                    "redis_always": f"Redis AOF appendfsync always, XADD x{EVERY} pipelined "
                    "(redis-py)",
                    "redis_everysec": f"Redis AOF appendfsync everysec, XADD x{EVERY} "
                    "pipelined (redis-py; fsync once a second)",
                    "redis_benchmark_always": f"Redis AOF always, redis-benchmark -c1 -P{EVERY}"
                    " (C client: the server's bound)",
                },
                note=plan.note(f"{plan.ack_s:g} s per trial", "5 s")
                or f"{plan.ack_s:g} s per trial",
            )
            fig["load_before"], fig["load_after"] = before, load()
            fig["leader_moves"] = {k: list(w.leader_moves) for k, w in workers.items()}
            if any(sum(v) for v in fig["leader_moves"].values()):
                fig["note"] += (
                    "; LEADER MOVED during trials (NotLeader, re-targeted; the time counts): "
                    + ", ".join(f"{k} {sum(v)}" for k, v in fig["leader_moves"].items())
                )
            fig["netmesh_package"] = workers["netmesh"].info.get("netmesh")
            if "netmesh_baseline" in workers:
                fig["baseline_package"] = workers["netmesh_baseline"].info.get("netmesh")
                fig["baseline_commit"] = _git_head(baseline or "")
            figures[key] = fig
    finally:
        for w in workers.values():
            w.close()
    return {"figures": figures}


# --------------------------------------------------------------------------- catch-up


def netmesh_catchup_disk(
    directory: str, nbytes: int, size: int, nic_peak: int | None, persisted: bool = True
) -> dict[str, float]:
    """Payload MB/s of an empty replica catching up with a persisted leader whose
    segment files are out of the page cache (``persisted=False``: both in memory, the
    reference), and the fraction of the segments resident when it restarted."""
    from benchmarks.storage_bench import wait_caught_up
    from netmesh.cluster.cluster import Cluster
    from netmesh.cluster.producer_worker import produce
    from netmesh.config import ReplicationConfig

    n = nbytes // size // 64 * 64
    data = tempfile.mkdtemp(prefix="catchup-", dir=directory)
    try:
        with Cluster(nodes=2, heartbeat_ms=HB, data_dir=data if persisted else None) as c:
            cfg = ReplicationConfig(factor=2, heartbeat_ms=HB, leader_pinned=c.node_ids[0])
            if nic_peak is not None:
                cfg = dataclasses.replace(cfg, nic_peak_bytes_per_s=nic_peak)
            c.open_channel("bench/c", cfg, **({"fsync": "never"} if persisted else {}))
            c.wait_until(lambda: c.leader("bench/c") == 0, timeout=10, message="pinned leader")
            c.kill(1)
            with c.producer(0, "bench/c") as p:
                produce(p, n, 64, size, 0)
            segs = _files(os.path.join(data, "node0"), ".seg")
            drop_page_cache(segs)
            resident = resident_fraction(segs)
            c.restart(1)
            t0 = time.perf_counter()
            wait_caught_up(c, 1, "bench/c", n, t0)
            rate = n * size / (time.perf_counter() - t0) / 1e6
            return {"mb_s": rate, "resident": -1.0 if resident is None else resident}
    finally:
        shutil.rmtree(data, ignore_errors=True)


def nats_catchup(directory: str, nbytes: int, size: int) -> float:
    """JetStream R3 file store: one server of its own 3-server cluster (not the stream
    leader) is SIGKILLed, ``nbytes`` of ``size``-byte messages are published to the
    other two, their store files are dropped from the page cache, the server restarts:
    payload MB/s until the stream leader reports it current with no lag."""
    from netmesh.testing import servers

    cl = servers.NatsCluster(tempfile.mkdtemp(prefix="nats-catchup-", dir=directory))
    n = nbytes // size

    async def go() -> float:
        nc = await _nats_connect(cl.urls.split(","))
        try:
            js = nc.jetstream(timeout=30)
            await _nats_stream(js, "CATCH", 3)
            leader = (await js.stream_info("CATCH")).cluster.leader
        finally:
            await nc.close()
        victim = next(s for s in cl.servers if s.server_name != leader)
        # the client talks to the two that stay up only
        nc = await _nats_connect([s.url for s in cl.servers if s is not victim])
        try:
            js = nc.jetstream(timeout=30)
            victim.kill()
            await _publish(nc, "catch", n, size)
            await _wait_count(js, "CATCH", n)
            for srv in cl.servers:
                if srv is not victim:
                    drop_page_cache(_files(str(srv.dir / "js")))
            victim.start(wait=False)
            t0 = time.perf_counter()
            deadline = t0 + 900
            while True:
                info = await js.stream_info("CATCH")
                peer = next(
                    (r for r in (info.cluster.replicas or []) if r.name == victim.server_name),
                    None,
                )
                if peer is not None and peer.current and not peer.offline and not peer.lag:
                    return n * size / (time.perf_counter() - t0) / 1e6
                if time.perf_counter() > deadline:
                    raise TimeoutError("the restarted JetStream server did not catch up")
                await asyncio.sleep(0.01)  # polling cadence for the replica's state
        finally:
            await nc.close()

    try:
        cl.start()
        return asyncio.run(go())
    finally:
        cl.stop()
        shutil.rmtree(cl.servers[0].dir.parent, ignore_errors=True)


def bench_catchup(plan: StoragePlan, peers_: Peers, directory: str, log: Log) -> dict[str, Any]:
    from benchmarks import log_peers

    size = KIB
    before = load()
    runs: dict[str, list[float]] = {"default": [], "lifted": []}
    resident: list[float] = []
    memory: dict[str, list[float]] = {"default": [], "lifted": []}
    for label, peak in (("default", None), ("lifted", 10**12)):  # a trial: a whole catch-up
        got = netmesh_catchup_disk(directory, plan.catchup_bytes, size, peak)
        runs[label].append(got["mb_s"])
        if got["resident"] >= 0:
            resident.append(got["resident"])
        log(f"catch-up from disk ({label} budget): {got['mb_s']:.1f} MB/s")
        got = netmesh_catchup_disk(directory, plan.catchup_bytes, size, peak, persisted=False)
        memory[label].append(got["mb_s"])
        log(f"catch-up in memory ({label} budget): {got['mb_s']:.1f} MB/s")
    peers: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    try:
        peers["redis_resync"] = [log_peers.redis_catchup(plan.catchup_bytes // size, size)]
        log(f"catch-up redis: {peers['redis_resync'][0]:.1f} MB/s")
    except Unavailable as exc:
        errors["redis_resync"] = str(exc)
    except Exception as exc:  # a peer's failure is reported, not fatal
        errors["redis_resync"] = f"{type(exc).__name__}: {exc}"
    try:
        peers_.nats1()  # the same checks (nats-py, nats-server) and error text
        peers["jetstream_r3"] = [nats_catchup(directory, plan.catchup_bytes, size)]
        log(f"catch-up jetstream r3: {peers['jetstream_r3'][0]:.1f} MB/s")
    except Unavailable as exc:
        errors["jetstream_r3"] = str(exc)
    except Exception as exc:  # a peer's failure is reported, not fatal
        errors["jetstream_r3"] = f"{type(exc).__name__}: {exc}"
    note = "one trial each (a trial is the whole catch-up); fsync never on both nodes"
    if resident:
        note += f"; leader segments at most {max(resident):.1%} in the page cache at restart"
    if plan.quick:
        note += "; " + plan.note(_gib(plan.catchup_bytes), "1 GiB")
    labels = {
        "netmesh_memory": "netmesh itself, same catch-up, leader and replica in memory "
        "(no data_dir): what reading from disk costs",
        "redis_resync": "Redis replica started empty: full resync (diskless RDB) until "
        "its XLEN has all",
        "jetstream_r3": "JetStream R3 file store: a SIGKILLed server restarted behind (its "
        "peers' files out of the page cache) until the leader reports it current, lag 0",
    }
    figures = {}
    for key, label, what in (
        ("catchup_disk_mb_s", "default", "default budget"),
        ("catchup_disk_lifted_mb_s", "lifted", "budget lifted (nic_peak_bytes_per_s=1e12)"),
    ):
        fig = figure(
            "MB/s (payload, 10^6)",
            f"catch-up from disk: an empty replica {_gib(plan.catchup_bytes)} of 1 KiB events "
            f"behind a persisted leader (its segments out of the page cache), {what}",
            runs[label],
            {"netmesh_memory": memory[label], **peers},
            errors,
            peer_labels=labels,
            note=note,
        )
        fig["load_before"], fig["load_after"] = before, load()
        figures[key] = fig
    return {"figures": figures}


# --------------------------------------------------------------------------- run


def run(
    quick: bool,
    baseline: str | None = None,
    base_dir: str | None = None,
    rounds: int | None = None,
    log: Log = lambda _m: None,
    plan: StoragePlan | None = None,
    only: tuple[str, ...] = ("rss", "cold", "acked", "catchup"),
) -> dict[str, Any]:
    """Every storage figure in one run; the JSON-able results."""
    plan = plan or StoragePlan.make(quick, rounds)
    results: dict[str, Any] = {"schema": SCHEMA, "quick": plan.quick, "suite": "storage"}
    results.update(provenance(ROOT))
    import netmesh  # the package measured in this process (PYTHONPATH may pick another)

    package = os.path.dirname(os.path.realpath(netmesh.__file__))
    results["netmesh_package"] = package
    results["netmesh_commit"] = git_commit(package)
    results["plan"] = dataclasses.asdict(plan)
    results["baseline"] = baseline
    results["load_before"] = load()
    results["figures"], results["samples"], results["suite_seconds"] = {}, {}, {}
    t0 = time.perf_counter()
    directory = work_dir(base_dir, plan.disk_bytes())
    results["dir"] = directory
    results["disk_free_before"] = shutil.disk_usage(directory).free
    peers = Peers(directory)
    workers: dict[str, AckWorker] = {}
    errors: dict[str, str] = {}
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("rss", lambda: bench_rss(plan, peers, directory, log)),
        ("cold", lambda: bench_cold_read(plan, peers, directory, log)),
        ("acked", lambda: bench_acked(plan, peers, workers, errors, baseline, log)),
        ("catchup", lambda: bench_catchup(plan, peers, directory, log)),
    ]
    try:
        if "acked" in only:  # clusters and JetStream form while the first figures run
            workers, errors = start_ack_workers(plan, directory, baseline)
            peers.prestart_nats3()
        for name, job in jobs:
            if name not in only:
                continue
            t_suite = time.perf_counter()
            out = job()
            results["suite_seconds"][name] = round(time.perf_counter() - t_suite, 1)
            results["figures"].update(out.get("figures", {}))
            results["samples"].update(out.get("samples", {}))
    finally:
        for w in workers.values():
            w.close()
        peers.close()
        shutil.rmtree(directory, ignore_errors=True)
    results["load_after"] = load()
    results["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    """``netmesh bench storage [--quick] [--baseline PATH] [--json OUT] [--plot OUT.png]
    [--markdown OUT.md] [--dir DIR] [--trials N] [-v]``."""
    from rich.console import Console

    from benchmarks import bench
    from benchmarks.plots import plot_storage

    ap = argparse.ArgumentParser(
        prog="netmesh bench storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smaller runs, labelled QUICK (~90 s)")
    ap.add_argument(
        "--baseline",
        metavar="PATH",
        help="a netmesh checkout (e.g. a git worktree before a change) measured beside this "
        "one in the acked-write figures",
    )
    ap.add_argument("--dir", help="where the logs go (default: the temp dir; checked for space)")
    ap.add_argument("--trials", type=int, default=None, help="interleaved rounds (default 3)")
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    ap.add_argument("--plot", metavar="OUT.png", help="RSS vs log size and throughput (PNG)")
    ap.add_argument("--markdown", metavar="OUT.md", help="the table as Markdown")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress lines on stderr")
    args = ap.parse_args(argv)
    if args.plot and not bench.have_matplotlib():
        ap.error("--plot needs matplotlib: pip install 'netmesh[bench]' (nothing was run)")

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    try:
        results = run(args.quick, args.baseline, args.dir, args.trials, log)
    except Unavailable as exc:
        print(f"netmesh bench storage: {exc}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(bench.report(results))
    for line in bench.notes(results):
        console.print(line, markup=False, highlight=False)
    console.print(
        f"netmesh measured: {results['netmesh_package']} at {results['netmesh_commit']}; "
        f"baseline: {results['baseline']}",
        markup=False,
        highlight=False,
    )
    console.print(
        f"{results['date']} commit {results['commit']} | {results['cpu_model']} x"
        f"{results['cpu_count']} | {results['bench_seconds']} s | shared machine: "
        "compare ratios, not absolute figures",
        markup=False,
        highlight=False,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(bench.strict_json(results), fh, indent=2, allow_nan=False)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(bench.markdown(results))
    if args.plot:
        plot_storage(results, args.plot)
    return 0

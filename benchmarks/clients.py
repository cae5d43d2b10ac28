"""``netmesh bench clients``: publisher process -> subscriber process, next to Redis
Streams and NATS JetStream measured in the same run (issue 11 §6).

Every system gets the same shape: one publisher process and one subscriber process,
neither of them the server/supervisor, on this machine's loopback.

* netmesh: a 3-node cluster (factor 3, leader acks) serving clients by name; the
  publisher appends through a shm ring to the leader, the subscriber is fed through a
  shm ring by the leader's node.
* Redis Streams (redis-server + redis-py): XADD (pipelined per batch) / XREAD BLOCK.
* NATS JetStream (nats-server -js + nats-py): publish (acks awaited per batch) / a
  pull consumer fetching batches.

Figures: end-to-end latency (publish call -> delivered to the subscriber, same
CLOCK_MONOTONIC) p50/p99 at 10k events/s offered, and subscriber throughput at the
publisher's maximum rate with 64 B and 1 KiB payloads; min/median/max of interleaved
trials and netmesh/peer ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import spawn_worker, suite_main

STAMP = struct.Struct("<Qq")  # index, monotonic ns at publish


def _payload(i: int, size: int) -> bytes:
    head = STAMP.pack(i, time.monotonic_ns())
    return head + b"x" * max(0, size - len(head))


def _result(lat: list[int], t0: float | None) -> dict[str, Any]:
    """Latency samples (at most 20k, evenly spaced) and the receiving time."""
    return {
        "latencies_ns": lat[:: max(1, len(lat) // 20000)],
        "seconds": time.perf_counter() - (t0 or time.perf_counter()),
    }


def _pace(i: int, rate: float, t0: float) -> None:
    if rate > 0:
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


# -- workers -----------------------------------------------------------------------------
def pub_netmesh(a: dict[str, Any]) -> dict[str, Any]:
    import netmesh

    n, size, rate, batch = a["n"], a["size"], a["rate"], a["batch"]
    with netmesh.connect(a["name"]) as cl, cl.producer(a["channel"]) as p:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            k = min(batch, n - i)
            _pace(i, rate, t0)
            p.append_batch([_payload(i + j, size) for j in range(k)])
            i += k
        p.flush()
    return {"seconds": time.perf_counter() - t0}


def sub_netmesh(a: dict[str, Any]) -> dict[str, Any]:
    import netmesh

    n = a["n"]
    lat: list[int] = []
    with netmesh.connect(a["name"]) as cl:
        sub = cl.subscribe(a["channel"], from_seq="latest")
        print("ready", flush=True)
        t0 = None
        for got, ev in enumerate(sub, start=1):
            now = time.monotonic_ns()
            t0 = t0 or time.perf_counter()
            lat.append(now - STAMP.unpack_from(ev.payload)[1])
            if got == n:
                break
        sub.close()
    return {
        "latencies_ns": lat[:: max(1, len(lat) // 20000)],
        "seconds": time.perf_counter() - (t0 or 0),
    }


def pub_redis(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(a["url"])
    n, size, rate, batch = a["n"], a["size"], a["rate"], a["batch"]
    t0 = time.perf_counter()
    i = 0
    while i < n:
        k = min(batch, n - i)
        _pace(i, rate, t0)
        pipe = r.pipeline(transaction=False)
        for j in range(k):
            pipe.xadd("bench", {"p": _payload(i + j, size)})
        pipe.execute()
        i += k
    return {"seconds": time.perf_counter() - t0}


def sub_redis(a: dict[str, Any]) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(a["url"])
    n = a["n"]
    lat: list[int] = []
    last = "$"
    print("ready", flush=True)
    t0 = None
    while len(lat) < n:
        got = r.xread({"bench": last}, count=1000, block=5000)
        if not got:
            break
        for entry_id, fields in got[0][1]:
            now = time.monotonic_ns()
            t0 = t0 or time.perf_counter()
            lat.append(now - STAMP.unpack_from(fields[b"p"])[1])
            last = entry_id
    return {
        "latencies_ns": lat[:: max(1, len(lat) // 20000)],
        "seconds": time.perf_counter() - (t0 or 0),
    }


def pub_nats(a: dict[str, Any]) -> dict[str, Any]:
    import nats

    async def go() -> float:
        nc = await nats.connect(a["url"])
        js = nc.jetstream()
        n, size, rate, batch = a["n"], a["size"], a["rate"], a["batch"]
        t0 = time.perf_counter()
        i = 0
        while i < n:
            k = min(batch, n - i)
            if rate > 0:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            acks = [js.publish_async("bench.x", _payload(i + j, size)) for j in range(k)]
            await asyncio.gather(*acks)
            i += k
        await nc.close()
        return time.perf_counter() - t0

    return {"seconds": asyncio.run(go())}


def sub_nats(a: dict[str, Any]) -> dict[str, Any]:
    import nats

    async def go() -> dict[str, Any]:
        nc = await nats.connect(a["url"])
        js = nc.jetstream()
        psub = await js.pull_subscribe("bench.x", durable=None, stream="BENCH")
        print("ready", flush=True)
        n = a["n"]
        lat: list[int] = []
        t0 = None
        while len(lat) < n:
            try:
                msgs = await psub.fetch(1000, timeout=5)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                now = time.monotonic_ns()
                t0 = t0 or time.perf_counter()
                lat.append(now - STAMP.unpack_from(m.data)[1])
            await asyncio.gather(*(m.ack() for m in msgs))
        await nc.close()
        return {
            "latencies_ns": lat[:: max(1, len(lat) // 20000)],
            "seconds": time.perf_counter() - (t0 or 0),
        }

    return asyncio.run(go())


WORKERS = {
    ("netmesh", "pub"): pub_netmesh,
    ("netmesh", "sub"): sub_netmesh,
    ("redis", "pub"): pub_redis,
    ("redis", "sub"): sub_redis,
    ("nats", "pub"): pub_nats,
    ("nats", "sub"): sub_nats,
}


def worker_main(system: str, role: str, spec: str) -> int:
    print(json.dumps(WORKERS[(system, role)](json.loads(spec))), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------
def _spawn(system: str, role: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    return spawn_worker("clients", [system, role, json.dumps(spec)])


def _pair(system: str, spec: dict[str, Any]) -> dict[str, Any]:
    sub = _spawn(system, "sub", spec)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{system} subscriber failed: {sub.stderr.read() if sub.stderr else ''}")
    pub = _spawn(system, "pub", spec)
    _, perr = pub.communicate(timeout=600)
    sout, serr = sub.communicate(timeout=600)
    if pub.returncode or sub.returncode:
        raise RuntimeError(f"{system}: {perr[-500:]} {serr[-500:]}")
    got = json.loads(sout.strip().splitlines()[-1])
    lat = sorted(got["latencies_ns"])
    received = spec["n"]
    return {
        "p50_ms": lat[len(lat) // 2] / 1e6 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] / 1e6 if lat else None,
        "events_per_s": received / max(got["seconds"], 1e-9),
    }


def run(quick: bool = True, trials: int = 3) -> dict[str, Any]:
    from netmesh import Cluster, ReplicationConfig
    from netmesh.testing.servers import NatsServer, RedisServer

    out: dict[str, Any] = {"trials": trials, "load_before": os.getloadavg()}
    n_lat = 20_000 if quick else 100_000
    n_tput = 100_000 if quick else 500_000
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("NETMESH_RUN_DIR", os.path.join(tmp, "run"))
        redis_srv = RedisServer(os.path.join(tmp, "redis"), appendonly=False)
        nats_srv = NatsServer(os.path.join(tmp, "nats"))
        redis_srv.start()
        nats_srv.start()
        try:
            _nats_stream(nats_srv.url)
            with Cluster(nodes=3, name=f"bench-{os.getpid()}") as c:
                c.open_channel("bench", ReplicationConfig(factor=3))
                c.wait_for_leader("bench")
                base = {"name": c.name, "channel": "bench", "url": ""}
                cases = {
                    "latency_10k": {"n": n_lat, "size": 64, "rate": 10_000, "batch": 1},
                    "tput_64": {"n": n_tput, "size": 64, "rate": 0, "batch": 256},
                    "tput_1k": {"n": n_tput // 4, "size": 1024, "rate": 0, "batch": 256},
                }
                urls = {"netmesh": "", "redis": redis_srv.url, "nats": nats_srv.url}
                for case, spec in cases.items():
                    res: dict[str, list[dict[str, Any]]] = {s: [] for s in urls}
                    for _ in range(trials):  # interleaved: netmesh, redis, nats, netmesh...
                        for system, url in urls.items():
                            if system == "redis":
                                redis_srv.command("DEL", "bench")
                            res[system].append(_pair(system, {**base, **spec, "url": url}))
                    out[case] = {s: _summary(r) for s, r in res.items()}
        finally:
            redis_srv.stop()
            nats_srv.stop()
    out["load_after"] = os.getloadavg()
    return out


def _nats_stream(url: str) -> None:
    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name="BENCH", subjects=["bench.>"])
        await nc.close()

    asyncio.run(go())


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if r[key] is not None]
        if vals:
            out[key] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return out


def report(res: dict[str, Any]) -> str:
    lines = ["case          metric         netmesh      redis       nats   vs redis  vs nats"]
    for case in ("latency_10k", "tput_64", "tput_1k"):
        for metric in ("p50_ms", "p99_ms") if case.startswith("lat") else ("events_per_s",):
            vals = {
                s: res[case][s].get(metric, {}).get("median") for s in ("netmesh", "redis", "nats")
            }
            nm = vals["netmesh"]

            def ratio(peer: float | None, nm: float | None = nm, m: str = metric) -> str:
                if not peer or not nm:
                    return "-"
                return f"{(peer / nm if m.endswith('_ms') else nm / peer):.2f}x"

            lines.append(
                f"{case:<13} {metric:<12} {nm or 0:>9.3f} {vals['redis'] or 0:>10.3f}"
                f" {vals['nats'] or 0:>10.3f} {ratio(vals['redis']):>9} {ratio(vals['nats']):>8}"
            )
    lines.append("ratios: > 1 means netmesh is better (lower latency, higher throughput)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(
        "netmesh bench clients", __doc__, run, report, argv, "smaller runs", quick_trials=3
    )


if __name__ == "__main__":
    sys.exit(main())

"""``netmesh bench bus``: the EventBus on every adapter, next to the reference's own bus
on the same servers in the same run (issue 14 §5).

Per adapter (memory, netmesh cluster, Redis Streams, NATS JetStream R1 and R3): events/s
that ``emit_raw`` accepts, events/s until the adapter acknowledged them all (``flush``),
and end-to-end latency emit -> visible to a ``subscribe`` iterator (p50 of 21). The
reference's bus (the net-mesh wheel's ``net.Net`` with its Redis adapter; the wheel is
built without JetStream) ingests and stores the same ~64 B events on the same Redis.
Ratios: netmesh / reference (> 1: netmesh faster).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import suite_main

EVENT = {"user": "ann", "kind": "buy", "n": 12345, "pad": "x" * 16}  # ~64 B of JSON
RAW = json.dumps(EVENT, separators=(",", ":"))


def run_bus(adapter: Any, n: int) -> dict[str, float]:
    from netmesh.bus import BatchConfig, EventBus

    with EventBus(shards=2, ring_capacity=1 << 20, batch=BatchConfig(), adapter=adapter) as bus:
        t0 = time.perf_counter()
        for _ in range(n):
            bus.emit_raw(RAW)
        t1 = time.perf_counter()
        bus.flush(timeout=300)
        t2 = time.perf_counter()
        cur = None
        while True:
            r = bus.poll(10_000, cur)
            cur = r.next_cursor
            if not r.has_more:
                break
        lat = []
        stream = bus.subscribe(cursor=cur, poll_interval=0.001, max_backoff=0.001)
        for _ in range(21):
            a = time.perf_counter()
            bus.emit_raw(RAW)
            next(stream)
            lat.append(time.perf_counter() - a)
    return {
        "emit_eps": n / (t1 - t0),
        "stored_eps": n / (t2 - t0),
        "e2e_p50_ms": statistics.median(lat) * 1e3,
    }


def run_reference(url: str, n: int) -> dict[str, float] | None:
    """The net-mesh wheel's bus on Redis: ingest/s and until every event is in Redis."""
    try:
        import net  # the reference wheel (peers extra)
        import redis
    except ImportError:
        return None
    prefix = f"ref{os.getpid()}{time.monotonic_ns() % 10**6}"
    bus = net.Net(num_shards=2, redis_url=url, redis_prefix=prefix)
    r = redis.Redis.from_url(url)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            bus.ingest_raw(RAW)
        t1 = time.perf_counter()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            keys = [k for k in r.keys(f"{prefix}:shard:*") if not k.endswith(b":dedup")]
            if sum(r.xlen(k) for k in keys) >= n:
                break
            time.sleep(0.005)
        t2 = time.perf_counter()
    finally:
        bus.shutdown()
        r.close()
    return {"emit_eps": n / (t1 - t0), "stored_eps": n / (t2 - t0)}


def run(quick: bool, trials: int) -> dict[str, Any]:
    from netmesh import Cluster
    from netmesh.bus import MemoryAdapter
    from netmesh.bus.adapters.jetstream import JetStreamAdapter
    from netmesh.bus.adapters.netmesh import NetmeshAdapter
    from netmesh.bus.adapters.redis_streams import RedisStreamsAdapter
    from netmesh.testing.servers import NatsCluster, NatsServer, RedisServer

    n = 20_000 if quick else 100_000
    out: dict[str, Any] = {"events": n, "trials": trials, "load_before": os.getloadavg()}
    series: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("NETMESH_RUN_DIR", os.path.join(tmp, "run"))
        redis_srv = RedisServer(os.path.join(tmp, "r"), appendonly=False)
        nats_srv = NatsServer(os.path.join(tmp, "n"))
        nats_c = NatsCluster(os.path.join(tmp, "c"))
        for s in (redis_srv, nats_srv, nats_c):
            s.start()
        try:
            with Cluster(nodes=3, name=f"bus-bench-{os.getpid()}") as c:
                runs: dict[str, Callable[[int], dict[str, float] | None]] = {
                    "memory": lambda k: run_bus(MemoryAdapter(), k),
                    "netmesh": lambda k: run_bus(
                        NetmeshAdapter(c.name or "", prefix=f"b{time.monotonic_ns()}"), k
                    ),
                    "redis": lambda k: run_bus(
                        RedisStreamsAdapter(redis_srv.url, prefix=f"b{time.monotonic_ns()}"), k
                    ),
                    "reference_redis": lambda k: run_reference(redis_srv.url, k),
                    "jetstream_r1": lambda k: run_bus(
                        JetStreamAdapter(nats_srv.url, prefix=f"b{time.monotonic_ns()}"), k // 2
                    ),
                    "jetstream_r3": lambda k: run_bus(
                        JetStreamAdapter(nats_c.urls, prefix=f"b{time.monotonic_ns()}", replicas=3),
                        k // 4,
                    ),
                }
                for _ in range(trials):  # interleaved
                    for name, fn in runs.items():
                        res = fn(n)
                        if res is not None:
                            series.setdefault(name, []).append(res)
        finally:
            for s in (redis_srv, nats_srv, nats_c):
                s.stop()
    out["figures"] = {
        name: {
            k: {
                "min": min(r[k] for r in rows),
                "median": statistics.median(r[k] for r in rows),
                "max": max(r[k] for r in rows),
            }
            for k in rows[0]
        }
        for name, rows in series.items()
    }
    ref = out["figures"].get("reference_redis")
    if ref:
        ours = out["figures"]["redis"]
        out["ratios_vs_reference_redis"] = {
            k: ours[k]["median"] / ref[k]["median"] for k in ("emit_eps", "stored_eps")
        }
    out["load_after"] = os.getloadavg()
    return out


def report(res: dict[str, Any]) -> str:
    lines = [f"{'adapter':<16} {'emit/s':>10} {'stored/s':>10} {'e2e p50 ms':>11}"]
    for name, f in res["figures"].items():
        p50 = f.get("e2e_p50_ms", {}).get("median")
        lines.append(
            f"{name:<16} {f['emit_eps']['median']:>10,.0f} {f['stored_eps']['median']:>10,.0f}"
            f" {'-' if p50 is None else f'{p50:.2f}':>11}"
        )
    r = res.get("ratios_vs_reference_redis")
    if r:
        lines.append(
            f"Redis adapter / reference bus on the same Redis: emit {r['emit_eps']:.2f}x,"
            f" stored {r['stored_eps']:.2f}x"
        )
    else:
        lines.append("reference bus: not installed (pip install 'netmesh[peers]')")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(
        "netmesh bench bus",
        __doc__,
        run,
        report,
        argv,
        "20k events per trial, 1 trial",
        quick_trials=1,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The ``netmesh bench`` suites: each headline figure beside its peers, same run.

Every suite returns ``{"figures": {name: figure}, "samples": {...}}`` where a figure is
:func:`benchmarks.trials.figure` (netmesh's min/median/max, each peer's, ratios), with
the machine's load before and after it. Trials are interleaved rounds (netmesh, peer,
peer, ..., netmesh, ...). 64 B payloads unless named; the producer is this process;
each node is its own process; node traffic is encrypted UDP on loopback.

``Plan`` holds the sizes: ``Plan(quick=False)`` is the full run (sustained phases of
10 s, 20 failover trials, a catch-up of 1 GiB); ``Plan(quick=True)`` fits
``netmesh bench all --quick`` in about 90 s and every figure it changes says so in its
``note``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from benchmarks import ipc_peers, log_peers, wheels
from benchmarks.log_peers import Servers
from benchmarks.trials import Trial, Unavailable, figure, interleave, load, percentile, summary
from netmesh.cluster.cluster import Cluster
from netmesh.cluster.producer_worker import produce
from netmesh.config import ReplicationConfig
from netmesh.errors import NetmeshError
from netmesh.replication.roles import ReplicaRole
from netmesh.replication.runtime import probe_payload

HB = 150
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Workload sizes; ``quick`` shrinks them (figures say so)."""

    quick: bool = False
    rounds: int = 3
    ingest_single: int = 200_000
    ingest_batched: int = 1_600_000
    ingest_1k: int = 400_000
    inproc: int = 1_000_000
    sustained_s: float = 10.0
    quorum_s: float = 5.0
    overhead_n: int = 100_000
    overhead_rounds: int = 7
    failover_trials: int = 20
    failover_peer_trials: int = 5
    catchup_bytes: int = 1 << 30
    latency_s: float = 5.0

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls()
        return cls(
            quick=True,
            ingest_single=30_000,
            ingest_batched=192_000,
            ingest_1k=48_000,
            inproc=150_000,
            sustained_s=1.0,
            quorum_s=0.7,
            overhead_n=10_000,
            overhead_rounds=3,
            failover_trials=3,
            failover_peer_trials=1,
            catchup_bytes=96 << 20,
            latency_s=1.0,
        )

    def label(self, what: str, full: str) -> str:
        """A note for figures that --quick shrinks."""
        return f"QUICK: {what} (full run: {full})" if self.quick else ""


def _timed_appends(c: Cluster, node: int, channel: str, n: int, size: int, batch: int) -> float:
    """Events/s for ``n`` events through a fresh producer ring, until acknowledged."""
    with c.producer(node, channel) as p:
        return n / produce(p, n, batch, size, rate=0)[1]


# --------------------------------------------------------------------------- ingest


def bench_ingest(plan: Plan, log: Log) -> dict[str, Any]:
    """Producer process -> node ring, unreplicated, vs the IPC peers (benchmarks.ipc_peers)."""
    figures: dict[str, Any] = {}
    labels = {
        "pyring": "pure-Python shm ring + semaphores",
        "pipe": "multiprocessing.Pipe",
        "zmq": "pyzmq PUSH/PULL ipc",
    }
    full = Plan()
    cases = [
        (
            "ingest_single_eps",
            64,
            1,
            plan.ingest_single,
            full.ingest_single,
            "one append per event, 64 B",
        ),
        (
            "ingest_batched_eps",
            64,
            64,
            plan.ingest_batched,
            full.ingest_batched,
            "append_batch(64), 64 B",
        ),
        (
            "ingest_batched_1k_eps",
            1024,
            64,
            plan.ingest_1k,
            full.ingest_1k,
            "append_batch(64), 1 KiB",
        ),
    ]
    with Cluster(nodes=1) as c:
        # bounded like a production channel: the figure is ingest speed, not how the
        # node's allocator copes with gigabytes of retained payloads
        c.open_channel("bench/ingest", retention_max_bytes=256 << 20)
        _timed_appends(c, 0, "bench/ingest", plan.ingest_single // 10, 64, 1)  # warm-up
        for key, size, batch, n, n_full, what in cases:
            log(f"ingest: {key}")

            def nm(n: int = n, size: int = size, batch: int = batch) -> float:
                return _timed_appends(c, 0, "bench/ingest", n, size, batch)

            peers: dict[str, Trial] = {
                "pyring": functools.partial(ipc_peers.ring_rate, n, size, batch),
                "pipe": functools.partial(ipc_peers.pipe_rate, n, size, batch),
                "zmq": functools.partial(ipc_peers.zmq_rate, n, size, batch),
            }
            before = load()
            xs, ps, errs = interleave(nm, peers, plan.rounds, log)
            fig = figure(
                "events/s",
                f"ingest, producer process -> node, {what}, until acknowledged",
                xs,
                ps,
                errs,
                peer_labels={
                    k: v + ("" if batch == 1 else f" x{batch} per call") for k, v in labels.items()
                },
                note=plan.label(f"{n} events per trial", f"{n_full}"),
            )
            fig["load_before"], fig["load_after"] = before, load()
            fig["payload_bytes"] = size
            figures[key] = fig
    return {"figures": figures}


# --------------------------------------------------------------------------- replicated


def _burst_bytes(cfg: ReplicationConfig) -> float | None:
    """The replication budget's burst (one second of budget) for ``cfg``; None when the
    budget is unlimited (a non-positive or missing NIC peak)."""
    peak = getattr(cfg, "nic_peak_bytes_per_s", None)
    if isinstance(peak, bool) or not isinstance(peak, int | float) or peak <= 0:
        return None  # unlimited, or resolved by the node ("auto": the OS's link speed)
    return float(cfg.replication_budget_fraction * peak)


#: events the slowest replica may lag behind a paced producer (64 MB at 64 B)
LAG_CAP = 1_000_000


def _sustained(
    c: Cluster, lead: int, others: list[int], ch: str, seconds: float
) -> tuple[float, int]:
    """Append 64-event batches for ``seconds``, then wait until every replica holds
    them all. Returns (events/s over the whole span, events).

    The producer is paced by the slowest replica: it pauses while that replica is
    more than :data:`LAG_CAP` events behind what it sent (checked every 0.05 s).
    Ingest into the leader's ring runs ~9x faster than replication, and in leader
    mode nothing else holds the producer back: unpaced, a 10 s trial left ~100 M
    events (6.4 GB) in each in-memory node and the next round exhausted memory. The
    figure stays "until every replica holds all"; pacing only bounds the backlog."""
    chunk = [b"x" * 64] * 64
    with c.producer(lead, ch) as p:
        start = p.flush(timeout=30) + 1 if p.sent else c.next_seq(lead, ch)
        t0 = time.perf_counter()
        n = 0
        look = t0
        while (now := time.perf_counter()) - t0 < seconds:
            if now - look > 0.05:
                look = now
                while start + n - min(c.next_seq(o, ch) for o in others) > LAG_CAP:
                    if time.perf_counter() - t0 >= seconds:
                        break
                    time.sleep(0.002)  # pacing a producer, not synchronising a test
            for _ in range(64):  # check the clock every 4096 events
                p.append_batch(chunk)
            n += 4096
        last = p.flush(timeout=120)
        total = last + 1
        for o in others:
            c.wait_until(
                functools.partial(_holds, c, o, ch, total),
                timeout=300,
                interval=0.001,
                message="replica holds every event",
            )
        assert total - start == n, (total, start, n)
        return n / (time.perf_counter() - t0), n


def _holds(c: Cluster, node: int, ch: str, total: int) -> bool:
    return c.next_seq(node, ch) >= total


def bench_replicated(plan: Plan, servers: Servers, log: Log) -> dict[str, Any]:
    """Factor 2, default budget, sustained, until the replica holds all; vs Redis +
    async replica (redis-py, redis-benchmark) and JetStream R1/R3 acked."""
    cfg = ReplicationConfig(factor=2, heartbeat_ms=HB)
    burst = _burst_bytes(cfg)
    moved: list[int] = []
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("bench/r", cfg)
        lead = c.wait_for_leader("bench/r")
        other = [1 - lead]

        def nm() -> float:
            rate, n = _sustained(c, lead, other, "bench/r", plan.sustained_s)
            moved.append(n)
            return rate

        rb = log_peers.RedisBenchmark(servers, plan.sustained_s)
        peers: dict[str, Trial] = {
            "redis_py": lambda: log_peers.redis_sustained(servers, plan.sustained_s),
            "redis_benchmark": rb,
            "jetstream_r1": lambda: log_peers.nats_sustained(servers, 1, plan.sustained_s),
            "jetstream_r3": lambda: log_peers.nats_sustained(servers, 3, plan.sustained_s),
        }
        before = load()
        xs, ps, errs = interleave(nm, peers, plan.rounds, log)
    payload_bytes = max(moved) * 64 if moved else 0
    inside = burst is not None and payload_bytes <= burst
    notes = [f"{plan.sustained_s:g} s sustained per trial"]
    if plan.quick:
        notes.insert(0, "QUICK: shorter than the 10 s sustained figure")
    if inside and burst is not None:
        notes.append(
            f"INSIDE the replication budget's burst ({burst / 1e6:.1f} MB): not a sustained figure"
        )
    fig = figure(
        "events/s",
        "replicated f2 (default budget), until every replica holds all, 64 B",
        xs,
        ps,
        errs,
        peer_labels={
            "redis_py": "Redis XADD x500 pipelined + async replica (redis-py), until replica XLEN",
            "redis_benchmark": "same, redis-benchmark C client -c1 -P500 (server bound)",
            "jetstream_r1": "NATS JetStream R1, publish_async, until all acked",
            "jetstream_r3": "NATS JetStream R3 (3-node cluster), publish_async, until all acked",
        },
        note="; ".join(notes),
    )
    fig.update(
        load_before=before,
        load_after=load(),
        budget_burst_bytes=burst,
        payload_bytes_per_trial=payload_bytes,
        inside_budget_burst=inside,
    )
    return {"figures": {"replicated_eps": fig}}


def bench_quorum(plan: Plan, servers: Servers, log: Log) -> dict[str, Any]:
    """Factor 3, ack="quorum", one acknowledgement (flush) per 500 events; vs Redis
    XADD x500 + WAIT 1 and JetStream R3, 500 publishes then their acks."""
    every = log_peers.BATCH
    lat: dict[str, list[float]] = {"netmesh": [], "redis_wait1": [], "jetstream_r3": []}
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("bench/q", ReplicationConfig(factor=3, heartbeat_ms=HB, ack="quorum"))
        lead = c.wait_for_leader("bench/q")
        chunk = [b"x" * 64] * every

        def nm() -> float:
            with c.producer(lead, "bench/q") as p:
                n = 0
                t0 = time.perf_counter()
                while (t1 := time.perf_counter()) - t0 < plan.quorum_s:
                    p.append_batch(chunk)
                    p.flush(timeout=30)
                    lat["netmesh"].append((time.perf_counter() - t1) * 1e3)
                    n += every
                return n / (time.perf_counter() - t0)

        peers: dict[str, Trial] = {
            "redis_wait1": lambda: log_peers.redis_wait_every(
                servers, plan.quorum_s, lat["redis_wait1"], every
            ),
            "jetstream_r3": lambda: log_peers.nats_acked_every(
                servers, 3, plan.quorum_s, lat["jetstream_r3"], every
            ),
        }
        before = load()
        xs, ps, errs = interleave(nm, peers, plan.rounds, log)
    fig = figure(
        "events/s",
        f"quorum f3 (memory), an acknowledgement per {every} events, 64 B",
        xs,
        ps,
        errs,
        peer_labels={
            "redis_wait1": f"Redis XADD x{every} + WAIT 1 per batch (redis-py)",
            "jetstream_r3": f"NATS JetStream R3, {every} publish_async then their acks",
        },
        note=plan.label(f"{plan.quorum_s:g} s per trial", "5 s"),
    )
    fig["load_before"], fig["load_after"] = before, load()
    return {
        "figures": {"replicated_quorum_eps": fig},
        "samples": {"ack_latency_ms_per_500": {k: _thin(v) for k, v in lat.items()}},
    }


def _thin(xs: list[float], keep: int = 2000) -> list[float]:
    """At most ``keep`` samples, evenly picked from the sorted list (the CDF's shape)."""
    ys = sorted(xs)
    if len(ys) <= keep:
        return [round(y, 4) for y in ys]
    step = (len(ys) - 1) / (keep - 1)
    return [round(ys[round(i * step)], 4) for i in range(keep)]


# --------------------------------------------------------------------------- in-process


def bench_inprocess(plan: Plan, log: Log) -> dict[str, Any]:
    """netmesh ``RedexFile.append`` in memory vs the net-mesh wheels, same loop."""
    figures: dict[str, Any] = {}
    others = {p: wheels.wheel_version(p) for p in wheels.wheel_pythons()}
    for key, batch in (("inproc_append_eps", 1), ("inproc_append_batch_eps", 64)):
        n = plan.inproc if batch == 1 else plan.inproc * 4
        peers: dict[str, Trial] = {}
        labels: dict[str, str] = {}
        try:
            import importlib.metadata as md

            here = md.version("net-mesh")
            peers[f"net_mesh_{here}"] = functools.partial(wheels.wheel_inprocess, n, 64, batch)
            labels[f"net_mesh_{here}"] = f"net-mesh {here} wheel (Rust), this process"
        except Exception:
            pass
        for py, v in others.items():
            if v:
                peers[f"net_mesh_{v}"] = wheels.wheel_subprocess(py, n, 64, batch)
                labels[f"net_mesh_{v}"] = f"net-mesh {v} wheel (Rust), own interpreter"
        log(f"inprocess: {key}")
        before = load()
        xs, ps, errs = interleave(
            functools.partial(wheels.netmesh_rate, n, 64, batch), peers, plan.rounds, log
        )
        if not peers:
            errs["net_mesh"] = "no net-mesh wheel installed (pip install net-mesh==0.24.0)"
        fig = figure(
            "events/s",
            f"in-process {'append' if batch == 1 else 'append_batch(64)'}, memory, 64 B",
            xs,
            ps,
            errs,
            peer_labels=labels,
            note=plan.label(f"{n} events per trial", f"{Plan().inproc * (n // plan.inproc)}"),
        )
        fig["load_before"], fig["load_after"] = before, load()
        figures[key] = fig
    return {"figures": figures}


# --------------------------------------------------------------------------- overhead


def bench_overhead(plan: Plan, servers: Servers, log: Log) -> dict[str, Any]:
    """The seed's method, unpinned: time of N single appends acknowledged by the leader
    on a replicated (f2) channel / on an unreplicated one, same cluster, interleaved.
    ``pinned`` beside it: the producer alone on CPU 0, the nodes on the others (it
    measures what the producer sees, not what replication costs the machine). Peer:
    the same ratio for Redis (primary with an async replica / standalone, XADDs
    acknowledged by the primary), a round after each netmesh round."""
    peer: list[float] = []
    errors: dict[str, str] = {}

    def redis_round() -> None:
        if "redis_async_replica" in errors:
            return
        try:
            peer.append(log_peers.redis_overhead_round(servers, plan.overhead_n))
        except Unavailable as exc:
            errors["redis_async_replica"] = str(exc)
        except Exception as exc:  # a peer's failure is reported, not fatal
            errors["redis_async_replica"] = f"{type(exc).__name__}: {exc}"

    before = load()
    unpinned = overhead_ratios(
        plan.overhead_n, plan.overhead_rounds, None, None, log, between=redis_round
    )
    cpus = sorted(os.sched_getaffinity(0))
    pinned = None
    if len(cpus) > 1:
        pinned = overhead_ratios(plan.overhead_n, plan.overhead_rounds, cpus[:1], cpus[1:], log)
    fig = figure(
        "ratio (time replicated / unreplicated; lower is better, 1.0 = free)",
        "replication overhead, N single appends acked by the leader, f2 vs none, unpinned",
        unpinned["trials"],
        {"redis_async_replica": peer} if peer else {},
        errors,
        lower_is_better=True,
        peer_labels={
            "redis_async_replica": "Redis: XADD x500 pipelined acked by a primary with an "
            "async replica / by a standalone server (redis-py)"
        },
        note="headline: unpinned (the seed's definition); 'pinned' = producer pinned "
        "apart from the nodes, labelled, beside it"
        + ("; QUICK: fewer appends per trial" if plan.quick else ""),
    )
    fig["netmesh"]["ratio_of_medians"] = unpinned["ratio_of_medians"]
    fig["pinned"] = pinned
    fig["load_before"], fig["load_after"] = before, load()
    return {"figures": {"replication_overhead_ratio": fig}}


def overhead_ratios(
    n: int,
    rounds: int,
    client: list[int] | None,
    nodes: list[int] | None,
    log: Log,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Summary of per-round ratios (replicated / plain time) plus ``ratio_of_medians``;
    ``between`` runs after each round (a peer's round, interleaved)."""
    before = os.sched_getaffinity(0)
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("bench/plain")
        c.open_channel(
            "bench/repl", ReplicationConfig(factor=2, heartbeat_ms=500, leader_pinned=c.node_ids[0])
        )
        c.wait_until(lambda: c.leader("bench/repl") == 0, timeout=10, message="pinned leader")
        try:
            if client is not None and nodes is not None:
                os.sched_setaffinity(0, client)
                for i in range(c.size):
                    for thread in psutil.Process(c.info[i]["pid"]).threads():
                        os.sched_setaffinity(thread.id, nodes)
            _timed_appends(c, 0, "bench/plain", max(1000, n // 10), 64, 1)  # warm-up
            _timed_appends(c, 0, "bench/repl", max(1000, n // 10), 64, 1)
            plain, repl = [], []
            for _ in range(rounds):  # interleaved so machine noise hits both alike
                plain.append(n / _timed_appends(c, 0, "bench/plain", n, 64, 1))
                repl.append(n / _timed_appends(c, 0, "bench/repl", n, 64, 1))
                if between is not None:
                    between()
        finally:
            os.sched_setaffinity(0, before)
    ratios = [r / p for r, p in zip(repl, plain, strict=True)]
    s = summary(ratios)
    s["ratio_of_medians"] = summary(repl)["median"] / summary(plain)["median"]
    log(f"overhead ({'pinned' if client else 'unpinned'}): {s['ratio_of_medians']:.3f}")
    return s


# --------------------------------------------------------------------------- failover


def bench_failover(plan: Plan, log: Log) -> dict[str, Any]:
    """Write unavailability: a producer appends (16 events, flush) in a loop to the
    leader of a factor-3 channel; the leader is SIGKILLed; the producer re-targets via
    ``Cluster.wait_for_leader`` and retries until an append is acknowledged by the new
    leader. Sample = SIGKILL -> that acknowledgement. hb 150 ms."""
    samples: list[float] = []
    timelines: list[list[tuple[float, int]]] = []
    chunk = [b"f" * 64] * 16
    nats = log_peers.NatsFailover()
    peer: list[float] = []
    errors: dict[str, str] = {}
    before = load()
    with contextlib.closing(nats), Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("bench/f", ReplicationConfig(factor=3, heartbeat_ms=HB))
        for trial in range(plan.failover_trials):
            old = c.wait_for_leader("bench/f")
            acks: list[tuple[float, int]] = []
            acked = 0
            t_start = time.perf_counter()
            with c.producer(old, "bench/f") as p:
                while time.perf_counter() - t_start < 0.3:
                    p.append_batch(chunk)
                    p.flush()
                    acked += len(chunk)
                    acks.append((time.perf_counter() - t_start, acked))
            t_kill = time.perf_counter()
            c.kill(old)
            t_ack = _first_ack(c, "bench/f", chunk, old)
            samples.append((t_ack - t_kill) * 1e3)
            acked += len(chunk)
            acks.append((t_ack - t_start, acked))
            lead = c.wait_for_leader("bench/f")
            with c.producer(lead, "bench/f") as p:
                while time.perf_counter() - t_ack < 0.3:
                    p.append_batch(chunk)
                    p.flush()
                    acked += len(chunk)
                    acks.append((time.perf_counter() - t_start, acked))
            timelines.append([(round(t - (t_kill - t_start), 4), a) for t, a in acks])
            log(f"failover trial {trial + 1}: {samples[-1]:.0f} ms")
            c.restart(old)
            c.wait_until(
                functools.partial(_is_replica, c, old, "bench/f"),
                timeout=15,
                message="restarted node back as replica",
            )
            if trial < plan.failover_peer_trials and "jetstream_r3" not in errors:
                try:  # interleaved: a JetStream trial after a netmesh one
                    peer.append(nats())
                    log(f"failover jetstream_r3 trial {len(peer)}: {peer[-1]:.0f} ms")
                except Unavailable as exc:
                    errors["jetstream_r3"] = str(exc)
                except Exception as exc:  # a peer's failure is reported, not fatal
                    errors["jetstream_r3"] = f"{type(exc).__name__}: {exc}"
    notes = [
        f"{len(samples)} netmesh trials" + (" (QUICK; full run: 20)" if plan.quick else ""),
        f"{len(peer)} JetStream trials (each 5-10 s)",
        "p50/p90/max only: no p99 from this many samples",
    ]
    fig = figure(
        "ms",
        "write unavailability: SIGKILL leader -> producer's append acked by the new leader "
        "(f3, hb 150 ms, re-target via Cluster.wait_for_leader)",
        samples,
        {"jetstream_r3": peer} if peer else {},
        errors,
        lower_is_better=True,
        peer_labels={
            "jetstream_r3": "NATS JetStream R3: SIGKILL the stream leader's server -> a "
            "js.publish acked (250 ms ack timeout, client reconnects by itself)"
        },
        note="; ".join(notes),
    )
    fig["netmesh"].update(
        p50=percentile(samples, 50), p90=percentile(samples, 90), samples=len(samples)
    )
    for p in fig["peers"].values():
        p.update(p50=percentile(peer, 50), p90=percentile(peer, 90), samples=len(peer))
    fig["load_before"], fig["load_after"] = before, load()
    median_trial = sorted(range(len(samples)), key=lambda i: samples[i])[len(samples) // 2]
    return {
        "figures": {"failover_unavailability_ms": fig},
        "samples": {
            "failover_ms": [round(x, 2) for x in samples],
            "failover_ms_jetstream_r3": [round(x, 2) for x in peer],
            "failover_timeline": {
                "t0": "SIGKILL at t=0 s",
                "trial": median_trial,
                "acks": timelines[median_trial],
            },
        },
    }


def _is_replica(c: Cluster, node: int, ch: str) -> bool:
    return c.role(node, ch) is ReplicaRole.REPLICA


def _first_ack(c: Cluster, ch: str, chunk: list[bytes], old: int) -> float:
    """Re-target and retry until an append is acknowledged; its perf_counter time."""
    deadline = time.monotonic() + 30
    while True:
        try:
            lead = c.wait_for_leader(ch, timeout=max(0.1, deadline - time.monotonic()))
            with c.producer(lead, ch) as p:
                p.append_batch(chunk)
                p.flush(timeout=2)
                return time.perf_counter()
        except (NetmeshError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            # no pause: wait_for_leader polls with its own cadence


# --------------------------------------------------------------------------- catch-up


def bench_catchup(plan: Plan, log: Log) -> dict[str, Any]:
    """An empty replica restarted ``catchup_bytes`` of 1 KiB events behind: payload
    MB/s until it holds them all, with the default budget and unbudgeted."""
    size = 1024
    n = plan.catchup_bytes // size
    default = ReplicationConfig(factor=2, heartbeat_ms=HB)
    burst = _burst_bytes(default)
    rss: list[tuple[int, int]] = []
    budgeted = _catchup(n, size, None, rss)
    log(f"catch-up default budget: {budgeted:.1f} MB/s")
    raw = _catchup(n, size, 10**12)
    log(f"catch-up unbudgeted: {raw:.1f} MB/s")
    peers: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    try:
        peers["redis_resync"] = [log_peers.redis_catchup(n, size)]
        log(f"catch-up redis full resync: {peers['redis_resync'][0]:.1f} MB/s")
    except Unavailable as exc:
        errors["redis_resync"] = str(exc)
    except Exception as exc:  # a peer's failure is reported, not fatal
        errors["redis_resync"] = f"{type(exc).__name__}: {exc}"
    inside = burst is not None and n * size <= burst
    note = f"{n * size / 1e6:.0f} MB behind"
    if plan.quick:
        note = "QUICK: " + note + " (full run: 1 GiB)"
    if burst is not None:
        note += f"; budget burst {burst / 1e6:.1f} MB" + (" (INSIDE the burst)" if inside else "")
    else:
        note += "; default budget unlimited or resolved by the node (no burst to fit in)"
    fig = figure(
        "MB/s (payload, 10^6)",
        "catch-up of an empty replica restarted behind, default budget, 1 KiB",
        [budgeted],
        peers,
        errors,
        peer_labels={
            "redis_resync": "Redis replica started empty: full resync (diskless RDB) "
            "until its XLEN has all"
        },
        note=note + "; one trial each (a trial is the whole catch-up)",
    )
    fig["unbudgeted"] = summary([raw])
    for p in fig["peers"].values():
        p["unbudgeted_ratio"] = raw / p["median"] if p["median"] else None
    fig.update(bytes_behind=n * size, budget_burst_bytes=burst, inside_budget_burst=inside)
    return {
        "figures": {"catchup_mb_s": fig},
        "samples": {
            "rss_vs_log": {
                "what": f"leader node RSS bytes vs events held ({size} B payloads, memory)",
                "points": rss,
            }
        },
    }


def _catchup(
    n: int, size: int, nic_peak: int | None, rss: list[tuple[int, int]] | None = None
) -> float:
    """Payload MB/s of the catch-up; ``rss`` gets (events held, leader RSS bytes) while
    the log grows (16 steps) and the replica's once it holds everything."""
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        cfg = ReplicationConfig(factor=2, heartbeat_ms=HB, leader_pinned=c.node_ids[0])
        if nic_peak is not None:
            cfg = dataclasses.replace(cfg, nic_peak_bytes_per_s=nic_peak)
        c.open_channel("bench/c", cfg)
        c.wait_until(lambda: c.leader("bench/c") == 0, timeout=10, message="pinned leader")
        c.kill(1)
        leader = psutil.Process(c.info[0]["pid"])
        if rss is None:
            _timed_appends(c, 0, "bench/c", n, size, 64)
        else:
            rss.append((0, leader.memory_info().rss))
            step = max(64, n // 16 // 64 * 64)
            done = 0
            while done < n:
                k = min(step, n - done)
                _timed_appends(c, 0, "bench/c", k, size, 64)
                done += k
                rss.append((done, leader.memory_info().rss))
        c.restart(1)
        t0 = time.perf_counter()
        c.wait_until(
            lambda: c.next_seq(1, "bench/c") >= n,
            timeout=600,
            interval=0.005,
            message="catch-up",
        )
        rate = n * size / (time.perf_counter() - t0) / 1e6
        return rate


# --------------------------------------------------------------------------- latency


def bench_latency(plan: Plan, servers: Servers, log: Log, rate: int = 10_000) -> dict[str, Any]:
    """Append -> applied on the replica at ``rate`` events/s offered (f2, hb 150)."""
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel(
            "bench/l", ReplicationConfig(factor=2, heartbeat_ms=HB, leader_pinned=c.node_ids[0])
        )
        c.wait_until(lambda: c.leader("bench/l") == 0, timeout=10, message="pinned leader")
        with c.producer(0, "bench/l") as p:  # warm-up: the replica acks, so it streams
            p.append_batch([b"w" * 64] * 100)
            warm = p.flush() + 1
        c.wait_until(lambda: c.next_seq(1, "bench/l") >= warm, timeout=10)
        c.sup.call(1, "probe_start", channel="bench/l")
        per_tick, tick = rate // 1000, 0.001  # 10 events every millisecond
        sent = 0
        with c.producer(0, "bench/l") as p:
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < plan.latency_s:
                due = int(elapsed / tick) * per_tick
                if sent < due:
                    p.append_batch([probe_payload(64) for _ in range(due - sent)])
                    sent = due
                else:
                    time.sleep(tick / 4)  # pacing of the offered load
            p.flush()
        c.wait_until(lambda: c.next_seq(1, "bench/l") >= warm + sent, timeout=10)
        lat = [float(x) for x in c.sup.call(1, "probe_stop", channel="bench/l")]
    peer: list[float] = []
    errors: dict[str, str] = {}
    try:
        peer = log_peers.redis_replica_latency(servers, plan.latency_s, rate)
    except Unavailable as exc:
        errors["redis_async_replica"] = str(exc)
    except Exception as exc:  # a peer's failure is reported, not fatal
        errors["redis_async_replica"] = f"{type(exc).__name__}: {exc}"
    s = _latency_summary(lat)
    log(f"latency p50 {s['median']:.3f} ms p99 {s['p99']:.3f} ms ({len(lat)} samples)")
    fig: dict[str, Any] = {
        "unit": "ms",
        "label": f"replica latency, append -> applied on the replica, {rate} events/s offered",
        "lower_is_better": True,
        "netmesh": s,
        "peers": {},
        "note": (f"QUICK: {plan.latency_s:g} s (full run: 5 s); " if plan.quick else "")
        + "one run each; p99 over all samples of it; ratio = peer p99 / netmesh p99",
    }
    if peer:
        ps = _latency_summary(peer)
        ps["label"] = (
            "Redis: XADD to the primary -> XREAD on the async replica returns it "
            "(a reader process; includes its read round trip)"
        )
        ps["ratio"] = ps["p99"] / s["p99"] if s["p99"] else None
        ps["ratio_p50"] = ps["median"] / s["median"] if s["median"] else None
        fig["peers"]["redis_async_replica"] = ps
    if errors:
        fig["unavailable"] = errors
    return {
        "figures": {"replica_latency_ms": fig},
        "samples": {
            "replica_latency_ms": _thin(lat),
            "replica_latency_ms_redis": _thin(peer),
        },
    }


def _latency_summary(lat: list[float]) -> dict[str, Any]:
    return {
        "min": min(lat, default=float("nan")),
        "median": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": max(lat, default=float("nan")),
        "samples": len(lat),
    }

"""``netmesh bench``: throughput, replication, failover and latency figures.

Every figure is measured across real processes: the benchmark process is the
producer (it writes into shared-memory rings), each node is its own process, node
traffic is encrypted UDP on loopback. 64 B payloads unless named.

``netmesh bench peers [--netmesh-json OUT]`` measures Redis streams and the Rust wheel
on the same machine and prints netmesh/peer ratios (see ``benchmarks.peers``).

``netmesh bench all [--quick] [--json OUT] [--plot OUT.png]`` runs (rates are medians
of three trials):

=============================  ===========================================================
ingest_single_eps              producer -> node ring, one ``append`` per event, unreplicated
ingest_batched_eps             same, 64 events per ``append_batch``
ingest_batched_1k_mb_s         same with 1 KiB payloads, payload MB/s (10^6)
replicated_eps                 factor 2, batched, until the replica holds every event
replicated_quorum_eps          same with ``ack="quorum"`` (acknowledged by a majority)
replication_overhead_ratio     time of N single appends (acked by the leader) on a
                               replicated channel / on an unreplicated one, same cluster,
                               producer pinned apart from the nodes (``_shared``: unpinned)
failover_ms_p50 / _p99         SIGKILL the leader -> another node reports LEADER, hb 150 ms
catchup_mb_s                   an empty replica restarted 200k (quick: 50k) 1 KiB events
                               behind: payload MB/s until it holds them all (default
                               replication budget; ``catchup_unbudgeted_mb_s``: no cap)
replica_latency_ms_p50 / _p99  append -> applied on the replica at 10k events/s offered
=============================  ===========================================================
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from netmesh.cluster.cluster import Cluster
from netmesh.cluster.producer_worker import produce
from netmesh.config import ReplicationConfig
from netmesh.replication.roles import ReplicaRole
from netmesh.replication.runtime import probe_payload

HB = 150


def _timed_appends(c: Cluster, node: int, channel: str, n: int, size: int, batch: int) -> float:
    """Seconds for ``n`` events through a fresh producer ring, until acknowledged."""
    with c.producer(node, channel) as p:
        return produce(p, n, batch, size, rate=0)[1]


def bench_ingest(n: int, trials: int) -> dict[str, float]:
    with Cluster(nodes=1) as c:
        # bounded like a production channel: the figure is ingest speed, not how the
        # node's allocator copes with gigabytes of retained payloads
        c.open_channel("bench/ingest", retention_max_bytes=256 << 20)
        med = statistics.median
        single = med(_timed_appends(c, 0, "bench/ingest", n // 4, 64, 1) for _ in range(trials))
        batched = med(_timed_appends(c, 0, "bench/ingest", n, 64, 64) for _ in range(trials))
        big = med(_timed_appends(c, 0, "bench/ingest", n // 4, 1024, 64) for _ in range(trials))
    return {
        "ingest_single_eps": n // 4 / single,
        "ingest_batched_eps": n / batched,
        "ingest_batched_1k_mb_s": n // 4 * 1024 / big / 1e6,
    }


def _replicated_rate(n: int, ack: str) -> float:
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("bench/r", ReplicationConfig(factor=2, heartbeat_ms=HB, ack=ack))
        lead = c.wait_for_leader("bench/r")
        other = 1 - lead
        payload = b"x" * 64
        with c.producer(lead, "bench/r") as p:
            t0 = time.perf_counter()
            produce(p, n, 64, len(payload), rate=0)
            total = n
            c.wait_until(
                lambda: c.next_seq(other, "bench/r") >= total,
                timeout=120,
                interval=0.001,
                message="replica holds every event",
            )
            return total / (time.perf_counter() - t0)


def bench_replicated(n: int, trials: int) -> dict[str, float]:
    return {
        "replicated_eps": statistics.median(_replicated_rate(n, "leader") for _ in range(trials)),
        "replicated_quorum_eps": statistics.median(
            _replicated_rate(n, "quorum") for _ in range(trials)
        ),
    }


def bench_overhead(n: int, trials: int) -> dict[str, float]:
    """The reference's method: N single appends acknowledged by the leader, replicated
    vs not, medians of interleaved trials.

    ``replication_overhead_ratio`` isolates the load generator (this process, the
    producer) on CPU 0 and puts the node processes on the other CPUs, as one would
    pin wrk or redis-benchmark: otherwise, on 2 cores, the replica's CPU comes out of
    the producer's core and the figure measures the client's starvation.
    ``replication_overhead_ratio_shared`` is the same run with no pinning at all.
    """
    cpus = sorted(os.sched_getaffinity(0))
    pinned = _overhead_ratio(n, trials, cpus[:1], cpus[1:]) if len(cpus) > 1 else None
    shared = _overhead_ratio(n, trials, None, None)
    return {
        "replication_overhead_ratio": pinned if pinned is not None else shared,
        "replication_overhead_ratio_shared": shared,
    }


def _overhead_ratio(
    n: int, trials: int, client: list[int] | None, nodes: list[int] | None
) -> float:
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
                    _pin_process(c.info[i]["pid"], nodes)
            _timed_appends(c, 0, "bench/plain", n // 10, 64, 1)  # warm-up
            _timed_appends(c, 0, "bench/repl", n // 10, 64, 1)
            plain, repl = [], []
            for _ in range(trials):  # interleaved so machine noise hits both alike
                plain.append(_timed_appends(c, 0, "bench/plain", n, 64, 1))
                repl.append(_timed_appends(c, 0, "bench/repl", n, 64, 1))
        finally:
            os.sched_setaffinity(0, before)
    return statistics.median(repl) / statistics.median(plain)


def _pin_process(pid: int, cpus: list[int]) -> None:
    """Every thread of ``pid`` (threads it starts later inherit the mask)."""
    for thread in psutil.Process(pid).threads():
        os.sched_setaffinity(thread.id, cpus)


def bench_failover(trials: int) -> dict[str, float]:
    samples = []
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("bench/f", ReplicationConfig(factor=3, heartbeat_ms=HB))
        for _ in range(trials):
            old = c.wait_for_leader("bench/f")
            with c.producer(old, "bench/f") as p:
                p.append_batch([b"f" * 64] * 100)
                p.flush()
            t0 = time.perf_counter()
            c.kill(old)
            c.wait_until(
                lambda old=old: c.leader("bench/f") not in (None, old),
                timeout=10,
                interval=0.002,
                message="a new leader",
            )
            samples.append((time.perf_counter() - t0) * 1000)
            c.restart(old)
            c.wait_until(lambda old=old: c.role(old, "bench/f") is ReplicaRole.REPLICA, timeout=10)
    return {
        "failover_ms_p50": _pct(samples, 50),
        "failover_ms_p99": _pct(samples, 99),
        "failover_trials": len(samples),
    }


def bench_catchup(n: int) -> dict[str, float]:
    """Default budget (0.5 x 125 MB/s: the bucket's 62.5 MB burst, then 62.5 MB/s) and
    an unconstrained budget (10 GB/s NIC peak), to show the budget and the raw path."""
    return {
        "catchup_mb_s": _catchup(n, None),
        "catchup_unbudgeted_mb_s": _catchup(n, 10**10),
        "catchup_events": n,
    }


def _catchup(n: int, nic_peak: int | None) -> float:
    size = 1024
    extra = {} if nic_peak is None else {"nic_peak_bytes_per_s": nic_peak}
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel(
            "bench/c",
            ReplicationConfig(factor=2, heartbeat_ms=HB, leader_pinned=c.node_ids[0], **extra),
        )
        c.wait_until(lambda: c.leader("bench/c") == 0, timeout=10, message="pinned leader")
        c.kill(1)
        _timed_appends(c, 0, "bench/c", n, size, 64)
        total = n
        c.restart(1)
        t0 = time.perf_counter()
        c.wait_until(
            lambda: c.next_seq(1, "bench/c") >= total,
            timeout=300,
            interval=0.005,
            message="catch-up",
        )
        elapsed = time.perf_counter() - t0
    return total * size / elapsed / 1e6


def bench_latency(seconds: float, rate: int = 10_000) -> dict[str, float]:
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
            while (elapsed := time.perf_counter() - start) < seconds:
                due = int(elapsed / tick) * per_tick
                if sent < due:
                    p.append_batch([probe_payload(64) for _ in range(due - sent)])
                    sent = due
                else:
                    time.sleep(tick / 4)  # pacing of the offered load
            p.flush()
        c.wait_until(lambda: c.next_seq(1, "bench/l") >= warm + sent, timeout=10)
        lat = c.sup.call(1, "probe_stop", channel="bench/l")
    return {
        "replica_latency_ms_p50": _pct(lat, 50),
        "replica_latency_ms_p99": _pct(lat, 99),
        "replica_latency_samples": len(lat),
        "offered_eps": rate,
    }


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, round(q / 100 * (len(ys) - 1)))]


def versions() -> dict[str, Any]:
    from importlib.metadata import version

    out: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in ("netmesh", "msgpack", "cryptography", "posix-ipc", "psutil"):
        try:
            out[f"{pkg}_version"] = version(pkg)
        except Exception:
            out[f"{pkg}_version"] = None
    return out


BAR = {
    "ingest_batched_eps": (">=", 1_500_000),
    "ingest_single_eps": (">=", 400_000),
    "replicated_eps": (">=", 300_000),
    "replicated_quorum_eps": (">=", 150_000),
    "replication_overhead_ratio": ("<=", 1.15),
    "failover_ms_p99": ("<=", 600),
    "catchup_mb_s": (">=", 50),
    "replica_latency_ms_p50": ("<=", 1),
    "replica_latency_ms_p99": ("<=", 5),
}


def suite(quick: bool) -> list[tuple[str, Callable[[], dict[str, float]]]]:
    k = 1 if quick else 4
    trials = 3  # medians of three everywhere
    return [
        ("ingest", lambda: bench_ingest(400_000 * k, trials)),
        ("replicated", lambda: bench_replicated(200_000 * k, trials)),
        ("overhead", lambda: bench_overhead(100_000, 7 if quick else 11)),
        ("failover", lambda: bench_failover(8 if quick else 20)),
        ("catchup", lambda: bench_catchup(50_000 if quick else 200_000)),
        ("latency", lambda: bench_latency(2.0 if quick else 5.0)),
    ]


def report(results: dict[str, Any]) -> Table:
    t = Table(title="netmesh bench")
    for col in ("figure", "value", "bar", "meets"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for key, value in results.items():
        if not isinstance(value, float | int) or key.endswith("_version"):
            continue
        op, bar = BAR.get(key, ("", None))
        meets = (
            ""
            if bar is None
            else ("yes" if (value >= bar if op == ">=" else value <= bar) else "NO")
        )
        t.add_row(
            key,
            f"{value:,.3f}" if value < 100 else f"{value:,.0f}",
            f"{op} {bar:,}" if bar is not None else "",
            meets,
        )
    return t


def plot(results: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [
        k
        for k in (
            "ingest_single_eps",
            "ingest_batched_eps",
            "replicated_eps",
            "replicated_quorum_eps",
        )
        if k in results
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(keys, [results[k] for k in keys], color="#3b7dd8")
    ax1.set_ylabel("events/s (64 B)")
    ax1.tick_params(axis="x", rotation=20)
    lat = [
        k
        for k in (
            "replica_latency_ms_p50",
            "replica_latency_ms_p99",
            "failover_ms_p50",
            "failover_ms_p99",
        )
        if k in results
    ]
    ax2.bar(lat, [results[k] for k in lat], color="#d8833b")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.tick_params(axis="x", rotation=20)
    fig.suptitle(f"netmesh bench ({results.get('cpu_count')} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def have_matplotlib() -> bool:
    """Whether ``--plot`` can work (matplotlib is in the ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


SUITES = ("all", "ingest", "replicated", "overhead", "failover", "catchup", "latency")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description keeps its table."""


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr, exit 2 (like the ``netmesh`` command)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """``netmesh bench`` options (``peers`` has its own: ``netmesh bench peers --help``)."""
    ap = _Parser(
        prog="netmesh bench",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=_Formatter,
    )
    ap.add_argument(
        "which",
        nargs="?",
        default=None,
        choices=[*SUITES, "peers"],
        help="what to run (none: list the choices and exit)",
    )
    ap.add_argument("--quick", action="store_true", help="smaller runs (< 3 minutes)")
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    ap.add_argument(
        "--plot", metavar="OUT.png", help="write a PNG plot (needs the 'bench' extra: matplotlib)"
    )
    return ap


def listing() -> str:
    """What a bare ``netmesh bench`` prints: the suites it can run."""
    lines = ["netmesh bench runs one of:"]
    lines += [f"  netmesh bench {name} [--quick] [--json OUT] [--plot OUT.png]" for name in SUITES]
    lines += [
        "  netmesh bench peers [--quick]     (Redis streams and the Rust wheel, same machine)",
        "details: netmesh bench --help",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad arguments or --plot without matplotlib (checked before
    anything runs)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "peers":  # Redis and the Rust wheel, same machine, same run
        from benchmarks import peers as bench_peers

        bench_peers.main(argv[1:])
        return 0
    ap = parser()
    args = ap.parse_args(argv)
    if args.which is None:
        print(listing())
        return 0
    if args.plot and not have_matplotlib():
        ap.error("--plot needs matplotlib: pip install 'netmesh[bench]' (nothing was run)")
    console = Console(width=None if sys.stdout.isatty() else 100)
    results: dict[str, Any] = {}
    jobs = [j for j in suite(args.quick) if args.which in ("all", j[0])]
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(jobs))
        for name, job in jobs:
            progress.update(task, description=f"bench {name}")
            results.update(job())
            progress.advance(task)
    results["bench_seconds"] = round(time.perf_counter() - t0, 1)
    results.update(versions())
    console.print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

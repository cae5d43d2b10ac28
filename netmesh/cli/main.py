"""The ``netmesh`` command line.

* ``netmesh demo``: a 3-node replicated cluster that appends, shows the replicas
  catching up, SIGKILLs the leader, shows the failover and the restarted node catching
  up, checks every history is identical, and exits 0.
* ``netmesh up``: a local cluster with a live status table until Ctrl-C (or
  ``--duration``), with a producer appending at ``--rate`` events/s on the leader.
* ``netmesh status``: the table (or ``--prometheus`` text) of a running ``netmesh up``.
* ``netmesh bench``: benchmarks (see ``benchmarks.bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from typing import Any

import psutil
from rich.console import Console
from rich.live import Live

from netmesh.cli import status
from netmesh.cluster import snapshot
from netmesh.cluster.cluster import Cluster
from netmesh.cluster.metrics_page import MetricsPage
from netmesh.cluster.producer import Producer
from netmesh.config import ReplicationConfig
from netmesh.errors import ConfigError, NetmeshError

CHANNEL = "demo/orders"


def _show(console: Console, c: Cluster, title: str) -> None:
    console.print(status.table(status.rows(c.metrics(fresh=True), None, 0.0), title=title))


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 132)


def cmd_demo(args: argparse.Namespace) -> int:
    console = _console()
    n = args.events
    with Cluster(nodes=3, heartbeat_ms=args.heartbeat_ms) as c:
        console.print(
            f"3 node processes up: pids {[c.info[i]['pid'] for i in range(3)]}, "
            "encrypted UDP mesh on 127.0.0.1"
        )
        c.open_channel(CHANNEL, ReplicationConfig(factor=3, heartbeat_ms=args.heartbeat_ms))
        lead = c.wait_for_leader(CHANNEL)
        console.print(f"node {lead} was elected leader of {CHANNEL!r}")
        t0 = time.perf_counter()
        with c.producer(lead, CHANNEL) as p:
            for i in range(0, n, 1000):
                p.append_batch([b"order-%d" % j for j in range(i, min(n, i + 1000))])
            last = p.flush()
        dt = time.perf_counter() - t0
        console.print(
            f"appended {last + 1:,} events through a shared-memory ring in {dt:.2f}s "
            f"({(last + 1) / dt:,.0f} events/s)"
        )
        c.wait_until(
            lambda: all(c.next_seq(i, CHANNEL) == n for i in range(3)),
            timeout=20,
            message="replicas catch up",
        )
        console.print(f"replicas caught up {time.perf_counter() - t0:.2f}s after the first append")
        _show(console, c, "after the appends")
        t1 = time.perf_counter()
        c.kill(lead)
        console.print(f"SIGKILLed the leader, node {lead}")
        new = c.wait_for_leader(CHANNEL)
        console.print(f"node {new} took over after {(time.perf_counter() - t1) * 1000:.0f} ms")
        with c.producer(new, CHANNEL) as p:
            p.append_batch([b"after-failover-%d" % j for j in range(1000)])
            last = p.flush()
        c.restart(lead)
        c.wait_until(
            lambda: all(c.next_seq(i, CHANNEL) == last + 1 for i in range(3)),
            timeout=20,
            message="restarted node catches up",
        )
        console.print(f"node {lead} restarted and caught up to seq {last}")
        _show(console, c, "after failover and restart")
        histories = [c.read_range(i, CHANNEL, 0, last + 1) for i in range(3)]
        ok = histories[0] == histories[1] == histories[2] and len(histories[0]) == last + 1
    console.print("OK: every node holds the same history" if ok else "MISMATCH")
    return 0 if ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    console = _console()
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cfg = ReplicationConfig(factor=args.factor, heartbeat_ms=args.heartbeat_ms, ack=args.ack)
    with Cluster(
        nodes=args.nodes,
        heartbeat_ms=args.heartbeat_ms,
        data_dir=args.data_dir,
        restart_policy=args.restart_policy,
    ) as c:
        c.open_channel(args.channel, cfg)
        run_path = status.write_run_file(
            os.getpid(),
            {
                "pages": [c.pages[i].name for i in range(c.size)],
                "pids": [c.info[i]["pid"] for i in range(c.size)],
                "node_ids": c.node_ids,
            },
        )
        try:
            _up_loop(console, c, args, lambda: stop)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run_path)
    console.print("cluster stopped cleanly")
    return 0


def _up_loop(console: Console, c: Cluster, args: argparse.Namespace, stopped: Any) -> None:
    producer: Producer | None = None
    prev, prev_t = None, time.monotonic()
    end = time.monotonic() + args.duration if args.duration else float("inf")
    payload = b"x" * args.payload
    with Live(console=console, refresh_per_second=4) as live:
        while not stopped() and time.monotonic() < end:
            tick = time.monotonic()
            for node, code in c.check_nodes():
                console.print(
                    f"node {node} exited with code {code}"
                    + (", restarted" if args.restart_policy == "on-failure" else "")
                )
            if args.rate:
                producer = _feed(c, args, producer, payload)
            if tick - prev_t >= 0.5 or prev is None:
                snap = c.metrics()
                live.update(
                    status.table(
                        status.rows(snap, prev, tick - prev_t),
                        title=f"netmesh up: {args.nodes} nodes, "
                        f"channel {args.channel!r} (Ctrl-C stops)",
                    )
                )
                prev, prev_t = snap, tick
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    if producer is not None:
        producer.close()


def _feed(
    c: Cluster, args: argparse.Namespace, producer: Producer | None, payload: bytes
) -> Producer | None:
    """Append ``rate / 10`` events (called every 100 ms) on the current leader."""
    lead = c.leader(args.channel)
    if lead is None:
        return producer
    if producer is not None and c.producers.get(producer.ring_name, (None,))[0] != lead:
        producer.close()
        producer = None
    if producer is None:
        producer = c.producer(lead, args.channel)
    try:
        producer.append_batch([payload] * max(1, args.rate // 10), timeout=0.05)
    except NetmeshError:
        producer.close()
        return None
    return producer


def cmd_status(args: argparse.Namespace) -> int:
    files = status.find_run_files()
    if not files:
        print("no running `netmesh up` found", file=sys.stderr)
        return 1
    import json

    with open(files[0]) as fh:
        info = json.load(fh)
    nodes = []
    for i, (name, pid) in enumerate(zip(info["pages"], info["pids"], strict=True)):
        page = MetricsPage.attach(name)
        try:
            snap = page.read()
        finally:
            page.close()
        alive = psutil.pid_exists(pid)
        proc: dict[str, Any] = {"cpu_percent": 0.0, "rss_bytes": 0}
        if alive:
            p = psutil.Process(pid)
            proc = {"cpu_percent": p.cpu_percent(0.2), "rss_bytes": p.memory_info().rss}
        nodes.append(snapshot.node_entry(i, info["node_ids"][i], pid, alive, None, snap, proc))
    snap_all = snapshot.with_totals(nodes)
    if args.prometheus:
        sys.stdout.write(status.prometheus(snap_all))
    else:
        _console().print(status.table(status.rows(snap_all, None, 0.0)))
    return 0


def load_benchmarks() -> Any:
    """Import the ``benchmarks`` package of the source checkout this netmesh runs from.

    The benchmarks are not part of the installed package (they pull in peers such as
    redis-py and the reference wheel); they live in the repository's top-level
    ``benchmarks/`` and are loaded by path, so a ``benchmarks/`` folder in the working
    directory can never stand in for them. Raises ConfigError when netmesh was installed
    without its source checkout.
    """
    import importlib.util

    if "benchmarks.bench" in sys.modules:
        return sys.modules["benchmarks.bench"]
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks")
    init = os.path.join(root, "__init__.py")
    if not os.path.exists(init):
        raise ConfigError(
            "netmesh bench runs from a source checkout: clone the repository and"
            " pip install -e '.[bench]'"
        )
    spec = importlib.util.spec_from_file_location(
        "benchmarks", init, submodule_search_locations=[root]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("benchmarks.bench")


def cmd_bench(args: argparse.Namespace) -> int:
    return int(load_benchmarks().main(args.bench_args))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="netmesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="3-node replication + failover demo; exits 0")
    demo.add_argument("--events", type=int, default=100_000)
    demo.add_argument("--heartbeat-ms", type=int, default=150)
    demo.set_defaults(func=cmd_demo)
    up = sub.add_parser("up", help="run a local cluster with a live status table")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--factor", type=int, default=3)
    up.add_argument("--heartbeat-ms", type=int, default=150)
    up.add_argument("--ack", choices=["leader", "quorum"], default="leader")
    up.add_argument("--channel", default="events")
    up.add_argument("--rate", type=int, default=10_000, help="events/s appended (0: none)")
    up.add_argument("--payload", type=int, default=64, help="payload bytes")
    up.add_argument("--data-dir", default=None, help="persist identities and event files")
    up.add_argument("--duration", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    up.add_argument(
        "--restart-policy",
        choices=["never", "on-failure"],
        default="never",
        help="restart nodes that die without being asked",
    )
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="show the status of a running `netmesh up`")
    st.add_argument("--prometheus", action="store_true", help="Prometheus text format")
    st.set_defaults(func=cmd_status)
    bench = sub.add_parser("bench", help="benchmarks (netmesh bench --help)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the bench suites own their options, --help included
        return int(load_benchmarks().main(argv[1:]))
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

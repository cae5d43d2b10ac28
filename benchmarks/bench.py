"""``netmesh bench``: every headline figure beside its peers, measured in the same run.

Absolute figures on a shared machine move 2-4x between hours; a netmesh figure means
something only next to a peer measured in the same invocation. So each figure below is
interleaved rounds (netmesh, peer, peer, ..., netmesh, ...; 3 rounds), reported as
min/median/max per series and as ratios netmesh / peer (> 1: netmesh is better), with
the machine's load (os.getloadavg) before and after. The JSON also carries the date,
the commit, package and server versions and the CPU model. 64 B payloads unless named.

``netmesh bench all [--quick] [--json OUT] [--plot OUT.png]`` runs:

======================  ===================================================================
ingest                  producer process -> node ring, unreplicated, until acknowledged:
                        single appends, append_batch(64) at 64 B and 1 KiB; peers: a
                        pure-Python shm ring with semaphores (same blocking semantics),
                        multiprocessing.Pipe, pyzmq PUSH/PULL (x64 per call when batched)
replicated              factor 2, default budget, 10 s sustained, until every replica
                        holds all; peers: Redis + async replica (redis-py; redis-benchmark
                        C client as the server's bound), NATS JetStream R1/R3 (3-node
                        loopback cluster), until all acknowledged
quorum                  factor 3, ack="quorum", one acknowledgement per 500 events; peers:
                        Redis XADD x500 + WAIT 1, JetStream R3 500 publishes then acks
inprocess               RedexFile.append / append_batch(64) in memory vs the net-mesh
                        wheels (0.24 in this process, 0.45.1 in its own venv if present)
overhead                N single appends acked by the leader, f2 / unreplicated time,
                        unpinned (headline) and pinned (labelled); peer: Redis, primary
                        with an async replica / standalone
failover                write unavailability: SIGKILL the leader until a producer's append
                        is acknowledged by the new leader, 20 trials, p50/p90/max, and a
                        timeline; peer: JetStream R3 (kill the stream leader's server)
catchup                 an empty replica 1 GiB of 1 KiB events behind: MB/s until it holds
                        all (default budget; unbudgeted beside it); peer: a Redis replica
                        started empty (full resync); RSS vs log size
latency                 append -> applied on the replica at 10k events/s offered; peer:
                        Redis, XADD to the primary -> XREAD on the replica returns it
======================  ===================================================================

``--quick`` (about 90 s for ``all``) shrinks every workload; figures it changes say so
("QUICK: ..."). Peers that are not installed are reported as unavailable, not skipped
silently. ``netmesh bench peers`` runs the older standalone Redis/wheel comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks import suites, wheels
from benchmarks.log_peers import Servers
from benchmarks.plots import plot
from benchmarks.suites import Plan
from benchmarks.trials import load, provenance

SCHEMA = "netmesh-bench/2"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def jobs(
    plan: Plan, servers: Servers, log: Callable[[str], None]
) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """(suite name, thunk) in run order; the thunks return suite results."""
    return [
        ("ingest", lambda: suites.bench_ingest(plan, log)),
        ("replicated", lambda: suites.bench_replicated(plan, servers, log)),
        ("quorum", lambda: suites.bench_quorum(plan, servers, log)),
        ("inprocess", lambda: suites.bench_inprocess(plan, log)),
        ("overhead", lambda: suites.bench_overhead(plan, servers, log)),
        ("failover", lambda: suites.bench_failover(plan, log)),
        ("catchup", lambda: suites.bench_catchup(plan, log)),
        ("latency", lambda: suites.bench_latency(plan, servers, log)),
    ]


def run(
    which: str,
    quick: bool,
    log: Callable[[str], None] = lambda _m: None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run suite ``which`` (or ``"all"``); the JSON-able results (see :func:`flat`)."""
    plan = Plan.make(quick)
    servers = Servers()
    results: dict[str, Any] = {"schema": SCHEMA, "quick": quick, "suite": which}
    results.update(provenance(ROOT))
    results["versions"]["net-mesh-other-interpreters"] = {
        py: wheels.wheel_version(py) for py in wheels.wheel_pythons()
    }
    results["load_before"] = load()
    results["figures"], results["samples"] = {}, {}
    t0 = time.perf_counter()
    todo = [j for j in jobs(plan, servers, log) if which in ("all", j[0])]
    try:
        if which in ("all", "replicated", "quorum"):
            servers.prestart()  # NATS forms its JetStream cluster while ingest runs
        task = progress.add_task("benchmarks", total=len(todo)) if progress else None
        for name, job in todo:
            if progress is not None and task is not None:
                progress.update(task, description=f"bench {name}")
            t_suite = time.perf_counter()
            out = job()
            results.setdefault("suite_seconds", {})[name] = round(time.perf_counter() - t_suite, 1)
            results["figures"].update(out.get("figures", {}))
            results["samples"].update(out.get("samples", {}))
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        servers.close()
    results["load_after"] = load()
    results["bench_seconds"] = round(time.perf_counter() - t0, 1)
    results["summary"] = flat(results["figures"])
    return results


def flat(figures: dict[str, Any]) -> dict[str, float]:
    """Headline numbers by key (medians), and every ratio as ``<figure>_vs_<peer>``."""
    out: dict[str, float] = {}
    for key, f in figures.items():
        nm = f.get("netmesh", {})
        if key == "failover_unavailability_ms":
            for q in ("p50", "p90", "max"):
                out[f"failover_ms_{q}"] = nm.get(q, math.nan)
            continue
        if key == "replica_latency_ms":
            out["replica_latency_ms_p50"] = nm.get("median", math.nan)
            out["replica_latency_ms_p99"] = nm.get("p99", math.nan)
            for peer, p in f.get("peers", {}).items():
                if p.get("ratio") is not None:
                    out[f"replica_latency_ms_p99_vs_{peer}"] = p["ratio"]
            continue
        out[key] = nm.get("median", math.nan)
        if key == "replication_overhead_ratio":  # the seed's figure: ratio of medians
            out[key] = nm.get("ratio_of_medians", out[key])
            if f.get("pinned"):
                out["replication_overhead_ratio_pinned"] = f["pinned"]["ratio_of_medians"]
        if key == "catchup_mb_s" and f.get("unbudgeted"):
            out["catchup_unbudgeted_mb_s"] = f["unbudgeted"]["median"]
        if key == "ingest_batched_1k_eps":
            out["ingest_batched_1k_mb_s"] = out[key] * 1024 / 1e6
        for peer, p in f.get("peers", {}).items():
            if p.get("ratio") is not None:
                out[f"{key}_vs_{peer}"] = p["ratio"]
    return out


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def _num(x: float | None, unit: str = "") -> str:
    if x is None or x != x:
        return "-"
    if unit == "events/s":
        if x >= 1e6:
            return f"{x / 1e6:.2f}M"
        if x >= 1e3:
            return f"{x / 1e3:.1f}k"
        return f"{x:.0f}"
    return f"{x:,.3f}" if abs(x) < 100 else f"{x:,.0f}"


def _span(s: dict[str, Any], unit: str) -> str:
    if not s.get("trials") and "p50" not in s and "p99" not in s:
        return _num(s.get("median"), unit)
    return f"{_num(s.get('median'), unit)} ({_num(s.get('min'), unit)}-{_num(s.get('max'), unit)})"


def report(results: dict[str, Any]) -> Table:
    """figure | netmesh median (min-max) | peer | peer median (min-max) | ratio (range)."""
    quick = " --quick" if results.get("quick") else ""
    t = Table(
        title=f"netmesh bench{quick}: same-run ratios (> 1: netmesh better); load "
        f"{results.get('load_before')} -> {results.get('load_after')}",
    )
    for col in (
        "figure",
        "unit",
        "netmesh med (min-max)",
        "peer",
        "peer med (min-max)",
        "ratio (range)",
    ):
        t.add_column(col, justify="left" if col in ("figure", "peer", "unit") else "right")
    for key, f in results.get("figures", {}).items():
        unit = f.get("unit", "")
        nm = f.get("netmesh", {})
        first = _span(nm, unit)
        if key == "failover_unavailability_ms":
            first = (
                f"p50 {_num(nm.get('p50'))} p90 {_num(nm.get('p90'))} "
                f"max {_num(nm.get('max'))} (n={nm.get('samples')})"
            )
        elif key == "replica_latency_ms":
            first = (
                f"p50 {_num(nm.get('median'))} p99 {_num(nm.get('p99'))} (n={nm.get('samples')})"
            )

        elif key == "replication_overhead_ratio" and f.get("pinned"):
            first += f"; pinned {_span(f['pinned'], unit)}"
        elif key == "catchup_mb_s" and f.get("unbudgeted"):
            first += f"; unbudgeted {_num(f['unbudgeted'].get('median'))}"
        short_unit = unit.split(" ")[0]
        peers = f.get("peers", {})
        if not peers:
            t.add_row(key, short_unit, first, "", "", "")
        for i, (name, p) in enumerate(peers.items()):
            ratio = "-" if p.get("ratio") is None else f"{p['ratio']:.2f}x"
            if "ratio_min" in p:
                ratio += f" ({p['ratio_min']:.2f}-{p['ratio_max']:.2f})"
            shown = _span(p, unit)
            if key == "replica_latency_ms":  # a single run: its percentiles
                shown = f"p50 {_num(p.get('median'))} p99 {_num(p.get('p99'))} (n={p['samples']})"
            t.add_row(
                key if i == 0 else "",
                short_unit if i == 0 else "",
                first if i == 0 else "",
                name,
                shown,
                ratio,
            )
        for name, why in f.get("unavailable", {}).items():
            t.add_row("", "", "", name, "unavailable", why[:60])
    return t


def markdown(results: dict[str, Any]) -> str:
    """The report as a Markdown table (for the README), provenance and notes below it."""
    rows = [
        "| figure | netmesh median (min-max) | peer | peer median (min-max) | ratio (range) |",
        "|---|---:|---|---:|---:|",
    ]
    table = report(results)
    cells = [[str(c) for c in col.cells] for col in table.columns]
    for r in range(len(cells[0]) if cells else 0):
        fig, _unit, nm, peer, pv, ratio = (col[r] for col in cells)
        label = ""
        f = results.get("figures", {}).get(fig)
        if f is not None:
            label = f" ({f.get('unit', '').split(' ')[0]})"
        rows.append(f"| {fig}{label if fig else ''} | {nm} | {peer} | {pv} | {ratio} |")
    quick = " --quick" if results.get("quick") else ""
    rows += [
        "",
        f"`netmesh bench {results.get('suite')}{quick}` {results.get('date')}, commit "
        f"{results.get('commit')}, {results.get('cpu_model')} x{results.get('cpu_count')}, "
        f"load {results.get('load_before')} -> {results.get('load_after')}, "
        f"{results.get('bench_seconds')} s. Ratios > 1: netmesh better.",
        "",
        *(f"- {line}" for line in notes(results)),
    ]
    return "\n".join(rows) + "\n"


def notes(results: dict[str, Any]) -> list[str]:
    """One line per figure that carries a note (QUICK labels, budget bursts...)."""
    return [f"{k}: {f['note']}" for k, f in results.get("figures", {}).items() if f.get("note")]


def have_matplotlib() -> bool:
    """Whether ``--plot`` can work (matplotlib is in the ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


SUITES = (
    "all",
    "ingest",
    "replicated",
    "quorum",
    "inprocess",
    "overhead",
    "failover",
    "catchup",
    "latency",
)


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
    ap.add_argument(
        "--quick", action="store_true", help="smaller runs, labelled QUICK (all: about 90 s)"
    )
    ap.add_argument("--json", metavar="OUT", help="write the figures to this JSON file")
    ap.add_argument(
        "--plot", metavar="OUT.png", help="write a PNG plot (needs the 'bench' extra: matplotlib)"
    )
    ap.add_argument(
        "--markdown", metavar="OUT.md", help="write the table as Markdown (for the README)"
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="progress lines on stderr")
    return ap


def listing() -> str:
    """What a bare ``netmesh bench`` prints: the suites it can run."""
    lines = ["netmesh bench runs one of:"]
    lines += [f"  netmesh bench {name} [--quick] [--json OUT] [--plot OUT.png]" for name in SUITES]
    lines += [
        "  netmesh bench peers [--quick]     (Redis streams and the Rust wheel, same machine)",
        "  netmesh bench clients [--quick]   (publisher -> subscriber processes vs Redis"
        " Streams and NATS JetStream)",
        "  netmesh bench bus [--quick]       (EventBus per adapter vs the reference's bus)",
        "  netmesh bench groups [--quick]    (consumer groups vs Redis / JetStream)",
        "  netmesh bench storage [--quick] [--baseline PATH]  (persisted log: RSS vs size,"
        " cold reads, fsync'd acks, catch-up vs JetStream file store and Redis AOF)",
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
    if argv and argv[0] == "clients":  # publisher -> subscriber processes (issue 11)
        from benchmarks import clients

        return clients.main(argv[1:])
    if argv and argv[0] == "bus":  # the EventBus per adapter vs the reference's bus
        from benchmarks import bus

        return bus.main(argv[1:])
    if argv and argv[0] == "groups":  # consumer groups vs Redis / JetStream (issue 12)
        from benchmarks import groups

        return groups.main(argv[1:])
    if argv and argv[0] == "storage":  # a persisted log past RAM vs its peers (issue 15)
        from benchmarks import storage

        return storage.main(argv[1:])
    ap = parser()
    args = ap.parse_args(argv)
    if args.which is None:
        print(listing())
        return 0
    if args.plot and not have_matplotlib():
        ap.error("--plot needs matplotlib: pip install 'netmesh[bench]' (nothing was run)")
    console = Console(width=None if sys.stdout.isatty() else 160)

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    with Progress(console=console, transient=True, disable=args.verbose) as progress:
        results = run(args.which, args.quick, log, progress)
    console.print(report(results))
    for line in notes(results):
        console.print(line, markup=False, highlight=False)
    console.print(
        f"{results['date']} commit {results['commit']} | {results['cpu_model']} x"
        f"{results['cpu_count']} | {results['bench_seconds']} s | shared machine: "
        "compare ratios, not absolute figures",
        markup=False,
        highlight=False,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(strict_json(results), fh, indent=2, allow_nan=False)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(results))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

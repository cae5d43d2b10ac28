"""Idle replicated channels at scale (issue 10 §6 "at scale", issue 15 §4 idle CPU).

Two things live here:

* ``test_thousands_of_idle_channels_keep_their_leaders``: 3 real nodes, 2,000 idle
  replicated channels at a 150 ms heartbeat keep one leader each with no leader
  change over a few idle seconds (quiescence: idle channels send no per-channel
  heartbeats; one liveness beat per peer keeps their followers quiet).
* ``measure`` and ``python -m tests.system.test_idle_scale``: the figures of the
  issue note (idle CPU per node and leader changes in 5 idle seconds for N
  replicated channels, optionally next to M plain channels). CPU is the node
  processes' user+system time over the window, in percent of one core.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import psutil
import pytest

from netmesh import Cluster, ReplicationConfig
from netmesh.errors import NodeUnresponsive
from netmesh.testing.wait import wait_until

HEARTBEAT_MS = 150


def census(c: Cluster, fresh: bool = True, since: float | None = None) -> tuple[int, int, int]:
    """(channels with exactly one leader, leader changes so far, quiescent channels)
    over every live node: fresh metrics (asked over the control connection: a node
    with thousands of channels stalls its loop building them), or its metrics page,
    waiting until every channel entry was sampled after ``since`` (monotonic s)."""
    if since is not None:
        wait_until(
            lambda: all(
                (n.get("channels_sampled_since") or 0.0) >= since
                for n in c.metrics()["nodes"]
                if n.get("alive")
            ),
            timeout=120,
            interval=0.25,
            message="metrics pages sampled",
        )
    leaders: dict[str, int] = {}
    changes = quiet = 0
    for node in c.metrics(fresh=fresh)["nodes"]:
        if not node.get("alive"):
            continue  # a killed node's page still shows its last roles
        chans: dict[str, Any] = node.get("channels") or {}
        for name, ch in chans.items():
            changes += int(ch.get("leader_changes_total", 0))
            quiet += int(bool(ch.get("quiescent", False)))
            role = ch.get("role")
            if getattr(role, "name", role) == "LEADER":
                leaders[name] = leaders.get(name, 0) + 1
    return sum(1 for n in leaders.values() if n == 1), changes, quiet


def _node_cpu_seconds(c: Cluster) -> list[float]:
    out = []
    for node in c.metrics()["nodes"]:
        t = psutil.Process(node["pid"]).cpu_times()
        out.append(t.user + t.system)
    return out


def open_channels(c: Cluster, replicated: int, plain: int = 0) -> None:
    """Open ``r/0..`` (factor 3) and ``p/0..`` (not replicated); an open that a busy
    node did not answer in time is tried again (opening is idempotent on a node)."""
    names = [(f"r/{i}", ReplicationConfig(factor=3)) for i in range(replicated)]
    names += [(f"p/{i}", None) for i in range(plain)]
    for name, repl in names:
        for attempt in range(5):
            try:
                c.open_channel(name, repl)
                break
            except NodeUnresponsive:
                if attempt == 4:
                    raise


def settle(c: Cluster, replicated: int, timeout: float = 120.0, fresh: bool = True) -> None:
    """Until every replicated channel has one leader."""
    wait_until(
        lambda: census(c, fresh)[0] == replicated,
        timeout=timeout,
        interval=0.2 if fresh else 1.0,
        message=f"one leader for each of {replicated} channels",
    )


def measure(replicated: int, plain: int = 0, seconds: float = 5.0) -> dict[str, Any]:
    """Open the channels on 3 nodes, let them settle (one leader each, then two more
    seconds), and return idle CPU per node (% of a core) and leader changes over
    ``seconds`` idle seconds. Only the nodes' metrics pages are read (no control
    call that would stall a node's loop), each after every entry was resampled."""
    with Cluster(nodes=3, heartbeat_ms=HEARTBEAT_MS) as c:
        open_channels(c, replicated, plain)
        with contextlib.suppress(TimeoutError):  # "before": 5,000 channels never settled
            settle(c, replicated, timeout=90.0, fresh=False)
        t_settled = time.monotonic()
        wait_until(lambda: time.monotonic() - t_settled >= 2.0, timeout=5, interval=0.05)
        _, changes0, _ = census(c, fresh=False, since=t_settled)
        cpu0, t0 = _node_cpu_seconds(c), time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= seconds, timeout=seconds + 5, interval=0.05)
        cpu1, t1 = _node_cpu_seconds(c), time.monotonic()
        leaders, changes1, quiet = census(c, fresh=False, since=t1)
        return {
            "replicated": replicated,
            "plain": plain,
            "cpu_percent": [
                round(100 * (b - a) / (t1 - t0), 1) for a, b in zip(cpu0, cpu1, strict=True)
            ],
            "leader_changes": changes1 - changes0,
            "one_leader": leaders,
            "quiescent": quiet,
        }


@pytest.mark.system
def test_thousands_of_idle_channels_keep_their_leaders() -> None:
    """Read through the metrics pages only: a control call building 2,000 channel
    entries would stall the node's loop past the election window on a busy machine."""
    n = 2000
    with Cluster(nodes=3, heartbeat_ms=HEARTBEAT_MS) as c:
        open_channels(c, n)
        settle(c, n, fresh=False)
        # idle channels go quiescent on all three nodes (leader and both followers)
        wait_until(
            lambda: census(c, fresh=False)[2] == 3 * n, timeout=60, interval=0.5, message="quiet"
        )
        t0 = time.monotonic()
        one0, changes0, _ = census(c, fresh=False, since=t0)
        assert one0 == n
        t1 = time.monotonic() + 3.0  # three idle seconds
        wait_until(lambda: time.monotonic() >= t1, timeout=5, interval=0.05)
        one, changes, quiet = census(c, fresh=False, since=t1)
        assert (one, changes - changes0, quiet) == (n, 0, 3 * n)


@pytest.mark.system
def test_a_node_killed_while_its_channels_are_quiescent_fails_over() -> None:
    """SIGKILL a node whose channels are all quiescent: every channel it led gets a new
    leader within a few silence windows (followers wake on node liveness, not on
    per-channel heartbeats that stopped long ago), and the first append after idle
    replicates at once."""
    n = 60
    with Cluster(nodes=3, heartbeat_ms=HEARTBEAT_MS) as c:
        open_channels(c, n)
        settle(c, n)
        wait_until(lambda: census(c)[2] == 3 * n, timeout=30, interval=0.1, message="quiescence")
        leaders = {f"r/{i}": c.leader(f"r/{i}") for i in range(n)}
        victim = max(range(3), key=list(leaders.values()).count)
        led = [name for name, node in leaders.items() if node == victim]
        assert led, "no node leads any channel"
        c.kill(victim)
        t0 = time.monotonic()

        def failed_over() -> bool:
            return all(c.leader(name) not in (None, victim) for name in led)

        wait_until(failed_over, timeout=10, interval=0.05, message="failover")
        took = time.monotonic() - t0
        assert took < 10 * 3 * HEARTBEAT_MS / 1000, took  # generous: shared CPUs
        # the survivors go quiescent again, leaving the dead node out
        wait_until(lambda: census(c)[2] == 2 * n, timeout=60, interval=0.2, message="quiet again")
        name = led[0]
        node = c.leader(name)
        assert node is not None
        seq = c.append(node, name, [b"after failover"])
        other = 3 - node - victim
        wait_until(lambda: c.next_seq(other, name) > seq, timeout=5, message="replicated")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--replicated", type=int, nargs="*", default=[100, 1000, 5000])
    ap.add_argument("--mixed", action="store_true", help="also 10,000 open, 1,000 replicated")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    runs = [(n, 0) for n in args.replicated]
    if args.mixed:
        runs.append((1000, 9000))
    for n, plain in runs:
        print(measure(n, plain, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

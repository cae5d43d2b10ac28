"""Storage-layer figures (issue 15 §3/§5, issue 17 §3): run against any netmesh tree.

``python -m benchmarks.storage_bench quorum|catchup|reopen|inproc [--quick]`` prints one
JSON line per figure. Before/after comparisons run the same script twice in the same
session, once with ``PYTHONPATH=<old tree>`` (worker processes inherit it), so only
same-run ratios are compared (the machine is shared; absolute figures mean little).

* ``quorum``: factor 3, ``ack="quorum"``, ``data_dir`` (fsync="batch"), 64 B events,
  one flush per 500; one producer on one channel, then ``--channels`` producers
  (threads) on as many channels at once: quorum-acknowledged events/s.
* ``catchup``: factor 2 with ``data_dir``; the replica is killed, the leader appends
  ``--mb`` MB of 1 KiB and 16 KiB events, the replica restarts: payload MB/s until it
  holds them all, with the budget lifted and with the default budget. ``--profile DIR``:
  py-spy records both nodes during the catch-up (``DIR/<figure>_{leader,follower}.txt``,
  collapsed stacks; py-spy must be installed).
* ``reopen``: a persisted file of ``--events`` 64 B events (batches of 64), closed,
  then reopened: seconds.
* ``inproc``: ``RedexFile.append`` single event in memory, events/s, next to the
  net-mesh wheel's when it is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any


def _emit(**fig: Any) -> None:
    print(json.dumps(fig), flush=True)


def bench_quorum(seconds: float, channels: int) -> None:
    from netmesh.cluster.cluster import Cluster
    from netmesh.config import ReplicationConfig

    every = 500
    chunk = [b"x" * 64] * every
    tmp = tempfile.mkdtemp(prefix="nm-q-")
    try:
        with Cluster(nodes=3, heartbeat_ms=150, data_dir=tmp) as c:
            names = [f"bench/q{i}" for i in range(channels)]
            for name in names:
                c.open_channel(
                    name,
                    ReplicationConfig(
                        factor=3, heartbeat_ms=150, ack="quorum", leader_pinned=c.node_ids[0]
                    ),
                )
            for name in names:
                c.wait_until(lambda n=name: c.leader(n) == 0, timeout=20, message="leader")

            def run(name: str, out: list[float]) -> None:
                with c.producer(0, name) as p:
                    p.append_batch(chunk)
                    p.flush(timeout=30)  # warm-up: every replica streams
                    n = 0
                    t0 = time.perf_counter()
                    while time.perf_counter() - t0 < seconds:
                        p.append_batch(chunk)
                        p.flush(timeout=30)
                        n += every
                    out.append(n / (time.perf_counter() - t0))

            one: list[float] = []
            run(names[0], one)
            _emit(figure="quorum_eps_1ch", value=one[0])
            many: list[float] = []
            threads = [threading.Thread(target=run, args=(n, many)) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _emit(figure=f"quorum_eps_{channels}ch_total", value=sum(many))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_catchup(
    mb: int, size: int, budget: bool, chunk: int | None = None, profile: str | None = None
) -> None:
    from netmesh.cluster.cluster import Cluster
    from netmesh.config import ReplicationConfig

    n = mb * 1_000_000 // size
    tmp = tempfile.mkdtemp(prefix="nm-c-")
    try:
        with Cluster(nodes=2, heartbeat_ms=150, data_dir=tmp) as c:
            cfg = ReplicationConfig(factor=2, heartbeat_ms=150, leader_pinned=c.node_ids[0])
            if not budget:
                cfg = dataclasses.replace(cfg, nic_peak_bytes_per_s=10**12)
            if chunk is not None:
                cfg = dataclasses.replace(cfg, sync_chunk_bytes=chunk)
            # fsync "never" while filling (the figure is the catch-up, not the fill)
            c.open_channel("bench/c", cfg, cache_bytes=1 << 20)
            c.wait_until(lambda: c.leader("bench/c") == 0, timeout=20, message="leader")
            c.kill(1)
            batch = max(1, (256 << 10) // size)
            payload = os.urandom(size)
            with c.producer(0, "bench/c") as p:
                done = 0
                while done < n:
                    k = min(batch, n - done)
                    p.append_batch([payload] * k)
                    done += k
                p.flush(timeout=120)
            c.restart(1)
            figure = f"catchup_mb_s_{size}B_{'budget' if budget else 'unbudgeted'}" + (
                f"_chunk{chunk}" if chunk else ""
            )
            spies = [] if profile is None else _spy(c, profile, figure)
            t0 = time.perf_counter()
            wait_caught_up(c, 1, "bench/c", n, t0)
            dt = time.perf_counter() - t0
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            for spy in spies:
                spy.wait(timeout=60)
            _emit(
                figure=figure,
                value=n * size / dt / 1e6,
                seconds=dt,
                mb=n * size / 1e6,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_caught_up(
    c: Any, node: int, channel: str, n: int, t0: float, timeout: float = 900
) -> None:
    """Wait until ``node`` holds ``n`` events of ``channel``, asking it (a control call)
    every 50 ms until it holds 90% of them, then every 5 ms: the figure's resolution
    is a few ms, and the replica is not asked 100-200 times a second while it works
    (each answer wakes the benchmark process, which took CPU from the replica on a
    loaded two-core machine). Raises TimeoutError after ``timeout`` s from ``t0``."""
    while True:
        got = c.next_seq(node, channel)
        if got >= n:
            return
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{channel} on node {node}: {got} of {n} events")
        time.sleep(0.05 if got < 0.9 * n else 0.005)


def _spy(c: Any, out_dir: str, figure: str) -> list[subprocess.Popen[bytes]]:
    """py-spy record (collapsed stacks, 200 Hz, idle samples included: a node waiting
    for its peer shows as time in the selector) on node 0 (leader) and 1 (follower)."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = ["py-spy", "record", "-r", "200", "-f", "raw", "--idle"]
    return [
        subprocess.Popen(
            [
                *cmd,
                "--pid",
                str(c.info[i]["pid"]),
                "-o",
                os.path.join(out_dir, f"{figure}_{who}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, who in ((0, "leader"), (1, "follower"))
    ]


def bench_reopen(events: int, batch: int = 64) -> None:
    """Fill a persisted file in a child process that then dies without closing it (a
    SIGKILLed node), reopen it (crash recovery), close it cleanly, reopen again."""
    from netmesh.config import RedexFileConfig
    from netmesh.log.file import RedexFile

    tmp = tempfile.mkdtemp(prefix="nm-r-")
    fill = (
        "import os, sys\n"
        "from netmesh.config import RedexFileConfig\n"
        "from netmesh.log.file import RedexFile\n"
        "f = RedexFile('bench/r', RedexFileConfig(path=sys.argv[1], fsync='never'))\n"
        "chunk = [b'y' * 64] * int(sys.argv[3])\n"
        "for _ in range(int(sys.argv[2]) // len(chunk)):\n"
        "    f.append_batch(chunk)\n"
        "os._exit(0)  # no close: as a killed process\n"
    )
    try:
        subprocess.run([sys.executable, "-c", fill, tmp, str(events), str(batch)], check=True)
        cfg = RedexFileConfig(path=tmp, fsync="never")
        want = events // batch * batch
        t0 = time.perf_counter()
        g = RedexFile("bench/r", cfg)
        dt = time.perf_counter() - t0
        assert g.next_seq == want, (g.next_seq, want)
        g.close()
        _emit(figure="reopen_after_crash_s", value=dt, events=events, batch=batch)
        t0 = time.perf_counter()
        g = RedexFile("bench/r", cfg)
        dt = time.perf_counter() - t0
        assert g.next_seq == want
        g.close()
        _emit(figure="reopen_s", value=dt, events=events, batch=batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_inproc(n: int, rounds: int) -> None:
    from benchmarks import wheels

    def ours() -> float:
        return float(wheels.netmesh_rate(n, 64, 1))

    def wheel() -> float | None:
        try:
            return float(wheels.wheel_inprocess(n, 64, 1))
        except Exception:
            return None

    xs, ws = [], []
    for _ in range(rounds):
        xs.append(ours())
        w = wheel()
        if w is not None:
            ws.append(w)
    xs.sort()
    ws.sort()
    med = xs[len(xs) // 2]
    wm = ws[len(ws) // 2] if ws else None
    _emit(figure="inproc_append_eps", value=med, wheel=wm, ratio=(med / wm) if wm else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storage_bench")
    ap.add_argument("what", choices=["quorum", "catchup", "reopen", "inproc"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--size", type=int, action="append")
    ap.add_argument("--events", type=int, default=8_000_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=None, help="sync_chunk_bytes")
    ap.add_argument("--profile", default=None, help="catchup: py-spy both nodes into DIR")
    a = ap.parse_args(argv)
    if a.what == "quorum":
        bench_quorum(1.5 if a.quick else a.seconds, a.channels)
    elif a.what == "catchup":
        for size in a.size or [1024, 16384]:
            for budget in (False, True):
                bench_catchup(32 if a.quick else a.mb, size, budget, a.chunk, a.profile)
    elif a.what == "reopen":
        bench_reopen(500_000 if a.quick else a.events, a.batch)
    else:
        bench_inproc(200_000 if a.quick else 1_000_000, 3 if a.quick else 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

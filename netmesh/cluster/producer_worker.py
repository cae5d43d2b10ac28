"""Producer process: appends generated events to a channel through a shared-memory ring.

Started as ``python -P -m netmesh.cluster.producer_worker --ring NAME --channel C --events N
[--batch B] [--size S] [--rate R] [--parent-pid P]`` on a ring the supervisor created and attached
to a node (``Cluster.spawn_producer`` does all of this). It writes ``--events`` events
of ``--size`` bytes, ``--batch`` per ``append_batch`` (1: ``append``), at most
``--rate`` events/s (0: as fast as the ring allows), flushes, and prints one JSON line:
``{"events", "seconds", "last_seq", "events_per_s"}``.

Exit codes: 0 done, 1 refused or node unresponsive (the message is on stderr), 2 bad
arguments, 3 supervisor gone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import time

from netmesh.cluster.producer import Producer
from netmesh.errors import NetmeshError

PR_SET_PDEATHSIG = 1


def produce(p: Producer, events: int, batch: int, size: int, rate: int) -> tuple[int, float]:
    """Append ``events`` events; returns (last seq, seconds)."""
    payload = b"x" * size
    chunk = [payload] * batch
    t0 = time.perf_counter()
    if not rate:  # as fast as the ring allows: tight loops, no pacing arithmetic
        if batch == 1:
            append = p.append
            for _ in range(events):
                append(payload)
        else:
            for _ in range(events // batch):
                p.append_batch(chunk)
            if events % batch:
                p.append_batch(chunk[: events % batch])
        return p.flush(timeout=120), time.perf_counter() - t0
    sent = 0
    while sent < events:
        k = min(batch, events - sent)
        if k == 1:
            p.append(payload)
        else:
            p.append_batch(chunk if k == batch else chunk[:k])
        sent += k
        if rate:
            ahead = sent / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)  # pacing of the offered load
    last = p.flush(timeout=120)
    return last, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netmesh.cluster.producer_worker", description=__doc__)
    ap.add_argument("--ring", required=True)
    ap.add_argument("--channel", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)
    if args.events < 0 or args.batch < 1 or args.size < 0 or args.rate < 0:
        ap.error("--events, --size and --rate must be >= 0 and --batch >= 1")
    if args.parent_pid:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != args.parent_pid:
            return 3
    with Producer(args.ring, args.channel) as p:
        try:
            last, seconds = produce(p, args.events, args.batch, args.size, args.rate)
        except NetmeshError as exc:
            print(f"netmesh.cluster.producer_worker: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(
        json.dumps(
            {
                "events": args.events,
                "seconds": seconds,
                "last_seq": last,
                "events_per_s": args.events / seconds if seconds else 0.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

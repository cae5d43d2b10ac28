"""Profile node processes under a replicated load with py-spy (``pip install py-spy``).

Starts a 2-node cluster (factor 2, leader pinned to node 0), attaches ``py-spy record``
to both node processes while this process produces single appends (the overhead
benchmark's load) or batches, and prints each node's top functions by own time and by
inclusive time. This is how the hot paths were found; see the closing notes of the
benchmark issue.

Usage: python -m benchmarks.profile_node [--seconds 4] [--batch 1] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

from netmesh.cluster.cluster import Cluster
from netmesh.config import ReplicationConfig


def summarize(path: str, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            total += int(n)
            own[frames[-1]] += int(n)
            for f in set(frames):
                incl[f] += int(n)
    print(f"  {total} samples")
    for title, table in (("own", own), ("inclusive", incl)):
        print(f"  top by {title} time:")
        for frame, count in table.most_common(top):
            print(f"    {100 * count / max(total, 1):5.1f}%  {frame[:100]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=1, help="events per append call")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out = tempfile.mkdtemp(prefix="netmesh-profile-")
    with Cluster(nodes=2, heartbeat_ms=150) as c:
        c.open_channel(
            "prof", ReplicationConfig(factor=2, heartbeat_ms=500, leader_pinned=c.node_ids[0])
        )
        c.wait_until(lambda: c.leader("prof") == 0, timeout=10, message="pinned leader")
        spies = [
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-r",
                    "400",
                    "-d",
                    str(int(args.seconds)),
                    "-f",
                    "raw",
                    "-o",
                    os.path.join(out, f"node{i}.txt"),
                    "-p",
                    str(c.info[i]["pid"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(2)
        ]
        payload = b"x" * 64
        sent = 0
        with c.producer(0, "prof") as p:
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                if args.batch == 1:
                    for _ in range(1000):
                        p.append(payload)
                    sent += 1000
                else:
                    p.append_batch([payload] * args.batch)
                    sent += args.batch
            p.flush(timeout=60)
        for s in spies:
            s.wait(60)
    print(f"{sent:,} events in {args.seconds}s ({sent / args.seconds:,.0f}/s offered)")
    for i, role in enumerate(("leader", "replica")):
        print(f"node {i} ({role}):")
        summarize(os.path.join(out, f"node{i}.txt"), args.top)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``netmesh`` command line."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

from netmesh.config import RedexFileConfig
from netmesh.errors import RingClosed
from netmesh.redex import Redex
from netmesh.shm_ring import ShmRing, unlink_ring


def _demo_producer(ring_name: str, n: int) -> None:
    ring = ShmRing.attach(ring_name)
    for i in range(0, n, 100):
        ring.put_batch([b"event-%d" % j for j in range(i, min(n, i + 100))])
    ring.close_producer()
    ring.close()


def cmd_demo(args: argparse.Namespace) -> int:
    """A producer process appends through a shared-memory ring into a persisted file."""
    n = args.events
    name = f"/netmesh-demo-{os.getpid()}"
    ring = ShmRing.create(name, 1 << 20)
    proc = mp.get_context("fork").Process(target=_demo_producer, args=(name, n))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            redex = Redex()
            f = redex.open_file("demo/events", RedexFileConfig(path=tmp, fsync="batch"))
            t0 = time.perf_counter()
            proc.start()
            try:
                while True:
                    f.append_batch(ring.get_batch(4096, timeout=5))
            except RingClosed:
                pass
            elapsed = time.perf_counter() - t0
            proc.join(5)
            print(f"appended {f.next_seq} events through a shared-memory ring in {elapsed:.2f}s")
            redex.close()
            f2 = Redex().open_file("demo/events", RedexFileConfig(path=tmp))
            last = f2.read_range(f2.next_seq - 3, f2.next_seq)
            print(f"reopened from disk: next_seq={f2.next_seq}, last events:")
            for ev in last:
                print(f"  seq={ev.entry.seq} payload={ev.payload!r}")
            ok = f2.next_seq == n and last[-1].payload == b"event-%d" % (n - 1)
            f2.close()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        ring.close()
        unlink_ring(name)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netmesh", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="append through a ring into a persisted file, read back")
    demo.add_argument("--events", type=int, default=100_000)
    demo.set_defaults(func=cmd_demo)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""Ring and event-file throughput: producer process -> consumer process over ShmRing.

Prints events/s and MB/s (payload bytes, 10^6) for 64 B and 1 KiB payloads, one record
per put and 64 per put_batch, taken as one ``bytes`` per record (``get_batch``) and as
frames copied out in one piece (``take_frames``, what a node does), then
RedexFile.append_batch in memory and persisted with fsync "batch", and append_frames in
memory. Usage: python -m benchmarks.bench_ring [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

from netmesh.config import RedexFileConfig
from netmesh.errors import RingClosed
from netmesh.log.file import RedexFile
from netmesh.ring.shm import ShmRing, unlink_ring


def _produce(name: str, n: int, size: int, batch: int, start: mp.synchronize.Event) -> None:
    ring = ShmRing.attach(name)
    payload = b"x" * size
    start.wait()
    if batch == 1:
        put = ring.put
        for _ in range(n):
            put(payload)
    else:
        chunk = [payload] * batch
        for _ in range(n // batch):
            ring.put_batch(chunk)
    ring.close_producer()
    ring.close()


def ring_rate(size: int, batch: int, n: int, frames: bool = False) -> float:
    """Events/s through a 4 MiB ring, measured at the consumer; ``frames``: taken with
    ``take_frames`` (no object per record) instead of ``get_batch``."""
    ctx = mp.get_context("fork")
    name = f"/netmesh-bench-{os.getpid()}"
    ring = ShmRing.create(name, 1 << 22)
    start = ctx.Event()
    proc = ctx.Process(target=_produce, args=(name, n, size, batch, start))
    try:
        proc.start()
        start.set()
        t0 = time.perf_counter()
        got = 0
        try:
            while True:
                if frames:
                    taken = ring.take_frames(8192)
                    if taken is None:
                        ring.wait_readable(10)
                    else:
                        got += taken.count
                else:
                    got += len(ring.get_batch(8192, timeout=10))
        except RingClosed:
            pass
        elapsed = time.perf_counter() - t0
        proc.join(10)
        assert got == n // batch * batch, (got, n)
        return got / elapsed
    finally:
        if proc.is_alive():
            proc.kill()
        ring.close()
        unlink_ring(name)


def file_rate(size: int, persisted: bool, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RedexFileConfig(path=tmp if persisted else None, fsync="batch")
        f = RedexFile("bench", cfg)
        batch = [b"x" * size] * 64
        t0 = time.perf_counter()
        for _ in range(n // 64):
            f.append_batch(batch)
        elapsed = time.perf_counter() - t0
        f.close()
    return n // 64 * 64 / elapsed


def frames_rate(size: int, n: int) -> float:
    """RedexFile.append_frames in memory: frames of 64 records, up to 1 MiB of them per
    call, as a node appends what one ``take_frames`` copied out (that copy included;
    one thread puts and takes, so the ring never fills)."""
    name = f"/netmesh-bench-f-{os.getpid()}"
    ring = ShmRing.create(name, 1 << 22)
    per_take = max(1, (1 << 20) // (64 * (size + 4)))
    try:
        f = RedexFile("bench")
        batch = [b"x" * size] * 64
        done = 0
        t0 = time.perf_counter()
        while done < n:
            for _ in range(per_take):
                ring.put_batch(batch, timeout=10)
            taken = ring.take_frames(1 << 16)
            assert taken is not None
            f.append_frames(taken)
            done += taken.count
        elapsed = time.perf_counter() - t0
        f.close()
    finally:
        ring.close()
        unlink_ring(name)
    return done / elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer events, one run")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else 3
    scale = 0.25 if args.quick else 1.0
    results: dict[str, float] = {}
    print(f"{'case':<34}{'events/s':>14}{'MB/s':>10}")
    for size in (64, 1024):
        for batch in (1, 64):
            for frames in (False, True):
                n = int((300_000 if batch == 1 else 2_000_000) * scale)
                rate = statistics.median(ring_rate(size, batch, n, frames) for _ in range(runs))
                key = f"ring_{size}B_batch{batch}" + ("_frames" if frames else "")
                results[key] = rate
                print(f"{key:<34}{rate:>14,.0f}{rate * size / 1e6:>10.1f}")
    for size in (64, 1024):
        for persisted in (False, True):
            n = int(640_000 * scale)
            rate = statistics.median(file_rate(size, persisted, n) for _ in range(runs))
            key = f"redexfile_{size}B_{'disk_fsync_batch' if persisted else 'memory'}"
            results[key] = rate
            print(f"{key:<34}{rate:>14,.0f}{rate * size / 1e6:>10.1f}")
        n = int(640_000 * scale)
        rate = statistics.median(frames_rate(size, n) for _ in range(runs))
        key = f"redexfile_{size}B_memory_frames"
        results[key] = rate
        print(f"{key:<34}{rate:>14,.0f}{rate * size / 1e6:>10.1f}")
    print(f"(cpu_count={os.cpu_count()}, python {sys.version.split()[0]}, median of {runs})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()

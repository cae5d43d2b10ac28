"""Encrypted MeshNode throughput between two processes on loopback.

One process runs a sending MeshNode, another a receiving one. The sender queues
``--batch`` messages per loop turn with ``send_many`` (packed into datagrams of at
most ``--max-datagram`` bytes: one msgpack + one AEAD + one sendto each). The
receiver counts messages in a ``subscribe_batch`` handler and returns a credit
message every ``ack_every`` messages; the sender keeps at most ``window`` messages
unacknowledged, so the receiver's socket buffer never overflows (MeshNode itself is
best-effort). Reported: delivered messages/s and payload MB/s, measured by the
sender from its first send to the ack covering the last message.

    python -m benchmarks.bench_transport                     # 64 B and 1 KiB, two datagram sizes
    python -m benchmarks.bench_transport --size 64 --count 2000000 --max-datagram 8192
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import struct
import sys
import time
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netmesh import EntityKeypair, MeshNode, MeshNodeConfig

log = logging.getLogger("bench_transport")
PSK = b"bench-psk-0123456789abcdef012345"


def _cfg(max_datagram: int) -> MeshNodeConfig:
    return MeshNodeConfig(
        "127.0.0.1:0",
        PSK,
        heartbeat_interval=0.5,
        session_timeout=10.0,
        max_datagram=max_datagram,
        recv_buffer=4 << 20,
        send_buffer=4 << 20,
    )


def receiver_main(
    conn: Connection, key: bytes, sender_key: bytes, max_datagram: int, total: int, ack_every: int
) -> None:
    if os.environ.get("NETMESH_BENCH_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="receiver %(name)s %(message)s")

    async def main() -> None:
        kp = EntityKeypair.from_private_bytes(key)
        sender = EntityKeypair.from_private_bytes(sender_key)
        node = await MeshNode.create(kp, _cfg(max_datagram))
        conn.send(node.local_addr)
        count = 0
        last_ack = 0
        done = asyncio.Event()

        def on_batch(src: int, msgs: list[bytes]) -> None:
            nonlocal count, last_ack
            count += len(msgs)
            if count - last_ack >= ack_every or count >= total:
                last_ack = count
                node.send(src, "ack", struct.pack("<Q", count))
                if count >= total:
                    done.set()

        node.subscribe_batch("bench", on_batch)
        await node.accept(sender.node_id)
        node.start()
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
            log.debug("received %d of %d; metrics %s", count, total, node.metrics())
        await asyncio.sleep(0.05)  # let the final ack leave
        conn.send(node.metrics())
        await node.shutdown()

    asyncio.run(main())


async def sender(
    addr: tuple[str, int],
    rkp: EntityKeypair,
    skp: EntityKeypair,
    size: int,
    total: int,
    batch: int,
    window: int,
    max_datagram: int,
) -> dict[str, float]:
    node = await MeshNode.create(skp, _cfg(max_datagram))
    acked = 0
    progressed = asyncio.Event()

    def on_ack(src: int, msg: bytes) -> None:
        nonlocal acked
        acked = max(acked, struct.unpack("<Q", msg)[0])
        progressed.set()

    node.subscribe("ack", on_ack)
    await node.connect(addr, rkp.public_key, rkp.node_id)
    node.start()
    msgs = [os.urandom(size) for _ in range(batch)]
    sent = 0
    t0 = time.perf_counter()

    async def wait_progress() -> None:
        progressed.clear()
        try:
            await asyncio.wait_for(progressed.wait(), 10.0)
        except TimeoutError:
            raise RuntimeError(f"sent {sent}, acked {acked} of {total}; {node.metrics()}") from None

    while sent < total:
        while sent - acked >= window:
            await wait_progress()
        n = min(batch, total - sent)
        node.send_many(rkp.node_id, "bench", msgs if n == batch else msgs[:n])
        sent += n
        await asyncio.sleep(0)
    while acked < total:
        await wait_progress()
    elapsed = time.perf_counter() - t0
    m = node.metrics()
    await node.shutdown()
    return {"elapsed": elapsed, "datagrams": float(m["datagrams_out"])}  # type: ignore[arg-type]


def run_case(size: int, total: int, max_datagram: int, batch: int, window: int) -> None:
    rkp, skp = EntityKeypair.generate(), EntityKeypair.generate()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    ack_every = max(1, window // 8)
    proc = ctx.Process(
        target=receiver_main,
        args=(child, rkp.private_key, skp.private_key, max_datagram, total, ack_every),
    )
    proc.start()
    try:
        addr = parent.recv()
        res = asyncio.run(sender(addr, rkp, skp, size, total, batch, window, max_datagram))
        rmetrics = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    rate = total / res["elapsed"]
    per_dgram = total / res["datagrams"]
    drops = {k: v for k, v in rmetrics["drops"].items() if v}
    print(
        f"{size:>5} B  max_datagram={max_datagram:<5} msgs={total:>9,}  "
        f"{rate / 1e6:6.3f} M msgs/s  {rate * size / 1e6:8.1f} MB/s  "
        f"{per_dgram:6.1f} msgs/datagram  {res['elapsed']:.2f} s  drops={drops or 0}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, action="append")
    ap.add_argument("--count", type=int, default=0, help="messages per case")
    ap.add_argument("--max-datagram", type=int, action="append")
    ap.add_argument("--batch", type=int, default=2048, help="messages per send_many")
    args = ap.parse_args()
    sizes = args.size or [64, 1024]
    dgrams = args.max_datagram or [8192, 1400]
    print(f"netmesh transport benchmark: 2 processes, loopback, python {sys.version.split()[0]}")
    for max_datagram in dgrams:
        for size in sizes:
            total = args.count or (3_000_000 if size <= 128 else 400_000)
            per_dgram = max(1, (max_datagram - 40) // (size + 3))
            window = 256 * per_dgram  # datagrams in flight << receiver SO_RCVBUF
            run_case(size, total, max_datagram, min(args.batch, window // 2), window)


if __name__ == "__main__":
    main()

"""``netmesh bench groups``: consumer-group throughput and redelivery after a member dies,
next to Redis Streams consumer groups and a NATS JetStream durable pull consumer in the
same run (issue 12).

Throughput: N events are stored first; then 1, 2 or 4 member processes of one group
read and acknowledge them (netmesh: ``subscribe(durable=)`` + ``ack``; Redis:
XREADGROUP COUNT 100 + XACK; NATS: pull ``fetch(100)`` + ``ack``); events/s from the
members' start until the group has acknowledged all N.

Redelivery: two members, one SIGKILLed while it holds unacknowledged events; the time
until the other member has received them. netmesh redelivers when the member's
connection ends; Redis has no timer, so the survivor runs XAUTOCLAIM (min idle 1 s)
every 100 ms; JetStream redelivers after ``ack_wait`` (1 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import spawn_worker, suite_main

PAYLOAD = b"x" * 64


# -- member workers (separate processes) ----------------------------------------------
def member_netmesh(a: dict[str, Any]) -> None:
    import netmesh

    with netmesh.connect(a["name"]) as cl:
        sub = cl.subscribe("bench", durable=a["group"], ack_wait=a.get("ack_wait", 30.0))
        print("ready", flush=True)
        for ev in sub:
            if a.get("hold") and ev.entry.seq < a["hold"]:
                print(f"got {ev.entry.seq} {time.monotonic_ns()}", flush=True)
                continue  # never acknowledged (the victim)
            if a.get("report"):
                print(f"got {ev.entry.seq} {time.monotonic_ns()}", flush=True)
            sub.ack(ev)


def member_redis(a: dict[str, Any]) -> None:
    import redis

    r = redis.Redis.from_url(a["url"])
    me = f"c{os.getpid()}"
    print("ready", flush=True)
    last_claim = 0.0
    while True:
        got = r.xreadgroup(a["group"], me, {"bench": ">"}, count=100, block=200)
        entries = got[0][1] if got else []
        if a.get("claim") and time.monotonic() - last_claim > 0.1:
            last_claim = time.monotonic()
            _, claimed, *_ = r.xautoclaim("bench", a["group"], me, min_idle_time=1000, count=1000)
            entries = list(entries) + list(claimed)
        ids = []
        for eid, fields in entries:
            seq = int(fields[b"s"])
            if a.get("hold") and seq < a["hold"]:
                print(f"got {seq} {time.monotonic_ns()}", flush=True)
                continue
            if a.get("report"):
                print(f"got {seq} {time.monotonic_ns()}", flush=True)
            ids.append(eid)
        if ids:
            r.xack("bench", a["group"], *ids)


def member_nats(a: dict[str, Any]) -> None:
    import nats

    async def go() -> None:
        nc = await nats.connect(a["url"])
        js = nc.jetstream()
        psub = await js.pull_subscribe("bench.x", durable=a["group"], stream="BENCH")
        print("ready", flush=True)
        while True:
            try:
                msgs = await psub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            acks = []
            for m in msgs:
                seq = int(m.headers.get("s", "0")) if m.headers else 0
                if a.get("hold") and seq < a["hold"]:
                    print(f"got {seq} {time.monotonic_ns()}", flush=True)
                    continue
                if a.get("report"):
                    print(f"got {seq} {time.monotonic_ns()}", flush=True)
                acks.append(m.ack())
            await asyncio.gather(*acks)

    asyncio.run(go())


MEMBERS = {"netmesh": member_netmesh, "redis": member_redis, "nats": member_nats}


def worker_main(system: str, spec: str) -> int:
    MEMBERS[system](json.loads(spec))
    return 0


def _spawn(system: str, spec: dict[str, Any], out: Any) -> subprocess.Popen[str]:
    return spawn_worker("groups", [system, json.dumps(spec)], out, subprocess.DEVNULL)


# -- the driver ------------------------------------------------------------------------
class Systems:
    """The three systems, each with N events stored, and how to ask for group progress."""

    def __init__(self, tmp: str, n: int) -> None:
        from netmesh import Cluster, ReplicationConfig
        from netmesh.testing.servers import NatsServer, RedisServer

        self.n = n
        os.environ.setdefault("NETMESH_RUN_DIR", os.path.join(tmp, "run"))
        self.redis = RedisServer(os.path.join(tmp, "r"), appendonly=False)
        self.nats = NatsServer(os.path.join(tmp, "n"))
        self.redis.start()
        self.nats.start()
        self.cluster = Cluster(nodes=3, name=f"groups-{os.getpid()}")
        self.cluster.open_channel("bench", ReplicationConfig(factor=3, ack="quorum"))
        self.cluster.wait_for_leader("bench")
        import redis

        import netmesh

        self.cl = netmesh.connect(self.cluster.name or "")
        with self.cl.producer("bench") as p:
            for i in range(0, n, 1000):
                p.append_batch([PAYLOAD] * min(1000, n - i))
            p.flush()
        self.r = redis.Redis.from_url(self.redis.url)
        pipe = self.r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd("bench", {"s": str(i), "p": PAYLOAD})
        pipe.execute()
        asyncio.run(self._nats_fill())

    async def _nats_fill(self) -> None:
        import nats

        nc = await nats.connect(self.nats.url)
        js = nc.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench.>"])
        for i in range(0, self.n, 500):
            await asyncio.gather(
                *(
                    js.publish("bench.x", PAYLOAD, headers={"s": str(j)})
                    for j in range(i, min(self.n, i + 500))
                )
            )
        await nc.close()

    def new_group(self, system: str, group: str, ack_wait: float) -> dict[str, Any]:
        if system == "redis":
            self.r.xgroup_create("bench", group, id="0")
        elif system == "nats":
            asyncio.run(self._nats_consumer(group, ack_wait))
        return {
            "name": self.cluster.name,
            "url": {"netmesh": "", "redis": self.redis.url, "nats": self.nats.url}[system],
            "group": group,
            "ack_wait": ack_wait,
        }

    async def _nats_consumer(self, group: str, ack_wait: float) -> None:
        import nats
        from nats.js.api import ConsumerConfig

        nc = await nats.connect(self.nats.url)
        await nc.jetstream().add_consumer(
            "BENCH", ConsumerConfig(durable_name=group, ack_wait=ack_wait, max_deliver=-1)
        )
        await nc.close()

    def acked(self, system: str, group: str) -> int:
        if system == "netmesh":
            gs = [g for g in self.cl.consumers("bench") if g["group"] == group]
            return gs[0]["acknowledged_through"] if gs else 0
        if system == "redis":
            info = next(g for g in self.r.xinfo_groups("bench") if g["name"].decode() == group)
            return self.n - int(info.get("lag") or 0) - int(info["pending"])
        return asyncio.run(self._nats_acked(group))

    async def _nats_acked(self, group: str) -> int:
        import nats

        nc = await nats.connect(self.nats.url)
        ci = await nc.jetstream().consumer_info("BENCH", group)
        await nc.close()
        return int(ci.ack_floor.stream_seq)

    def close(self) -> None:
        self.cl.close()
        self.cluster.close()
        self.r.close()
        self.redis.stop()
        self.nats.stop()


def throughput(s: Systems, system: str, members: int, trial: int) -> float:
    spec = s.new_group(system, f"g{members}t{trial}", 30.0)
    procs = []
    t0 = time.perf_counter()
    for _ in range(members):
        procs.append(_spawn(system, spec, subprocess.PIPE))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 300
    while s.acked(system, spec["group"]) < s.n and time.monotonic() < deadline:
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    for p in procs:
        p.kill()
        p.wait()
    return s.n / dt


def _got(text: str) -> list[tuple[int, int]]:
    """(seq, monotonic ns) of every complete "got" line a member wrote so far."""
    out = []
    for line in text.split("\n")[:-1]:  # the last piece may be half-written
        parts = line.split()
        if len(parts) == 3 and parts[0] == "got":
            out.append((int(parts[1]), int(parts[2])))
    return out


def redelivery(s: Systems, system: str, trial: int) -> float | None:
    """ms from a member's SIGKILL until the survivor received what it held."""
    hold = 50
    spec = s.new_group(system, f"re{trial}", 1.0)
    with tempfile.TemporaryFile("w+") as vout, tempfile.TemporaryFile("w+") as sout:
        victim = _spawn(system, {**spec, "hold": hold, "report": True}, vout)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the victim holds the first 50 events
            vout.seek(0)
            if sum(1 for seq, _ in _got(vout.read()) if seq < hold) >= hold:
                break  # (complete lines only: the victim is writing the file)
            time.sleep(0.01)
        survivor = _spawn(system, {**spec, "report": True, "claim": True}, sout)
        time.sleep(0.3)  # the survivor is connected and idle
        t_kill = time.monotonic_ns()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        got: set[int] = set()
        last = 0
        deadline = time.monotonic() + 30
        while len(got) < hold and time.monotonic() < deadline:
            sout.seek(0)
            for seq, ts in _got(sout.read()):
                if seq < hold:
                    got.add(seq)
                    last = max(last, ts)
            time.sleep(0.01)
        survivor.kill()
        survivor.wait()
    return (last - t_kill) / 1e6 if len(got) == hold else None


def run(quick: bool, trials: int) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    out: dict[str, Any] = {"events": n, "trials": trials, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        s = Systems(tmp, n)
        try:
            figures: dict[str, Any] = {}
            for members in (1, 2, 4):
                rows: dict[str, list[float]] = {k: [] for k in MEMBERS}
                for t in range(trials):
                    for system in MEMBERS:
                        rows[system].append(throughput(s, system, members, t))
                figures[f"acked_eps_{members}_members"] = {
                    k: statistics.median(v) for k, v in rows.items()
                }
            red: dict[str, list[float]] = {k: [] for k in MEMBERS}
            for t in range(trials):
                for system in MEMBERS:
                    ms = redelivery(s, system, t)
                    if ms is not None:
                        red[system].append(ms)
            figures["redelivery_ms"] = {
                k: statistics.median(v) if v else None for k, v in red.items()
            }
            out["figures"] = figures
        finally:
            s.close()
    out["load_after"] = os.getloadavg()
    return out


def _ratio(nm: float | None, peer: float | None, lower_is_better: bool) -> str:
    if not peer or not nm:
        return "-"
    return f"{(peer / nm) if lower_is_better else (nm / peer):.2f}x"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def report(res: dict[str, Any]) -> str:
    head = f"{'figure':<24} {'netmesh':>10} {'redis':>10} {'nats':>10}"
    lines = [f"{head} {'vs redis':>9} {'vs nats':>8}"]
    for name, f in res["figures"].items():
        nm, rd, nt = f["netmesh"], f["redis"], f["nats"]
        low = name.endswith("_ms")
        row = f"{name:<24} {_fmt(nm):>10} {_fmt(rd):>10} {_fmt(nt):>10}"
        lines.append(f"{row} {_ratio(nm, rd, low):>9} {_ratio(nm, nt, low):>8}")
    lines.append("ratios: > 1 means netmesh is better")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return suite_main(
        "netmesh bench groups", __doc__, run, report, argv, "20k events, 1 trial", quick_trials=1
    )


if __name__ == "__main__":
    sys.exit(main())

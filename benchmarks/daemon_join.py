"""Time for a newly added node daemon to hold a channel of N MB (issue 13 Figures).

Three ``netmesh node`` daemons (127.0.0.1-3, own configs, data dirs and processes) run
channel ``bulk`` (standard placement, factor 3, ``ack`` quorum by default, default
heartbeat 500 ms, ``fsync`` batch, ``announce_interval_ms`` 200). A producer on the
leader's daemon fills it with at least ``--mb`` MB (10^6 B of payload) of
``--size``-byte events, flushing every 64,000 events (a leader change under that load
moves it to the new leader; ``mb`` reports what was acknowledged). Then a fourth
daemon (127.0.0.4, given the lowest node id so standard placement selects it) is added
the documented way: the others' configs list it and get SIGHUP, then it starts with a
config listing them. It catches up as a learner (quorum) or through the replication
protocol (leader ack) and the set moves to it one node at a time.

Measured from starting the fourth daemon's process:

* ``member_s``: until it runs the channel (a member that knows the leader);
* ``hold_s``: until its log holds every event (``next_seq`` = the events written);
* ``hold_mb_s``: MB / hold_s.

Usage: ``python -m benchmarks.daemon_join [--mb 1024] [--size 1024] [--ack quorum|leader]
[--dir DIR] [--keep]``; prints one ``DAEMON JOIN`` JSON line. Needs 4 x MB of disk
under ``--dir`` (default: a temporary directory, removed afterwards). Absolute
figures on a shared machine move 2-4x between hours (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import netmesh
from netmesh.client.client import Client
from netmesh.identity import EntityKeypair
from netmesh.testing.wait import wait_until

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
NEW = 3
CHANNEL = "bulk"
FLUSH_EVERY = 64_000


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Nodes:
    """Four daemons' keys, PSK and configs under ``root`` (index 3: the lowest id)."""

    def __init__(self, root: Path, ack: str) -> None:
        self.root = root
        self.ack = ack
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o700)
        os.environ["NETMESH_RUN_DIR"] = str(self.run_dir)
        keys = sorted((EntityKeypair.generate() for _ in HOSTS), key=lambda k: k.node_id)
        self.keys = [*keys[1:], keys[0]]  # the newcomer (index 3) has the lowest id
        for i, k in enumerate(self.keys):
            k.save(root / f"n{i}.key")
        psk = root / "cluster.psk"
        psk.write_text(os.urandom(32).hex() + "\n")
        psk.chmod(0o600)
        self.ports = [free_udp_port(h) for h in HOSTS]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.clients: dict[int, Client] = {}
        self.peers: dict[int, list[int]] = {}

    def configure(self, i: int, peers: list[int]) -> None:
        self.peers[i] = peers
        lines = [
            "[node]",
            f'bind = "{HOSTS[i]}:{self.ports[i]}"',
            f'key_file = "n{i}.key"',
            'psk_file = "cluster.psk"',
            f'data_dir = "data-n{i}"',
            f'name = "n{i}"',
            "announce_interval_ms = 200",
        ]
        for j in peers:
            lines += [
                "[[peers]]",
                f'address = "{HOSTS[j]}:{self.ports[j]}"',
                f'public_key = "{self.keys[j].public_key.hex()}"',
            ]
        lines += [
            "[[channels]]",
            f'name = "{CHANNEL}"',
            "factor = 3",
            f'ack = "{self.ack}"',
        ]
        (self.root / f"n{i}.toml").write_text("\n".join(lines) + "\n")

    def start(self, i: int) -> None:
        cfg = str(self.root / f"n{i}.toml")
        with open(self.root / f"n{i}.log", "ab") as logf:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-P", "-m", "netmesh.cli", "node", "--config", cfg],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def client(self, i: int) -> Client:
        def up() -> Client | None:
            assert self.procs[i].poll() is None, f"daemon {i} exited: {self.log(i)[-2000:]}"
            try:
                return netmesh.connect(f"n{i}")
            except netmesh.errors.NetmeshError:
                return None

        if i not in self.clients:
            self.clients[i] = wait_until(up, timeout=60, message=f"daemon {i} serving")
        return self.clients[i]

    def row(self, i: int) -> Any:
        return next((c for c in self.client(i).channels() if c.name == CHANNEL), None)

    def leader(self, among: list[int]) -> int | None:
        seen = set()
        for i in among:
            r = self.row(i)
            if r is None or r.leader is None:
                return None
            seen.add(i if r.leader == 0 else self.peers[i][r.leader - 1])
        return seen.pop() if len(seen) == 1 else None

    def log(self, i: int) -> str:
        return (self.root / f"n{i}.log").read_text(errors="replace")

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def measure(root: Path, mb: float, size: int, ack: str) -> dict[str, Any]:
    n = Nodes(root, ack)
    try:
        for i in range(3):
            n.configure(i, [j for j in range(3) if j != i])
            n.start(i)
        lead = wait_until(
            lambda: (x,) if (x := n.leader([0, 1, 2])) is not None else None,
            timeout=60,
            message="a leader",
        )[0]
        want = int(mb * 1e6) // size
        body = b"x" * (size - 12)
        t = time.perf_counter()
        total, retries = 0, 0  # events acknowledged (the log's length after a flush)
        while total < want:
            try:
                with n.client(lead).producer(CHANNEL) as p:
                    while total < want:
                        k = min(FLUSH_EVERY, want - total)
                        for b in range(0, k, 1000):
                            p.append_batch([b"%011d " % j + body for j in range(min(1000, k - b))])
                        total = p.flush(timeout=120) + 1
            except netmesh.errors.NetmeshError:  # a leader change under load: go on there
                retries += 1
                lead = wait_until(
                    lambda: (x,) if (x := n.leader([0, 1, 2])) is not None else None,
                    timeout=60,
                    message="a leader",
                )[0]
        fill_s = time.perf_counter() - t
        mb = total * size / 1e6

        for i in range(3):
            n.configure(i, [j for j in range(4) if j != i])
            n.procs[i].send_signal(signal.SIGHUP)
        n.configure(NEW, [0, 1, 2])
        t0 = time.perf_counter()
        n.start(NEW)
        member = wait_until(
            lambda: (time.perf_counter(),) if (r := n.row(NEW)) and r.leader is not None else None,
            timeout=3600,
            message="the new daemon is a member",
        )[0]
        held = wait_until(
            lambda: (time.perf_counter(),) if n.row(NEW).next_seq >= total else None,
            timeout=3600,
            message="the new daemon holds the channel",
        )[0]
        hold_s = held - t0
        learner = [ln for ln in n.log(NEW).splitlines() if "caught up as a learner" in ln]
        return {
            "mb": mb,
            "events": total,
            "event_bytes": size,
            "ack": ack,
            "fill_s": round(fill_s, 2),
            "fill_leader_changes": retries,
            "fill_mb_s": round(mb / fill_s, 1),
            "member_s": round(member - t0, 2),
            "hold_s": round(hold_s, 2),
            "hold_mb_s": round(mb / hold_s, 1),
            "learner": learner[-1].split(" INFO ", 1)[-1] if learner else None,
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        }
    finally:
        n.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.daemon_join", description=__doc__)
    ap.add_argument("--mb", type=float, default=1024.0, help="channel size, MB of payload")
    ap.add_argument("--size", type=int, default=1024, help="event payload bytes (>= 16)")
    ap.add_argument("--ack", choices=("quorum", "leader"), default="quorum")
    ap.add_argument("--dir", help="where the daemons' files go (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = ap.parse_args(argv)
    if args.size < 16:
        ap.error("--size must be >= 16")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="netmesh-join-"))
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=base, prefix="run-"))
    try:
        fig = measure(root, args.mb, args.size, args.ack)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base, ignore_errors=True)
    print("DAEMON JOIN " + json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

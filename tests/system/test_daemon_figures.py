"""Failover and catch-up between node daemons, measured as ``netmesh bench`` measures
them between supervised nodes (``benchmarks/suites.py``: ``bench_failover``,
``bench_catchup``). Marked ``perf`` (skipped by ``-m 'not perf'``); each prints one
``DAEMON FIGURE`` JSON line. Sizes: ``NETMESH_DAEMON_CATCHUP_MB`` (default 64).

* failover: a producer appends 16 events and flushes, in a loop, on the leader daemon
  of a factor-3 channel (heartbeat 150 ms); the leader daemon is SIGKILLed; the time
  from the SIGKILL to the first append acknowledged through another daemon's client;
* catch-up: a factor-2 leader-mode channel, the replica daemon is SIGKILLed, N MB of
  1 KiB events are appended, the replica daemon is started again: payload MB/s from
  its start to holding them all (default replication budget).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from netmesh.errors import NetmeshError
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, Daemons

pytestmark = [pytest.mark.system, pytest.mark.perf]

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def test_failover_write_unavailability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    channels = f'[[channels]]\nname = "{CHANNEL}"\nfactor = 3\nheartbeat_ms = 150\n'
    d = Daemons(tmp_path, HOSTS, channels_toml=channels, metrics=False)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    samples: list[float] = []
    try:
        d.start_all()
        for _trial in range(3):
            old = d.wait_leader()
            chunk = [b"f" * 64] * 16
            stop = threading.Event()

            def produce(
                old: int = old, stop: threading.Event = stop, chunk: list[bytes] = chunk
            ) -> None:
                try:
                    with d.clients[old].producer(CHANNEL) as p:
                        while not stop.is_set():
                            p.append_batch(chunk)
                            p.flush()
                except NetmeshError:
                    return  # its daemon was killed

            t = threading.Thread(target=produce, daemon=True)
            t.start()
            wait_until(lambda old=old: d.row(old).next_seq > 1000, timeout=10)  # type: ignore[misc]
            t_kill = time.perf_counter()
            d.kill(old)
            stop.set()
            t.join(30)
            acked = None
            while acked is None:  # as the bench: find the leader, append, retry
                assert time.perf_counter() - t_kill < 20
                lead = d.leader()
                if lead is None or lead == old:
                    continue
                try:
                    with d.clients[lead].producer(CHANNEL) as p:
                        p.append_batch(chunk)
                        p.flush(5.0)
                        acked = time.perf_counter()
                except NetmeshError:
                    continue
            samples.append((acked - t_kill) * 1e3)
            d.start(old)
            d.ready(old)
            wait_until(lambda old=old: d.row(old).leader not in (0, None), timeout=15)  # type: ignore[misc]
    finally:
        d.close()
    samples.sort()
    fig = {"failover_ms": [round(s) for s in samples], "median_ms": round(samples[1])}
    print(f"\nDAEMON FIGURE {json.dumps(fig)}")
    assert samples[1] < 5000


def test_catchup_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mb = int(os.environ.get("NETMESH_DAEMON_CATCHUP_MB", "64"))
    size, n = 1024, mb * 1_000_000 // 1024
    channels = f'[[channels]]\nname = "{CHANNEL}"\nfactor = 2\nheartbeat_ms = 150\n'
    datagram = int(os.environ.get("NETMESH_DAEMON_MAX_DATAGRAM", "1400"))
    d = Daemons(tmp_path, HOSTS[:2], channels_toml=channels, metrics=False, max_datagram=datagram)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        d.start_all()
        lead = d.wait_leader()
        replica = 1 - lead
        d.kill(replica)
        with d.clients[lead].producer(CHANNEL) as p:
            batch = [b"c" * size] * 256
            for _ in range(0, n, 256):
                p.append_batch(batch)
            last = p.flush(120)
        total = last + 1
        t0 = time.perf_counter()
        d.start(replica)
        d.ready(replica)
        wait_until(lambda: d.row(replica).next_seq >= total, timeout=600, interval=0.01)
        dt = time.perf_counter() - t0
    finally:
        d.close()
    fig = {
        "catchup_mb_s": round(total * size / dt / 1e6, 1),
        "mb": mb,
        "seconds": round(dt, 2),
        "max_datagram": datagram,
    }
    print(f"\nDAEMON FIGURE {json.dumps(fig)}")
    assert dt < 600

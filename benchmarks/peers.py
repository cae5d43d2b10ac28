#!/usr/bin/env python3
"""Peer comparison for netmesh (issue 6): Redis streams and the Rust net-mesh wheel.

Measures, in one run on this machine:

1. **Redis streams** through a Python client (redis-py, hiredis parser if installed). The
   script starts its own servers on free loopback ports: a standalone primary, and a
   primary with one replica (``--replicaof``). Cases, per payload size:

   * ``no_replica``: XADD pipelined in batches to the standalone primary;
   * ``replica_async``: XADD pipelined to the replicated primary, timed until the
     replica's XLEN equals the count (asynchronous replication);
   * ``replica_wait1``: XADD pipelined + ``WAIT 1 <timeout>`` at the end of every batch.

2. **net-mesh 0.24** (the Rust crate's Python wheel, ``import net``): in-process, heap-only
   ``Redex().open_file(name).append(payload)`` in a loop, and ``append_batch``.

3. **netmesh** figures from ``--netmesh-json`` (written by ``netmesh bench all --json``),
   printed as netmesh / peer ratios.

Every server is stopped by PID (SIGTERM, SIGKILL after a grace period) in a ``finally``
and its temp dir removed, also on Ctrl-C or an exception; the servers are also started
with a parent-death signal, so they die with this process even if it is SIGKILLed.

Optional extra dependencies ("peers"): ``redis`` and ``hiredis`` from PyPI, ``net-mesh==0.24.0``
from PyPI, and Debian's ``redis-server`` (``apt-get install -y redis-server``).

Usage::

    python -m benchmarks.peers [--quick] [--netmesh-json NM.json] [--json OUT.json]

Importable: ``main(argv) -> dict`` returns everything that ``--json`` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

SCHEMA = "netmesh-bench-peers/1"
STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 15.0
LINK_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 120.0
TMP_PREFIX = "netmesh-peers-redis-"

# netmesh figure -> peer figure comparisons (first netmesh key found is used).
RATIO_SPECS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "replicated vs Redis XADD + async replica, 64 B",
        ("replicated_eps",),
        "redis_replica_async_64b_eps",
    ),
    (
        "replicated (quorum-acked) vs Redis XADD + WAIT 1, 64 B",
        ("replicated_acked_eps", "replicated_quorum_eps", "replicated_eps"),
        "redis_replica_wait1_64b_eps",
    ),
    ("replicated vs Redis XADD, no replica, 64 B", ("replicated_eps",), "redis_no_replica_64b_eps"),
    (
        "ingest single vs net-mesh wheel append, 64 B",
        ("ingest_single_eps",),
        "net_mesh_append_single_64b_eps",
    ),
    (
        "ingest batched vs net-mesh wheel append_batch, 64 B",
        ("ingest_batched_eps",),
        "net_mesh_append_batch_64b_eps",
    ),
    (
        "ingest batched vs Redis XADD pipelined, no replica, 64 B",
        ("ingest_batched_eps",),
        "redis_no_replica_64b_eps",
    ),
    (
        "ingest batched MB/s vs net-mesh wheel append_batch MB/s, 1 KiB",
        ("ingest_batched_1k_mb_s",),
        "net_mesh_append_batch_1024b_mb_s",
    ),
    (
        "ingest batched MB/s vs Redis XADD, no replica MB/s, 1 KiB",
        ("ingest_batched_1k_mb_s",),
        "redis_no_replica_1024b_mb_s",
    ),
]


# --------------------------------------------------------------------------- helpers


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_death_signal() -> None:
    """Runs in the child before exec: die with SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Defer SIGINT while cleaning up, so a second Ctrl-C cannot strand a server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            raise KeyboardInterrupt


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def _fmt_eps(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _fmt_figure(key: str, x: float | None) -> str:
    if x is None:
        return "-"
    if key.endswith("_mb_s"):
        return f"{x:.0f} MB/s"
    return f"{_fmt_eps(x)} ev/s"


# --------------------------------------------------------------------------- redis servers


class RedisServer:
    """One redis-server subprocess on a loopback port, with its own temp dir."""

    def __init__(self, exe: str, replicaof: int | None = None) -> None:
        self.exe = exe
        self.replicaof = replicaof
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir = ""
        self.log_path = ""
        self._log: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        import redis

        last_err = ""
        for _attempt in range(3):
            self.tmpdir = tempfile.mkdtemp(prefix=TMP_PREFIX)
            with open(os.path.join(self.tmpdir, "owner.pid"), "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
            self.port = _free_port()
            self.log_path = os.path.join(self.tmpdir, "redis.log")
            cmd = [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.tmpdir,
                "--repl-diskless-sync-delay",
                "0",
            ]
            if self.replicaof is not None:
                cmd += ["--replicaof", "127.0.0.1", str(self.replicaof)]
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_signal,
            )
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                finally:
                    client.close()
                time.sleep(0.02)  # polling cadence while the server starts
            last_err = self.log_tail()
            self.stop()  # port raced away or server did not come up: clean up, retry
        raise RuntimeError(f"redis-server did not start: {last_err}")

    def log_tail(self, n: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(line.strip() for line in f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL after a grace period; remove the temp dir."""
        with _no_interrupts():
            proc, self.proc = self.proc, None
            if proc is not None:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.terminate()
                    try:
                        proc.wait(timeout=STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        proc.wait()
                else:
                    proc.wait()
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = ""


def _sweep_stale_tmpdirs() -> list[str]:
    """Remove temp dirs left by a run that was SIGKILLed (its owner PID is gone)."""
    removed = []
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(TMP_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, "owner.pid"), encoding="ascii") as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue  # not ours to judge, or being created right now
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _redis_server_version(exe: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out.strip() or None


def _wait_replica_link(primary: Any, replica: Any, timeout: float) -> float:
    """Poll INFO replication on both sides until the link is up; returns seconds taken."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        r_info = replica.info("replication")
        p_info = primary.info("replication")
        slave0 = p_info.get("slave0") or {}
        if (
            r_info.get("master_link_status") == "up"
            and int(p_info.get("connected_slaves", 0)) >= 1
            and (not isinstance(slave0, dict) or slave0.get("state", "online") == "online")
        ):
            # "online" can precede the command stream (Redis 7 starts it on the replica's
            # first REPLCONF ACK, up to ~1 s later): require one write acknowledged by WAIT.
            primary.set("netmesh-peers:link", b"1")
            if int(primary.execute_command("WAIT", 1, 100)) >= 1:
                primary.delete("netmesh-peers:link")
                return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"replica link not up after {timeout}s: "
                f"replica={r_info.get('master_link_status')!r} "
                f"primary connected_slaves={p_info.get('connected_slaves')}"
            )
        time.sleep(0.02)  # polling cadence while the replica syncs


# --------------------------------------------------------------------------- redis cases


def _xadd_batches(
    client: Any, key: str, payload: bytes, n: int, batch: int, wait_timeout_ms: int | None
) -> int:
    """Pipelined XADDs in batches; with ``wait_timeout_ms`` append WAIT 1 to every batch.

    Returns the number of batches whose WAIT saw no replica acknowledgement."""
    fields = {b"p": payload}
    wait_misses = 0
    sent = 0
    pipe = client.pipeline(transaction=False)
    try:
        while sent < n:
            k = min(batch, n - sent)
            for _ in range(k):
                pipe.xadd(key, fields)
            if wait_timeout_ms is not None:
                pipe.execute_command("WAIT", 1, wait_timeout_ms)
            res = pipe.execute()
            if wait_timeout_ms is not None and int(res[-1]) < 1:
                wait_misses += 1
            sent += k
    finally:
        pipe.reset()
    return wait_misses


def _run_case(
    mode: str,
    primary: Any,
    replica: Any | None,
    key: str,
    payload: bytes,
    n: int,
    batch: int,
    wait_timeout_ms: int,
) -> dict[str, Any]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    misses = _xadd_batches(
        primary, key, payload, n, batch, wait_timeout_ms if mode == "replica_wait1" else None
    )
    t_primary = time.perf_counter()
    c1 = time.process_time()
    out: dict[str, Any] = {}
    t_end = t_primary
    if mode == "replica_async":
        assert replica is not None
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while replica.xlen(key) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica did not catch up to {n} within {CATCH_UP_TIMEOUT_S}s")
            time.sleep(0.0005)  # polling cadence for the replica's XLEN
        t_end = time.perf_counter()
        out["primary_only_eps"] = n / (t_primary - t0)
        out["catch_up_ms"] = (t_end - t_primary) * 1e3
    if mode == "replica_wait1":
        out["wait_misses"] = misses
    got = primary.xlen(key)
    if got != n:
        raise RuntimeError(f"{mode}: XLEN {got} != {n}")
    if replica is not None and mode == "replica_wait1" and misses == 0:
        rgot = replica.xlen(key)
        if rgot != n:
            raise RuntimeError(f"{mode}: replica XLEN {rgot} != {n} after WAIT acks")
    elapsed = t_end - t0
    out["eps"] = n / elapsed
    out["client_cpu_pct"] = 100.0 * (c1 - c0) / max(t_primary - t0, 1e-9)
    primary.delete(key)
    return out


REDIS_MODES = [
    ("no_replica", "Redis XADD pipelined (no replica)"),
    ("replica_async", "Redis XADD pipelined (replica async)"),
    ("replica_wait1", "Redis XADD pipelined + WAIT 1 (replica)"),
]


def bench_redis(
    sizes: list[int],
    events: int,
    runs: int,
    batch: int,
    wait_timeout_ms: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    result: dict[str, Any] = {"available": False, "cases": [], "server_pids": []}
    exe = shutil.which("redis-server")
    if exe is None:
        result["error"] = "redis-server not on PATH (apt-get install -y redis-server)"
        return result
    result["redis_server_version"] = _redis_server_version(exe)
    try:
        import redis
        import redis.utils
    except ImportError as e:
        result["error"] = f"redis-py not importable ({e}); pip install redis hiredis"
        return result
    result["redis_py_version"] = _version("redis")
    result["hiredis_version"] = _version("hiredis")
    result["hiredis_parser"] = bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False))

    stale = _sweep_stale_tmpdirs()
    if stale:
        log(f"redis: removed {len(stale)} stale temp dir(s) of killed runs")
    servers: list[RedisServer] = []
    clients: list[Any] = []

    def connect(port: int) -> Any:
        c = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60.0)
        clients.append(c)
        return c

    try:
        solo = RedisServer(exe)
        servers.append(solo)
        solo.start()
        prim = RedisServer(exe)
        servers.append(prim)
        prim.start()
        repl = RedisServer(exe, replicaof=prim.port)
        servers.append(repl)
        repl.start()
        result["server_pids"] = [s.pid for s in servers]
        c_solo, c_prim, c_repl = connect(solo.port), connect(prim.port), connect(repl.port)
        result["replica_link_up_s"] = round(_wait_replica_link(c_prim, c_repl, LINK_TIMEOUT_S), 3)
        result["redis_server_info_version"] = c_solo.info("server").get("redis_version")
        log(
            f"redis: servers up (pids {result['server_pids']}), replica link up in "
            f"{result['replica_link_up_s']}s"
        )
        # Warm-up: one batch per primary, not measured.
        for c in (c_solo, c_prim):
            _xadd_batches(c, "warmup", b"w" * 64, batch, batch, None)
            c.delete("warmup")

        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for size in sizes:
            payload = os.urandom(size)
            for run in range(runs):
                for mode, _label in REDIS_MODES:  # interleaved, so noise hits every mode
                    primary = c_solo if mode == "no_replica" else c_prim
                    replica = None if mode == "no_replica" else c_repl
                    key = f"bench:{mode}:{size}:{run}"
                    s = _run_case(
                        mode, primary, replica, key, payload, events, batch, wait_timeout_ms
                    )
                    samples.setdefault((mode, size), []).append(s)
                    log(
                        f"redis: {mode:14s} {size:5d} B run {run + 1}/{runs}: "
                        f"{_fmt_eps(s['eps'])} ev/s"
                    )
        for size in sizes:
            for mode, label in REDIS_MODES:
                ss = samples[(mode, size)]
                eps = _median([s["eps"] for s in ss])
                case: dict[str, Any] = {
                    "name": f"redis_{mode}_{size}b",
                    "system": "redis",
                    "mode": mode,
                    "label": label,
                    "payload_bytes": size,
                    "events": events,
                    "batch": batch,
                    "eps": eps,
                    "mb_s": eps * size / 1e6,
                    "runs_eps": [s["eps"] for s in ss],
                    "client_cpu_pct": _median([s["client_cpu_pct"] for s in ss]),
                }
                if mode == "replica_async":
                    case["primary_only_eps"] = _median([s["primary_only_eps"] for s in ss])
                    case["catch_up_ms"] = [round(s["catch_up_ms"], 2) for s in ss]
                if mode == "replica_wait1":
                    case["wait_timeout_ms"] = wait_timeout_ms
                    case["wait_misses"] = sum(s["wait_misses"] for s in ss)
                result["cases"].append(case)
        result["available"] = True
    except (redis.exceptions.RedisError, RuntimeError, OSError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        for srv in servers:
            if srv.log_path:
                result.setdefault("server_logs", []).append(srv.log_tail())
    finally:
        with _no_interrupts():
            for c in clients:
                with contextlib.suppress(Exception):
                    c.close()
            for srv in reversed(servers):  # replica first, then the primaries
                srv.stop()
    return result


# --------------------------------------------------------------------------- net-mesh wheel


def bench_net_mesh_wheel(
    sizes: list[int], events: int, runs: int, batch: int, log: Callable[[str], None]
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "available": False,
        "cases": [],
        "net_mesh_version": _version("net-mesh"),
    }
    try:
        import net  # the Rust crate's wheel: pip install net-mesh==0.24.0
    except Exception as e:  # ImportError, or a broken binary module
        result["error"] = (
            f"net-mesh wheel not importable ({type(e).__name__}: {e}); pip install net-mesh==0.24.0"
        )
        return result
    redex_cls = getattr(net, "Redex", None)
    if redex_cls is None or not hasattr(redex_cls, "open_file"):
        result["error"] = "module 'net' has no Redex.open_file"
        return result
    result["api"] = "net.Redex().open_file(name) -> RedexFile.append(bytes) / append_batch(list)"
    has_batch = hasattr(getattr(net, "RedexFile", object), "append_batch")
    try:
        for size in sizes:
            payload = os.urandom(size)
            n = events if size <= 64 else min(events, 200_000)
            variants: list[tuple[str, int | None]] = [("append_single", None)]
            if has_batch:
                variants.append(("append_batch", batch))
            for variant, b in variants:
                runs_eps: list[float] = []
                for run in range(runs):
                    redex = redex_cls()
                    f = redex.open_file(f"bench/{variant}/{size}/{run}")
                    try:
                        if b is None:
                            append = f.append
                            t0 = time.perf_counter()
                            for _ in range(n):
                                append(payload)
                            dt = time.perf_counter() - t0
                        else:
                            chunk = [payload] * b
                            append_batch = f.append_batch
                            nb = max(1, n // b)
                            t0 = time.perf_counter()
                            for _ in range(nb):
                                append_batch(chunk)
                            dt = time.perf_counter() - t0
                        count = n if b is None else nb * b
                        last = f.read_range(count - 1, count)
                        if len(last) != 1 or last[0].seq != count - 1:
                            raise RuntimeError(f"{variant}: last seq != {count - 1}")
                        runs_eps.append(count / dt)
                    finally:
                        f.close()
                        del f, redex
                    log(
                        f"net-mesh: {variant:13s} {size:5d} B run {run + 1}/{runs}: "
                        f"{_fmt_eps(runs_eps[-1])} ev/s"
                    )
                eps = _median(runs_eps)
                result["cases"].append(
                    {
                        "name": f"net_mesh_{variant}_{size}b",
                        "system": "net-mesh wheel",
                        "mode": variant,
                        "label": f"net-mesh {result['net_mesh_version']} wheel "
                        f"{'append' if b is None else f'append_batch({b})'}, heap",
                        "payload_bytes": size,
                        "events": n,
                        "batch": b or 1,
                        "eps": eps,
                        "mb_s": eps * size / 1e6,
                        "runs_eps": runs_eps,
                    }
                )
        if not has_batch:
            result["note"] = "RedexFile has no append_batch: only single appends measured"
        result["available"] = True
    except Exception as e:  # any binding error: record why rather than fail the run
        result["error"] = f"net-mesh API unusable: {type(e).__name__}: {e}"
    return result


# --------------------------------------------------------------------------- netmesh figures


def _find_key(obj: Any, key: str) -> float | None:
    """First numeric value of ``key`` in a (possibly nested) JSON object, top level first."""
    if isinstance(obj, dict):
        v = obj.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        for sub in obj.values():
            found = _find_key(sub, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for sub in obj:
            found = _find_key(sub, key)
            if found is not None:
                return found
    return None


def load_netmesh(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    keys = sorted({k for spec in RATIO_SPECS for k in spec[1]})
    figures = {k: v for k in keys if (v := _find_key(data, k)) is not None}
    return {"source": os.path.abspath(path), "figures": figures}


def compute_ratios(netmesh: dict[str, float], peers: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for label, nm_keys, peer_key in RATIO_SPECS:
        nm_key = next((k for k in nm_keys if k in netmesh), None)
        nm = netmesh.get(nm_key) if nm_key else None
        peer = peers.get(peer_key)
        ratio = nm / peer if nm is not None and peer else None
        out.append(
            {
                "label": label,
                "netmesh_key": nm_key or nm_keys[0],
                "netmesh_value": nm,
                "peer_key": peer_key,
                "peer_value": peer,
                "ratio": ratio,
            }
        )
    return out


# --------------------------------------------------------------------------- output


def _render(report: dict[str, Any]) -> None:
    cases = report["redis"].get("cases", []) + report["net_mesh_wheel"].get("cases", [])
    rows = []
    for c in cases:
        extra = ""
        if "catch_up_ms" in c:
            extra = (
                f"primary alone {_fmt_eps(c['primary_only_eps'])}/s; "
                f"replica caught up {'/'.join(f'{x:g}' for x in c['catch_up_ms'])} ms later"
            )
        elif "wait_misses" in c:
            extra = f"WAIT timeout {c['wait_timeout_ms']} ms, misses {c['wait_misses']}"
        cpu = c.get("client_cpu_pct")
        rows.append(
            [
                c["label"],
                f"{c['payload_bytes']}",
                _fmt_eps(c["eps"]),
                f"{c['mb_s']:.2f}",
                "-" if cpu is None else f"{cpu:.0f}",
                extra,
            ]
        )
    head = ["system / mode", "payload B", "ev/s", "MB/s", "client CPU %", "notes"]
    notes = []
    for part in ("redis", "net_mesh_wheel"):
        if report[part].get("error"):
            notes.append(f"{part}: NOT MEASURED: {report[part]['error']}")
    ratio_rows = [
        [
            r["label"],
            _fmt_figure(r["netmesh_key"], r["netmesh_value"]),
            _fmt_figure(r["peer_key"], r["peer_value"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
        ]
        for r in report.get("ratios", [])
    ]
    ratio_head = ["netmesh / peer", "netmesh", "peer", "ratio"]
    title = (
        f"Peers on this machine ({report['machine']['cpu_count']} CPUs, "
        f"{report['params']['runs']} run(s), median)"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _render_plain(title, head, rows, ratio_head, ratio_rows, notes)
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="right" if 0 < i < 5 else "left")
    for r in rows:
        t.add_row(*r)
    console.print(t)
    if ratio_rows:
        rt = Table(title="netmesh / peer ratios (same machine; >1 means netmesh is faster)")
        for i, h in enumerate(ratio_head):
            rt.add_column(h, justify="right" if i else "left")
        for r in ratio_rows:
            rt.add_row(*r)
        console.print(rt)
    for n in notes:
        console.print(n, markup=False)


def _render_plain(
    title: str,
    head: list[str],
    rows: list[list[str]],
    ratio_head: list[str],
    ratio_rows: list[list[str]],
    notes: list[str],
) -> None:
    def table(h: list[str], rs: list[list[str]]) -> None:
        widths = [max(len(x) for x in col) for col in zip(h, *rs, strict=False)]
        print("  ".join(x.ljust(w) for x, w in zip(h, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for r in rs:
            print("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)))

    print(title)
    table(head, rows)
    if ratio_rows:
        print()
        print("netmesh / peer ratios (same machine; >1 means netmesh is faster)")
        table(ratio_head, ratio_rows)
    for n in notes:
        print(n)


# --------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="netmesh bench peers",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small counts, one run (< ~60 s)")
    p.add_argument(
        "--parts",
        default="redis,wheel",
        help="comma list of parts to run: redis, wheel",
    )
    p.add_argument("--sizes", default="64,1024", help="payload sizes in bytes, comma list")
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="events per Redis case (None: 100000; --quick 20000)",
    )
    p.add_argument(
        "--wheel-events",
        type=int,
        default=None,
        help="events per net-mesh wheel case (None: 1000000; --quick 200000)",
    )
    p.add_argument("--runs", type=int, default=None, help="runs per case (None: 3; --quick 1)")
    p.add_argument("--batch", type=int, default=500, help="XADDs per Redis pipeline batch")
    p.add_argument(
        "--wheel-batch",
        type=int,
        default=64,
        help="payloads per net-mesh append_batch (as netmesh bench)",
    )
    p.add_argument("--wait-timeout-ms", type=int, default=1000, help="WAIT 1 <timeout> in ms")
    p.add_argument("--netmesh-json", metavar="PATH", help="JSON from 'netmesh bench all --json'")
    p.add_argument("--json", metavar="OUT", help="write all figures to this JSON file")
    p.add_argument("--no-table", action="store_true", help="do not print the table")
    p.add_argument("-v", "--verbose", action="store_true", help="progress lines on stderr")
    a = p.parse_args(argv)
    a.events = a.events or (20_000 if a.quick else 100_000)
    a.wheel_events = a.wheel_events or (200_000 if a.quick else 1_000_000)
    a.runs = a.runs or (1 if a.quick else 3)
    a.sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    a.parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    unknown = a.parts - {"redis", "wheel"}
    if unknown:
        p.error(f"unknown parts: {sorted(unknown)}")
    if min(a.events, a.wheel_events, a.runs, a.batch, a.wheel_batch) <= 0:
        p.error("--events, --wheel-events, --runs, --batch and --wheel-batch must be positive")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the peer benchmarks; print the table; return (and optionally write) the report."""
    a = _parse(argv)

    def log(msg: str) -> None:
        if a.verbose:
            print(msg, file=sys.stderr, flush=True)

    t_start = time.monotonic()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": {
            "quick": a.quick,
            "sizes": a.sizes,
            "events": a.events,
            "wheel_events": a.wheel_events,
            "runs": a.runs,
            "batch": a.batch,
            "wheel_batch": a.wheel_batch,
            "wait_timeout_ms": a.wait_timeout_ms,
            "parts": sorted(a.parts),
        },
    }
    skipped = {"available": False, "cases": [], "error": "skipped (--parts)"}
    report["redis"] = (
        bench_redis(a.sizes, a.events, a.runs, a.batch, a.wait_timeout_ms, log)
        if "redis" in a.parts
        else dict(skipped)
    )
    report["net_mesh_wheel"] = (
        bench_net_mesh_wheel(a.sizes, a.wheel_events, a.runs, a.wheel_batch, log)
        if "wheel" in a.parts
        else dict(skipped)
    )
    report["versions"] = {
        "python": platform.python_version(),
        "redis_server": report["redis"].get("redis_server_version"),
        "redis_py": report["redis"].get("redis_py_version", _version("redis")),
        "hiredis": report["redis"].get("hiredis_version", _version("hiredis")),
        "net_mesh": _version("net-mesh"),
        "netmesh": _version("netmesh"),
    }
    figures: dict[str, float] = {}
    for part in ("redis", "net_mesh_wheel"):
        for c in report[part]["cases"]:
            figures[f"{c['name']}_eps"] = c["eps"]
            figures[f"{c['name']}_mb_s"] = c["mb_s"]
    report["figures"] = figures
    if a.netmesh_json:
        report["netmesh"] = load_netmesh(a.netmesh_json)
        report["ratios"] = compute_ratios(report["netmesh"]["figures"], figures)
    report["elapsed_s"] = round(time.monotonic() - t_start, 2)
    if not a.no_table:
        _render(report)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=False)
            f.write("\n")
    return report


def _cli() -> int:
    # SIGTERM -> SystemExit, so the `finally` blocks stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_cli())

"""`netmesh bench` runs, writes its figures beside their peers, and leaves nothing behind.

Speed itself is not asserted here (see tests/benchmarks/test_ratio_floors.py, marked
``perf``); these use the smallest workloads that still give every figure its shape:
netmesh min/median/max, peers with ratios, the run's provenance and load.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks import log_peers, suites
from benchmarks.log_peers import Servers
from benchmarks.suites import Plan

pytestmark = pytest.mark.system

TINY = dataclasses.replace(
    Plan.make(quick=True),
    ingest_single=5_000,
    ingest_batched=32_000,
    ingest_1k=8_000,
    sustained_s=0.1,
    quorum_s=0.1,
    failover_trials=2,
    failover_peer_trials=0,
    overhead_n=2_000,
    latency_s=0.3,
    catchup_bytes=4 << 20,
)


def _check_figure(fig: dict[str, Any], peers: set[str]) -> None:
    nm = fig["netmesh"]
    assert len(nm["trials"]) >= 3 and nm["min"] <= nm["median"] <= nm["max"], nm
    assert set(fig["peers"]) == peers, (fig["peers"].keys(), fig.get("unavailable"))
    for name, p in fig["peers"].items():
        assert len(p["trials"]) == len(nm["trials"]), name
        assert p["ratio"] == pytest.approx(nm["median"] / p["median"]), name
        assert p["ratio_min"] <= p["ratio_max"], name
    assert len(fig["load_before"]) == 3 and len(fig["load_after"]) == 3


def test_bench_ingest_quick_writes_json_with_ratios_and_plot(tmp_path: Path) -> None:
    out_json, out_png, out_md = (tmp_path / f"bench.{x}" for x in ("json", "png", "md"))
    # --plot without matplotlib is refused before anything runs (tested in tests/cli)
    plot = ["--plot", str(out_png)] if importlib.util.find_spec("matplotlib") else []
    proc = subprocess.run(
        [
            *(sys.executable, "-P", "-m", "netmesh.cli", "bench", "ingest", "--quick"),
            *("--json", str(out_json), "--markdown", str(out_md), *plot),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out_json.read_text())
    assert res["schema"] == "netmesh-bench/2" and res["quick"] is True
    assert res["date"].endswith("Z") and res["cpu_model"] and res["cpu_count"] >= 1
    assert res["versions"]["python"] and res["versions"]["netmesh"]
    assert res["commit"] is None or len(res["commit"]) >= 40
    assert len(res["load_before"]) == 3 and len(res["load_after"]) == 3
    peers = {"pyring", "pipe"} | ({"zmq"} if importlib.util.find_spec("zmq") else set())
    for key in ("ingest_single_eps", "ingest_batched_eps", "ingest_batched_1k_eps"):
        _check_figure(res["figures"][key], peers)
        assert "QUICK" in res["figures"][key]["note"]
        assert res["summary"][f"{key}_vs_pyring"] > 0
    assert "ingest_batched_eps" in proc.stdout and "pyring" in proc.stdout
    md = out_md.read_text()
    assert md.startswith("| figure |") and "| pyring |" in md and res["date"] in md
    if importlib.util.find_spec("matplotlib") is None:
        assert not out_png.exists()
    else:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replicated_and_quorum_beside_redis_and_jetstream_then_servers_stop() -> None:
    have_redis = bool(shutil.which("redis-server")) and importlib.util.find_spec("redis")
    have_nats = bool(shutil.which("nats-server")) and importlib.util.find_spec("nats")
    if not (have_redis and have_nats):
        pytest.skip("needs redis-server + redis-py and nats-server + nats-py")
    servers = Servers()
    try:
        rep = suites.bench_replicated(TINY, servers, lambda _m: None)["figures"]
        q = suites.bench_quorum(TINY, servers, lambda _m: None)
        pids = servers.pids()
    finally:
        servers.close()
    fig = rep["replicated_eps"]
    _check_figure(fig, {"redis_py", "redis_benchmark", "jetstream_r1", "jetstream_r3"})
    # 0.2 s cannot outlast a budget's burst: the figure must say so. On loopback the
    # default NIC peak ("auto") is unlimited (issue 17 §2): no burst, nothing to be inside
    if fig["budget_burst_bytes"] is None:
        assert fig["inside_budget_burst"] is False and "INSIDE" not in fig["note"]
    else:
        assert fig["inside_budget_burst"] is True and "INSIDE" in fig["note"]
    _check_figure(q["figures"]["replicated_quorum_eps"], {"redis_wait1", "jetstream_r3"})
    lat = q["samples"]["ack_latency_ms_per_500"]
    assert all(lat[k] for k in ("netmesh", "redis_wait1", "jetstream_r3"))
    assert len(pids) == 5  # redis primary + replica, three nats-server
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_failover_reports_write_unavailability_and_a_timeline() -> None:
    out = suites.bench_failover(TINY, lambda _m: None)
    nm = out["figures"]["failover_unavailability_ms"]["netmesh"]
    assert nm["samples"] == 2 and 0 < nm["p50"] <= nm["p90"] <= nm["max"]
    tl = out["samples"]["failover_timeline"]["acks"]
    assert tl[0][0] < 0 < tl[-1][0]  # acknowledged events before and after the kill
    assert [a for _t, a in tl] == sorted(a for _t, a in tl)


def test_overhead_unpinned_beside_pinned_and_redis() -> None:
    servers = Servers()
    try:
        fig = suites.bench_overhead(TINY, servers, lambda _m: None)["figures"]
    finally:
        servers.close()
    fig = fig["replication_overhead_ratio"]
    assert fig["netmesh"]["ratio_of_medians"] > 0 and len(fig["netmesh"]["trials"]) == 3
    assert fig["pinned"] is None or fig["pinned"]["ratio_of_medians"] > 0
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        assert fig["peers"]["redis_async_replica"]["ratio"] > 0, fig.get("unavailable")


def test_replica_latency_beside_redis() -> None:
    servers = Servers()
    try:
        out = suites.bench_latency(TINY, servers, lambda _m: None)
    finally:
        servers.close()
    fig = out["figures"]["replica_latency_ms"]
    nm = fig["netmesh"]
    assert nm["samples"] > 1000 and 0 < nm["median"] <= nm["p99"] <= nm["max"]
    assert out["samples"]["replica_latency_ms"]
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        redis = fig["peers"]["redis_async_replica"]
        assert redis["samples"] > 1000 and redis["ratio"] > 0, fig.get("unavailable")


def test_jetstream_failover_trial_measures_and_stops_its_servers() -> None:
    if not (shutil.which("nats-server") and importlib.util.find_spec("nats")):
        pytest.skip("needs nats-server + nats-py")
    trial = log_peers.NatsFailover()
    try:
        ms = trial()
        assert trial.cluster is not None
        pids = trial.cluster.pids
    finally:
        trial.close()
    assert 0 < ms < 120_000 and len(pids) == 3
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_catchup_inside_the_burst_is_labelled() -> None:
    fig = suites.bench_catchup(TINY, lambda _m: None)["figures"]["catchup_mb_s"]
    assert fig["bytes_behind"] == 4 << 20 and fig["netmesh"]["median"] > 0
    assert fig["unbudgeted"]["median"] > 0
    if shutil.which("redis-benchmark") and importlib.util.find_spec("redis"):
        assert fig["peers"]["redis_resync"]["ratio"] > 0, fig.get("unavailable")
    if fig["budget_burst_bytes"] is not None:
        assert fig["inside_budget_burst"] is True and "INSIDE" in fig["note"]

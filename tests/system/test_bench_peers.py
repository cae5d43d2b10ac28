"""netmesh bench peers, Redis part: real redis-server processes, started and stopped by it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import psutil
import pytest

pytestmark = pytest.mark.system


def _load_script() -> ModuleType:
    from benchmarks import peers as bench_peers

    return bench_peers


def test_redis_part_measures_and_leaves_no_server(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH (apt-get install -y redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py not installed (pip install redis hiredis)")
    out = tmp_path / "peers.json"
    report = _load_script().main(
        [
            "--quick",
            "--parts",
            "redis",
            "--sizes",
            "64",
            "--events",
            "5000",
            "--no-table",
            "--json",
            str(out),
        ]
    )

    redis = report["redis"]
    assert redis["available"], redis.get("error")
    assert {c["mode"] for c in redis["cases"]} == {"no_replica", "replica_async", "replica_wait1"}
    for case in redis["cases"]:
        assert case["eps"] > 0, case
    assert report["versions"]["redis_server"]
    assert report["machine"]["cpu_count"] >= 1
    assert json.loads(out.read_text())["figures"] == report["figures"]

    pids = redis["server_pids"]
    assert len(pids) == 3
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    for pid in pids:  # stopped by PID and reaped: gone, or the PID now belongs to another program
        assert pid not in children, f"server {pid} is still our child"
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).name() != "redis-server", f"server {pid} still runs"

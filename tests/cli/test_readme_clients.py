"""README "Clients": the shell example is self-contained (it makes its orders.jsonl)
and the Python example runs twice against the same cluster (real processes)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netmesh.cluster.cluster import Cluster

pytestmark = pytest.mark.system

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Clients: publish and subscribe from any process")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_clients_examples_run_and_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = _section()
    (sh,) = re.findall(r"```sh\n(.*?)```", section, re.S)[:1]
    (py,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    make = [ln for ln in sh.splitlines() if "> orders.jsonl" in ln]
    assert make, "the README must make orders.jsonl itself"
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path / "run"))
    env = dict(os.environ)
    with Cluster(nodes=3, name="demo", heartbeat_ms=100) as c:
        from netmesh.config import ReplicationConfig

        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        c.wait_for_leader("orders")
        for line in make + [ln for ln in sh.splitlines() if ln.startswith("netmesh publish")]:
            r = subprocess.run(
                line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert r.returncode == 0, (line, r.stderr)
        assert "published 1000 events to orders" in r.stdout, r.stdout
        for run in range(2):  # before: the second run was ConfigError (already open)
            r = subprocess.run(
                [sys.executable, "-P", "-c", py], env=env, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert r.returncode == 0, (run, r.stderr)
            assert r.stdout.startswith("0 b'{\"id\": 1}'"), r.stdout

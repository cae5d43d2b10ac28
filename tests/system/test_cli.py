"""The netmesh command line, run as a user would (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from netmesh.cli import status
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


def test_demo_replicates_fails_over_and_exits_zero() -> None:
    out = netmesh("demo", "--events", "20000")
    assert out.returncode == 0, out.stderr
    assert "took over after" in out.stdout
    assert out.stdout.strip().endswith("OK: every node holds the same history")


def test_up_shows_status_and_stops_cleanly_on_sigint(tmp_path: object) -> None:
    env = {**os.environ, "NETMESH_RUN_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "netmesh.cli", "up", "--nodes", "3", "--rate", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        run_file = status.run_file(proc.pid).replace(status.RUN_DIR, str(tmp_path))
        wait_until(lambda: os.path.exists(run_file), timeout=20, message="run file")

        def status_out(*extra: str) -> str:
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

        wait_until(
            lambda: "LEADER" in status_out(),
            timeout=15,
            interval=0.2,
            message="a leader in `netmesh status`",
        )
        st = subprocess.CompletedProcess([], 0, status_out("--prometheus"), "")
        assert 'netmesh_node_up{node="2"} 1.0' in st.stdout
        assert "netmesh_channel_tail_seq" in st.stdout
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "LEADER" in out and "cluster stopped cleanly" in out
        assert not os.path.exists(run_file)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_bad_arguments_give_a_clear_error() -> None:
    out = netmesh("up", "--ack", "sometimes")
    assert out.returncode == 2 and "invalid choice" in out.stderr

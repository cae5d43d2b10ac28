"""A SIGKILLed `netmesh demo`: its subscriber and publisher processes die with it, and
what it left (demo-<pid>.lock/.sock in the run directory, its netmesh-demo-<pid>-*
data directory) is removed by the next demo (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


def test_a_killed_demo_leaves_no_orphan_and_the_next_demo_cleans_up(tmp_path: Path) -> None:
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    run.mkdir(mode=0o700)
    tmp.mkdir()
    env = {**os.environ, "NETMESH_RUN_DIR": str(run), "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-P", "-m", "netmesh.cli", "demo"]
    proc = subprocess.Popen(
        [*cmd, "--events", "300000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:

        def workers() -> list[psutil.Process] | None:
            kids = psutil.Process(proc.pid).children()
            subs = [k for k in kids if "subscribe" in " ".join(k.cmdline())]
            return kids if subs else None

        kids = wait_until(workers, timeout=120, interval=0.05, message="the demo's subscriber")
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # before: the subscriber stayed, orphaned, for 30-60 s
    wait_until(
        lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids),
        timeout=5,
        message="the demo's workers gone",
    )
    left = sorted(os.listdir(run))
    assert f"demo-{proc.pid}.lock" in left and f"demo-{proc.pid}.sock" in left, left
    assert [e for e in os.listdir(tmp) if e.startswith(f"netmesh-demo-{proc.pid}-")]
    again = subprocess.run(
        [*cmd, "--events", "2000"], capture_output=True, text=True, env=env, timeout=300,
        check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    # before: never taken over (the name carries the pid), 11 MB of data left in /tmp
    assert not [e for e in os.listdir(run) if e.startswith(f"demo-{proc.pid}.")]
    assert not [e for e in os.listdir(tmp) if e.startswith("netmesh-demo-")]

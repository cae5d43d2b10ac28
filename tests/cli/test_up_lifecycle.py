"""`netmesh up` from its first instant to its last: a bound on --nodes, signals during
startup, the run file after a node restart, a data_dir held by another run, a reader
that goes away (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from netmesh.cli.main import MAX_NODES
from netmesh.testing.wait import wait_until
from tests.cli.test_up_plain import node_pids, start_up

pytestmark = pytest.mark.system


def netmesh(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NETMESH_RUN_DIR": str(tmp_path / "run"), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_too_many_nodes_is_one_line_and_exit_2_at_once(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    t0 = time.monotonic()
    r = netmesh(tmp_path, "up", "--nodes", str(MAX_NODES + 1), "--duration", "1")
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and f"--nodes {MAX_NODES + 1}" in r.stderr, r.stderr
    assert str(MAX_NODES) in r.stderr and r.stdout == ""
    assert time.monotonic() - t0 < 20  # refused before anything started (was: 100 started)
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_startup_stops_what_was_started(
    tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "up.out"
    proc = start_up(tmp_path, out, "--nodes", "6", "--factor", "3")
    seen: set[int] = set()
    try:

        def some_nodes() -> bool:
            with_children = psutil.Process(proc.pid).children()
            seen.update(p.pid for p in with_children)
            return bool(seen)

        wait_until(some_nodes, timeout=30, interval=0.01, message="first node process")
        assert "processes started" not in out.read_text()  # still starting
        proc.send_signal(sig)
        # before: the signal waited for the whole startup, then `up` exited 0
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 128 + sig, (rc, out.with_suffix(".err").read_text())
    err = out.with_suffix(".err").read_text()
    assert f"{sig.name} during startup" in err and "Traceback" not in err, err
    wait_until(
        lambda: not any(psutil.pid_exists(p) for p in seen), timeout=10, message="nodes gone"
    )
    assert os.listdir(tmp_path / "run") == []
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"netmesh-{proc.pid}-")]


def test_run_file_follows_a_restarted_node(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    proc = start_up(tmp_path, out, "--nodes", "3", "--restart-policy", "on-failure", "--name", "rs")
    try:
        wait_until(lambda: "leader 0x" in out.read_text(), timeout=30, message="up")
        old = node_pids(tmp_path, proc.pid)
        os.kill(old[0], signal.SIGKILL)

        def rewritten() -> list[int] | None:
            pids = node_pids(tmp_path, proc.pid)
            return pids if pids[0] != old[0] and psutil.pid_exists(pids[0]) else None

        # before: the run file kept the dead pid, so `status` showed node 0 DOWN
        pids = wait_until(rewritten, timeout=30, message="run file with the new pid")
        assert pids[1:] == old[1:]
        wait_until(lambda: "restarted" in out.read_text(), timeout=10, message="restart line")
        r = netmesh(tmp_path, "status", "--name", "rs", "--interval", "0")
        assert r.returncode == 0, r
        assert "DOWN" not in r.stdout, r.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = tmp_path / "up.out"
    proc = start_up(tmp_path, out, "--nodes", "1", "--factor", "1", "--data-dir", str(data))
    try:
        wait_until(lambda: "leader 0x" in out.read_text(), timeout=30, message="up")
        # before: a second cluster started with the same node keys and event files
        r = netmesh(
            tmp_path, "up", "--nodes", "1", "--factor", "1", "--data-dir", str(data),
            "--name", "other", "--duration", "1",
        )  # fmt: skip
        assert r.returncode == 1, r
        assert r.stderr.count("\n") == 1, r.stderr
        assert f"{str(data)!r} is in use" in r.stderr and f"pid {proc.pid}" in r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not (data / "netmesh.lock").exists()
    # free again once the first run stopped
    r = netmesh(tmp_path, "up", "--nodes", "1", "--factor", "1", "--data-dir", str(data),
                "--rate", "0", "--duration", "0.5")  # fmt: skip
    assert r.returncode == 0, r


def test_up_into_a_closed_pipe_exits_141_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    env = {**os.environ, "NETMESH_RUN_DIR": str(tmp_path / "run"), "COLUMNS": "80"}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "netmesh.cli", "up", "--nodes", "1", "--factor", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for _ in range(3):  # `| head -3`
            proc.stdout.readline()
        proc.stdout.close()
        rc = proc.wait(60)
        err = proc.stderr.read().decode()
    finally:
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 141, (rc, err)
    assert "BrokenPipe" not in err and "Traceback" not in err, err
    assert os.listdir(tmp_path / "run") == []

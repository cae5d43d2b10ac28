"""`netmesh up` with stdout not a terminal (a pipe, a file under nohup): plain status
lines at once, no live rendering; every exit path leaves an empty run directory, and a
SIGKILLed run's locks are taken over with a log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


def start_up(tmp_path: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "NETMESH_RUN_DIR": str(run), "COLUMNS": "80"}
    with open(out, "wb") as fh, open(out.with_suffix(".err"), "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "netmesh.cli", "up", "--rate", "200", *args],
            stdout=fh,  # a regular file: what nohup gives it
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    proc.send_signal(sig)
    return proc.wait(30)


def node_pids(tmp_path: Path, pid: int) -> list[int]:
    path = tmp_path / "run" / f"netmesh-up-{pid}.json"
    return list(json.loads(path.read_text())["pids"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_up_prints_plain_lines_at_once_and_leaves_an_empty_run_dir(
    tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "up.out"
    proc = start_up(tmp_path, out)
    try:
        # the status lines are in the file while it runs (before: nothing until it stopped)
        text = wait_until(
            lambda: t if "leader 0x" in (t := out.read_text()) else None,
            timeout=30,
            message="status lines in the output file",
        )
        pids = node_pids(tmp_path, proc.pid)
        lines = text.splitlines()
        assert lines[0] == "netmesh up: starting 3 node processes (Ctrl-C stops)"
        assert lines[1].startswith("netmesh up: 3 node processes started (pids ")
        sock = tmp_path / "run" / "default.sock"
        assert str(sock) in text.split(), text
        assert any(f"kill -INT {proc.pid}" in ln for ln in lines), text
        assert any(f"netmesh status --run {proc.pid}" in ln for ln in lines), text
        assert "\x1b" not in text and "┏" not in text  # no live rendering, no escapes
        assert stop(proc, sig) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.read_text()
    err = out.with_suffix(".err").read_text()
    assert text.rstrip().endswith("cluster stopped cleanly"), text
    assert "LEADER" in text  # the final table, printed once
    assert max(len(ln) for ln in text.splitlines() if "/" not in ln) <= 80  # paths stay whole
    assert "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path / "run")) == []  # no lock, socket or run file left
    assert not any(psutil.pid_exists(p) for p in pids)


def test_up_after_a_sigkilled_up_takes_its_locks_over(tmp_path: Path) -> None:
    first = start_up(tmp_path, tmp_path / "a.out", "--nodes", "1", "--factor", "1")
    try:
        wait_until(
            lambda: "leader 0x" in (tmp_path / "a.out").read_text(), timeout=30, message="up"
        )
        pids = node_pids(tmp_path, first.pid)
        first.kill()  # SIGKILL: nothing runs its cleanup
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10, message="nodes")
    left = sorted(os.listdir(tmp_path / "run"))
    assert "default.lock" in left and any(n.startswith(f"netmesh-{first.pid}-") for n in left)
    second = start_up(tmp_path, tmp_path / "b.out", "--nodes", "1", "--factor", "1")
    try:
        wait_until(
            lambda: "leader 0x" in (tmp_path / "b.out").read_text(), timeout=30, message="up"
        )
        assert stop(second, signal.SIGTERM) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    err = (tmp_path / "b.err").read_text()
    assert f"stale lock {tmp_path / 'run' / 'default.lock'} of pid {first.pid}" in err, err
    assert f"stale run netmesh-{first.pid}-" in err, err
    assert sorted(os.listdir(tmp_path / "run")) == []

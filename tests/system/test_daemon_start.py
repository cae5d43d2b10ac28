"""A node daemon's start conflicts and the files it leaves: each conflict (name served,
UDP address in use, metrics address in use, data_dir locked) is found before anything
is opened (exit 1, one line, nothing created); clean exits (SIGTERM, SIGINT) leave no
lock file; a SIGKILLed daemon's locks are taken over by the next start, with log lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.testing.wait import wait_until
from tests.system.test_daemon import Daemons, free_tcp_port, free_udp_port

pytestmark = pytest.mark.system


@pytest.fixture
def one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    d = Daemons(tmp_path, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])  # only daemon 0 runs
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        yield d
    finally:
        d.close()


def variant(d: Daemons, **change: str) -> Path:
    """Daemon 0's config with ``name``/``bind``/``data_dir``/``metrics`` replaced: the
    ones not named get fresh values, so only the named ones can conflict."""
    text = d.config(0).read_text()
    host = d.hosts[0]
    values = {
        "name": "other",
        "bind": f"{host}:{free_udp_port(host)}",
        "data_dir": "data-other",
        "metrics": f"{host}:{free_tcp_port(host)}",
    }
    old = {
        "name": d.names[0],
        "bind": f"{host}:{d.ports[0]}",
        "data_dir": "data-n0",
        "metrics": d.metrics[0] or "",
    }
    for key, keep in change.items():
        values[key] = keep
    for key, value in values.items():
        text = text.replace(f'{key} = "{old[key]}"', f'{key} = "{value}"')
    path = d.root / "other.toml"
    path.write_text(text)
    return path


def run_node(d: Daemons, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=d.env,
        check=False,
    )


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("conflict", "expected"),
    [
        ("name", "node.name: a cluster or node daemon named 'n0' is already running (pid {pid})"),
        ("bind", "node.bind 127.0.0.1:{port}: Address already in use (another process uses it)"),
        ("metrics", "node.metrics {metrics}: Address already in use (another process uses it)"),
        ("data_dir", "node.data_dir: {root}/data-n0 is used by another running node (pid {pid})"),
    ],
)
def test_a_start_conflict_is_one_line_exit_1_and_leaves_nothing(
    one: Daemons, conflict: str, expected: str
) -> None:
    d = one
    d.start(0)
    d.ready(0)
    pid = d.procs[0].pid
    shared = {
        "name": d.names[0],
        "bind": f"{d.hosts[0]}:{d.ports[0]}",
        "metrics": d.metrics[0] or "",
        "data_dir": "data-n0",
    }[conflict]
    config = variant(d, **{conflict: shared})
    before = listing(d.root)
    out = run_node(d, config)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback, no log lines
    want = expected.format(pid=pid, port=d.ports[0], metrics=d.metrics[0], root=d.root)
    assert lines[0].startswith("netmesh node: StartError: ") and want in lines[0], lines[0]
    # nothing was opened or created: no data dir, no socket, no lock, no channel file
    after = listing(d.root)
    new = [p for p in after if p not in before and p != "data-n0/handshake.clock"]
    assert new == [], new  # (daemon 0 writes its handshake clock when it first connects)
    assert os.listdir(d.run_dir) and sorted(os.listdir(d.run_dir)) == sorted(
        n for n in os.listdir(d.run_dir) if n.startswith(("n0.", f"netmesh-{pid}-"))
    )
    assert d.procs[0].poll() is None  # the running daemon is untouched
    assert len(d.clients[0].channels()) == 1


def test_clean_exits_remove_every_lock_and_a_sigkilled_daemons_are_taken_over(
    one: Daemons,
) -> None:
    d = one
    data = d.root / "data-n0"
    for sig in (signal.SIGTERM, signal.SIGINT):
        d.start(0)
        d.ready(0)
        files = sorted(os.listdir(d.run_dir))
        run_lock = [n for n in files if n.startswith(f"netmesh-{d.procs[0].pid}-")]
        assert files == sorted(["n0.lock", "n0.sock", *run_lock]) and len(run_lock) == 1
        assert (data / "node.lock").exists()
        d.clients.pop(0).close()
        d.procs[0].send_signal(sig)
        assert d.procs[0].wait(20) == 0, d.log(0)
        assert os.listdir(d.run_dir) == [], sig  # before: n0.lock stayed
        assert not (data / "node.lock").exists(), sig
    d.start(0)
    d.ready(0)
    killed = d.procs[0].pid
    d.kill(0)  # SIGKILL: no cleanup runs
    left = sorted(os.listdir(d.run_dir))
    assert "n0.lock" in left and any(n.startswith(f"netmesh-{killed}-") for n in left), left
    assert (data / "node.lock").read_text() == str(killed)
    d.start(0)
    d.ready(0)
    log = d.log(0)
    assert f"stale lock {d.run_dir / 'n0.lock'} of pid {killed} (not running) taken over" in log
    assert f"stale lock {data / 'node.lock'} of pid {killed} (not running) taken over" in log
    assert f"stale run netmesh-{killed}-" in log
    assert d.terminate(0) == 0
    assert os.listdir(d.run_dir) == []
    assert not (data / "node.lock").exists()
    wait_until(lambda: d.leftovers() == [], timeout=5, message="no shared memory left")

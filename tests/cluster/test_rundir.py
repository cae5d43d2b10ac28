"""The run directory: one default for every user of it; lock files that do not outlive
their holder's clean exit, and stale ones taken over with a log line."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile

import pytest

from netmesh.cli import status
from netmesh.cluster import rundir, supervisor
from netmesh.errors import NameTaken

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("xdg", [True, False])
def test_status_run_files_and_client_sockets_share_one_default(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, xdg: bool
) -> None:
    """`netmesh status` looked in the temp dir while sockets were in
    $XDG_RUNTIME_DIR/netmesh or /tmp/netmesh-<uid>: the same `netmesh up` was half found."""
    monkeypatch.delenv("NETMESH_RUN_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    if xdg:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
        expected = tmp_path / "xdg" / "netmesh"
    else:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        expected = tmp_path / "tmp" / f"netmesh-{os.getuid()}"
    assert rundir.default_run_dir() == str(expected)
    assert os.path.dirname(rundir.socket_path("demo")) == str(expected)
    assert os.path.dirname(status.run_file(1234)) == str(expected)
    (tmp_path / "tmp").mkdir()
    if xdg:
        (tmp_path / "xdg").mkdir()
    path = status.write_run_file(os.getpid(), {"pages": []})
    assert os.path.dirname(path) == str(expected)
    assert status.find_run_files() == [path]
    os.unlink(path)


def test_only_rundir_reads_the_run_dir_environment() -> None:
    """One function is the single source: no other module of the package defaults a run
    directory (reads NETMESH_RUN_DIR / XDG_RUNTIME_DIR or builds a /tmp path)."""
    offenders = []
    for path in (ROOT / "netmesh").rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#")[0]
            if any(k in code for k in ('"NETMESH_RUN_DIR"', '"XDG_RUNTIME_DIR"', "gettempdir(")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_claim_close_removes_socket_and_lock(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path))
    c = rundir.claim("alpha")
    assert sorted(os.listdir(tmp_path)) == ["alpha.lock", "alpha.sock"]
    with pytest.raises(NameTaken, match="already running"):
        rundir.claim("alpha")
    c.close()
    assert os.listdir(tmp_path) == []
    held = rundir.claim("alpha", listen=False)  # a name held without a socket
    assert os.listdir(tmp_path) == ["alpha.lock"]
    assert rundir.served_names() == []  # not served until it listens
    held.listen()
    assert rundir.served_names() == ["alpha"]
    held.close()
    assert os.listdir(tmp_path) == []


def test_stale_lock_of_a_sigkilled_process_is_taken_over_with_a_log_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path))
    code = (
        "import os, signal, sys\n"
        "from netmesh.cluster import rundir\n"
        "rundir.claim('beta')\n"
        "print('claimed', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "NETMESH_RUN_DIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"claimed\n"
        with pytest.raises(NameTaken, match=f"pid {proc.pid}"):
            rundir.claim("beta")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    assert (tmp_path / "beta.lock").read_text() == str(proc.pid)  # left behind by SIGKILL
    with caplog.at_level(logging.WARNING, logger="netmesh.cluster.rundir"):
        c = rundir.claim("beta")
    lines = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert len(lines) == 1 and f"pid {proc.pid} (not running)" in lines[0], lines
    assert (tmp_path / "beta.lock").read_text() == str(os.getpid())
    c.close()
    assert os.listdir(tmp_path) == []


def test_a_lock_released_between_open_and_flock_is_not_kept(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder unlinks the file after we opened it, before our flock: the flock of the
    unlinked inode would succeed, so take_lock must notice and lock the path's file."""
    path = str(tmp_path / "gamma.lock")
    real_flock = rundir.fcntl.flock
    calls = []

    def flock(fd: int, op: int) -> None:
        if not calls:  # the holder's release_lock runs now: unlink, then its close
            os.unlink(path)
        calls.append(fd)
        real_flock(fd, op)

    open(path, "w").close()
    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    fd = rundir.take_lock(path, "test lock")
    try:
        assert len(calls) == 2
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
    finally:
        rundir.release_lock(path, fd)
    assert not os.path.exists(path)


def test_stale_run_lock_is_removed_with_a_log_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path))
    path, fd = supervisor.claim_run("netmesh-999999-abcd1234")
    os.close(fd)  # as a SIGKILL would: the file stays, its lock goes
    with caplog.at_level(logging.WARNING, logger="netmesh.cluster.supervisor"):
        supervisor.remove_stale_names()
    assert not os.path.exists(path)
    assert any("netmesh-999999-abcd1234" in r.getMessage() for r in caplog.records)

"""Supervisor control connection against a hand-driven peer (a real socketpair)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import posix_ipc
import psutil
import pytest

from netmesh.cluster import control
from netmesh.cluster.supervisor import Supervisor, Worker, claim_run, remove_stale_names
from netmesh.errors import NodeUnresponsive


def _fake_worker(sup: Supervisor) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A live process standing in for a node; the test speaks for it on the socket."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ours, theirs = socket.socketpair()
    sup.workers[0] = Worker(0, proc, ours)
    return theirs, proc


def _read_request(sock: socket.socket) -> list:
    dec = control.FrameDecoder()
    while not (msgs := dec.feed(sock.recv(65536))):
        pass
    return msgs[0]


def test_garbage_on_the_control_connection_is_reported_not_raised_raw() -> None:
    with Supervisor() as sup:
        theirs, proc = _fake_worker(sup)
        theirs.sendall(b"\x05\x00\x00\x00garbage!")
        with pytest.raises(NodeUnresponsive, match="garbage"):
            sup.call(0, "metrics", timeout=2)
        proc.kill()
        proc.wait()
        theirs.close()


def test_late_answers_are_dropped_and_later_calls_still_match() -> None:
    with Supervisor() as sup:
        theirs, proc = _fake_worker(sup)
        with pytest.raises(NodeUnresponsive, match="did not answer"):
            sup.call(0, "slow", timeout=0.05)
        late = _read_request(theirs)
        theirs.sendall(control.response(late[1], True, "late"))
        theirs.settimeout(5)

        def answer_next() -> None:
            req = _read_request(theirs)
            theirs.sendall(control.response(req[1], True, "fresh"))

        t = threading.Thread(target=answer_next)
        t.start()
        assert sup.call(0, "fast", timeout=5) == "fresh"
        t.join()
        assert sup.workers[0].responses == {} and sup.workers[0].abandoned == set()
        proc.kill()
        proc.wait()
        theirs.close()


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _shm(name: str) -> None:
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()


def _exists(name: str) -> bool:
    try:
        posix_ipc.SharedMemory(name).close_fd()
    except posix_ipc.ExistentialError:
        return False
    return True


def test_stale_names_of_a_dead_run_are_removed_when_its_lock_is_free() -> None:
    prefix = f"netmesh-{_dead_pid()}-deadbeef"
    path, fd = claim_run(prefix)
    name = f"/{prefix}-ring-0-1"
    _shm(name)
    assert name.lstrip("/") not in remove_stale_names()  # lock held: a live run
    assert _exists(name)
    os.close(fd)  # the run ends without cleaning up
    assert name.lstrip("/") in remove_stale_names()
    assert not _exists(name) and not os.path.exists(path)


def test_a_live_run_whose_pid_is_unknown_here_keeps_its_names() -> None:
    """Issue 10 §8: a run in another PID namespace (its supervisor pid does not exist
    here) holds its lock; the sweep must not touch its shared memory."""
    prefix = f"netmesh-{_dead_pid()}-0badc0de"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from netmesh.cluster.supervisor import claim_run; "
            f"claim_run({prefix!r}); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    names = [f"/{prefix}-metrics-0", f"/{prefix}-ring-0-1"]
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for n in names:
            _shm(n)
        assert not psutil.pid_exists(int(prefix.split("-")[1]))
        assert remove_stale_names() == []
        with Supervisor():  # every new supervisor sweeps too
            pass
        assert all(_exists(n) for n in names)
    finally:
        holder.communicate(timeout=10)  # EOF on its stdin: it exits, the lock is free
    assert sorted(remove_stale_names()) == sorted(n.lstrip("/") for n in names)


def test_names_without_a_lock_file_are_never_judged_by_pid() -> None:
    name = f"/netmesh-{_dead_pid()}-feedface-ring-0-1"
    _shm(name)
    try:
        assert name.lstrip("/") not in remove_stale_names()
        assert _exists(name)
    finally:
        posix_ipc.unlink_shared_memory(name)

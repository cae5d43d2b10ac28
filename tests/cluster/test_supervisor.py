"""Supervisor control connection against a hand-driven peer (a real socketpair)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import posix_ipc
import pytest

from netmesh.cluster import control
from netmesh.cluster.supervisor import Supervisor, Worker, remove_stale_names
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


def test_stale_names_of_dead_runs_are_removed() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"/netmesh-{dead.pid}-deadbeef-ring-0-1"
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()
    removed = remove_stale_names()
    assert name.lstrip("/") in removed
    with pytest.raises(posix_ipc.ExistentialError):
        posix_ipc.SharedMemory(name)

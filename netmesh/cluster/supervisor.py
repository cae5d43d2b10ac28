"""Supervisor: starts, calls, kills and stops worker processes; owns every shm name.

Each worker is ``python -P -m netmesh.cluster.node_worker --control-fd N`` with one end of a
socketpair as its control connection (protocol: :mod:`netmesh.cluster.control`). Workers
die with the supervisor: they set PR_SET_PDEATHSIG and also exit when the control
connection reaches EOF, unlinking the shared-memory names they were given.

Workers run in their own session (``start_new_session``), so the terminal's signals
(Ctrl-C sends SIGINT to the whole foreground process group) reach the supervisor
only; it stops the workers in order. Every name carries this run's
prefix ``netmesh-<supervisor pid>-<token>``; ``close()`` unlinks them all.

Ownership of a run's names is a lock, not a pid: the supervisor holds ``flock`` on
``<run dir>/<prefix>.lock`` (:mod:`netmesh.cluster.rundir`) for its whole life, and its
workers inherit that lock's descriptor, so the lock is free only once every process
of the run is gone. A new supervisor's sweep (:func:`remove_stale_names`) removes the
names of a run only when it can take that run's lock itself; a run whose lock is held
(alive, even in another PID namespace where its pid means nothing here) or whose lock
file it cannot see (another run directory) is left alone.

Exits: a thread per worker waits for its exit without reaping it (``waitid`` with
``WNOWAIT``) and calls ``on_exit(index, pid)`` at once, so the owner can tell the
worker's producers (``Cluster`` marks their rings closed: RingClosed within
milliseconds, whoever killed the worker).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from netmesh.cluster import control, rundir
from netmesh.errors import Closed, DecodeError, NetmeshError, NodeError, NodeUnresponsive
from netmesh.ring.shm import unlink_ring

log = logging.getLogger(__name__)
SHM_DIR = "/dev/shm"
_RUN_NAME = re.compile(r"^(?:sem\.)?(netmesh-\d+-[0-9a-f]+)-")
_RUN_LOCK = re.compile(r"^(netmesh-\d+-[0-9a-f]+)\.lock$")


#: former name of :class:`netmesh.errors.NodeError`
WorkerError = NodeError


@dataclass
class Worker:
    """One worker process and its control connection."""

    index: int
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    decoder: control.FrameDecoder = field(default_factory=control.FrameDecoder)
    responses: dict[int, list[Any]] = field(default_factory=dict)
    abandoned: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Process manager for one run; use as a context manager or call ``close()``."""

    def __init__(self) -> None:
        self.prefix = f"netmesh-{os.getpid()}-{secrets.token_hex(4)}"
        self.workers: dict[int, Worker] = {}
        #: called from a watcher thread as ``on_exit(index, pid)`` when a worker exits
        self.on_exit: Callable[[int, int], None] | None = None
        self._call_lock = threading.RLock()
        self._names: set[str] = set()
        self._next_id = 1
        self._closed = False
        self._lock_path, self._lock_fd = claim_run(self.prefix)
        remove_stale_names()

    # -- names -----------------------------------------------------------------------
    def name(self, *parts: object) -> str:
        """A new shm/semaphore name of this run (registered for cleanup)."""
        n = "/" + "-".join([self.prefix, *map(str, parts)])
        self._names.add(n)
        return n

    def forget_name(self, name: str) -> None:
        self._names.discard(name)

    # -- processes -------------------------------------------------------------------
    def spawn(self, index: int, args: list[str] | None = None) -> Worker:
        """Start worker ``index`` (``python -P -m netmesh.cluster.node_worker``)."""
        if self._closed:
            raise Closed("supervisor is closed")
        old = self.workers.get(index)
        if old is not None:  # a restart: the previous incarnation's connection is done
            old.sock.close()
            _PROCS.pop(old.pid, None)
        ours, theirs = socket.socketpair()
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "netmesh.cluster.node_worker",
            "--control-fd",
            str(theirs.fileno()),
            "--parent-pid",
            str(os.getpid()),
            *(args or []),
        ]
        # own session: Ctrl-C at a terminal reaches the supervisor only (module doc)
        proc = subprocess.Popen(
            cmd,
            pass_fds=[theirs.fileno(), self._lock_fd],  # the run's lock lives while it does
            close_fds=True,
            start_new_session=True,
        )
        theirs.close()
        w = Worker(index, proc, ours)
        self.workers[index] = w
        threading.Thread(
            target=self._watch, args=(index, proc.pid), name=f"watch-{index}", daemon=True
        ).start()
        return w

    def _watch(self, index: int, pid: int) -> None:
        """Wait for worker ``pid`` to exit (not reaping it: Popen does) and report it."""
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        cb = self.on_exit
        if cb is not None and not self._closed:
            try:
                cb(index, pid)
            except Exception:  # a watcher must not die noisily
                log.exception("on_exit callback for node %d failed", index)

    def call(self, index: int, op: str, /, timeout: float = 10.0, **args: Any) -> Any:
        """Send a control request and wait for its answer.

        Raises NodeUnresponsive (no answer in time, or the worker died), the
        :mod:`netmesh.errors` class the worker raised (its message prefixed with
        ``"node <index> <op>: "``), or NodeError for any other exception of the worker.
        """
        with self._call_lock:  # clients are served from other threads (ClientServer)
            return self._call(index, op, timeout, args)

    def _call(self, index: int, op: str, timeout: float, args: dict[str, Any]) -> Any:
        w = self.workers.get(index)
        if w is None or not w.alive():
            raise NodeUnresponsive(f"node {index} is not running")
        req_id = self._next_id
        self._next_id += 1
        try:
            w.sock.sendall(control.request(req_id, op, args))
        except OSError as exc:
            raise NodeUnresponsive(f"node {index}: control connection broken ({exc})") from None
        deadline = time.monotonic() + timeout
        while req_id not in w.responses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                w.abandoned.add(req_id)  # a late answer is dropped, not kept forever
                raise NodeUnresponsive(f"node {index} did not answer {op!r} within {timeout}s")
            self._pump(w, remaining)
        _, _, ok, value = w.responses.pop(req_id)
        if not ok:
            raise control.error_from_value(value, f"node {index} {op}")
        return value

    def _pump(self, w: Worker, timeout: float) -> None:
        w.sock.settimeout(min(timeout, 0.2))
        try:
            data = w.sock.recv(1 << 20)
        except TimeoutError:
            if not w.alive():
                raise NodeUnresponsive(
                    f"node {w.index} exited with code {w.proc.returncode}"
                ) from None
            return
        except OSError as exc:
            raise NodeUnresponsive(f"node {w.index}: control connection broken ({exc})") from None
        if not data:
            w.proc.wait(5)
            raise NodeUnresponsive(f"node {w.index} exited with code {w.proc.returncode}")
        try:
            messages = w.decoder.feed(data)
        except DecodeError as exc:
            raise NodeUnresponsive(
                f"node {w.index} sent garbage on its control connection ({exc})"
            ) from None
        for msg in messages:
            if msg[0] != control.RESPONSE:
                raise NodeUnresponsive(f"node {w.index} sent a request to its supervisor")
            if msg[1] in w.abandoned:
                w.abandoned.discard(msg[1])
            else:
                w.responses[msg[1]] = msg

    def kill(self, index: int) -> int | None:
        """SIGKILL worker ``index`` and reap it; returns its exit code."""
        w = self.workers.get(index)
        if w is None:
            return None
        if w.alive():
            w.proc.send_signal(signal.SIGKILL)
        code = w.proc.wait(10)
        w.sock.close()
        return code

    def stop(self, index: int, grace: float = 3.0) -> int | None:
        """Ask worker ``index`` to shut down, SIGTERM then SIGKILL after ``grace`` s."""
        w = self.workers.get(index)
        if w is None:
            return None
        if w.alive():
            with contextlib.suppress(NetmeshError):
                self.call(index, "shutdown", timeout=grace)
            try:
                w.proc.wait(grace)
            except subprocess.TimeoutExpired:
                w.proc.terminate()
                try:
                    w.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait(5)
        w.sock.close()
        return w.proc.returncode

    def exit_code(self, index: int) -> int | None:
        """None while worker ``index`` runs, else its exit code (negative: signal)."""
        w = self.workers.get(index)
        return None if w is None else w.proc.poll()

    def process_stats(self, index: int) -> dict[str, Any]:
        """psutil figures of worker ``index``: cpu_percent since last call, rss, threads."""
        w = self.workers.get(index)
        if w is None or not w.alive():
            return {"cpu_percent": 0.0, "rss_bytes": 0, "threads": 0}
        try:
            p = _psutil_process(w.pid)
            with p.oneshot():
                return {
                    "cpu_percent": p.cpu_percent(None),
                    "rss_bytes": p.memory_info().rss,
                    "threads": p.num_threads(),
                }
        except psutil.Error:
            return {"cpu_percent": 0.0, "rss_bytes": 0, "threads": 0}

    # -- shutdown --------------------------------------------------------------------
    def close(self, grace: float = 3.0) -> None:
        """Stop every worker and unlink every name of this run; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for index in list(self.workers):
                self.stop(index, grace)
        finally:
            for n in self._names:
                unlink_ring(n)
            self._names.clear()
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PROCS: dict[int, psutil.Process] = {}


def _psutil_process(pid: int) -> psutil.Process:
    # keep one Process per pid so cpu_percent(None) measures since the previous call
    p = _PROCS.get(pid)
    if p is None:
        p = _PROCS[pid] = psutil.Process(pid)
    return p


def claim_run(prefix: str) -> tuple[str, int]:
    """Create and lock ``<run dir>/<prefix>.lock`` (flock, exclusive); (path, fd).

    The file is locked under a temporary name and then renamed into place, so a sweep
    never finds it unlocked. Hold the fd for the run's whole life (children that
    inherit it hold the lock too); ConfigError if the run directory is not ours.
    """
    directory = rundir.run_dir()
    path = os.path.join(directory, f"{prefix}.lock")
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path, fd


def _take_dead_run(directory: str, prefix: str) -> int | None:
    """The fd of ``prefix``'s lock, taken, if its run is provably over; else None
    (lock held by a live process, or no lock file we can see: never judge by pid)."""
    try:
        fd = os.open(os.path.join(directory, f"{prefix}.lock"), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_names() -> list[str]:
    """Unlink the shm names of runs that are provably over; returns them.

    A run is over when its lock file (see :func:`claim_run`) is in our run directory
    and nobody holds its lock. Names of a run we cannot prove dead (its lock is held,
    or it has no lock file here: another run directory, another PID namespace, an
    older netmesh) are left alone. The lock files of dead runs are removed too.
    """
    removed: list[str] = []
    try:
        directory = rundir.run_dir()
    except NetmeshError:
        return removed
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        entries = []
    taken: dict[str, int | None] = {}
    try:
        for entry in entries:
            m = _RUN_NAME.match(entry)
            if m is None:
                continue
            prefix = m.group(1)
            if prefix not in taken:
                taken[prefix] = _take_dead_run(directory, prefix)
            if taken[prefix] is None:
                continue
            try:
                os.unlink(os.path.join(SHM_DIR, entry))
                removed.append(entry)
            except OSError:
                pass
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):  # lock files of runs that left no names
                m = _RUN_LOCK.match(entry)
                if m and m.group(1) not in taken:
                    taken[m.group(1)] = _take_dead_run(directory, m.group(1))
        for prefix, fd in taken.items():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, f"{prefix}.lock"))
                names = sum(1 for e in removed if prefix in e)
                log.warning(
                    "stale run %s of pid %s (gone without cleaning up: its lock was free)"
                    " taken over: its lock file and %d shared-memory names removed",
                    prefix,
                    prefix.split("-")[1],
                    names,
                )
    finally:
        for fd in taken.values():
            if fd is not None:
                os.close(fd)
    return removed

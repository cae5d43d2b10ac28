"""Real Redis and NATS servers for tests: started on free loopback ports in temporary
directories, waited for until they answer, stopped by PID.

The binaries are Debian's ``redis-server`` and ``nats-server`` (``.ci/run`` installs them
when missing); a fixture skips its test with a message naming the binary when it is not
on ``PATH``. Use the classes directly, or the pytest fixtures at the end of this module
(``pytest_plugins = ["netmesh.testing.servers"]`` in a conftest, or import them)::

    def test_x(redis_server):            # RedisServer, appendonly on, stopped afterwards
        bus = EventBus(adapter=RedisStreamsAdapter(redis_server.url))

Every server is a child process of the test process and is stopped (SIGTERM, then
SIGKILL after a grace period) when its fixture ends, so netmesh's leak check passes.
Readiness is polled with a deadline: Redis must answer ``PING``; NATS must answer
``/healthz`` on its monitoring port (JetStream ready, and in a cluster a meta leader).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.testing.wait import wait_until

START_TIMEOUT = 10.0  # seconds a server gets to answer after spawn
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(binary: str) -> str:
    """Path of ``binary``, or skip the calling test naming it."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install {binary}; .ci/run does it)")
    return path


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (Linux
    ``PR_SET_PDEATHSIG``), so a test killed by a timeout leaves no server behind. The
    signal follows the *thread* that spawned it: start servers from a thread that
    outlives them (pytest's main thread does)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Server:
    """A child server process: ``start``, ``kill`` (SIGKILL), ``stop`` (SIGTERM), by PID."""

    name = "server"

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> None:
        """Spawn the server (same ports and directory as before on a restart) and, with
        ``wait``, poll until it answers; raise RuntimeError with its log if it exits."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                self._argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            return self._ready()

        wait_until(ready, timeout, 0.01, f"{self.name} to answer")

    def kill(self) -> None:
        """SIGKILL the server and reap it (a crash: nothing is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` s; reaps the process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and directory."""
        self.stop()
        self.start()


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1; ``appendonly`` (fsync always) so data survives a
    kill; ``replicaof`` another :class:`RedisServer` to make this one its replica."""

    name = "redis-server"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        appendonly: bool = True,
        replicaof: RedisServer | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = require("redis-server")
        self.port = port or free_port()
        self.appendonly = appendonly
        self.replicaof = replicaof

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--save", "", "--daemonize", "no"]
        argv += ["--protected-mode", "no", "--logfile", ""]
        argv += ["--repl-diskless-sync-delay", "0"]  # a replica links in ms, not 5 s
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replicaof.port)]
        return argv

    def command(self, *args: str, timeout: float = 1.0) -> bytes:
        """Send one inline command, return the first reply line (no client library)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data

    def _ready(self) -> bool:
        try:
            if not self.command("PING").startswith(b"+PONG"):
                return False
            if self.replicaof is not None:  # replica: linked to its primary
                return b"master_link_status:up" in self._info_replication()
            return True
        except OSError:
            return False

    def _info_replication(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            s.sendall(b"INFO replication\r\n")
            data = b""
            while b"master_repl_offset" not in data and b"-ERR" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data


class NatsServer(_Server):
    """``nats-server -js`` on 127.0.0.1 (client, monitoring and, in a cluster, route ports
    all free loopback ports); store in the work directory."""

    name = "nats-server"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        server_name: str = "n0",
        cluster: str | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = require("nats-server")
        self.server_name = server_name
        self.port = free_port()
        self.http_port = free_port()
        self.cluster = cluster
        self.cluster_port = cluster_port or (free_port() if cluster else None)
        self.routes = routes or []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.server_name}"',
            "host: 127.0.0.1",
            f"port: {self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}',
        ]
        if self.cluster:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster}", listen: 127.0.0.1:{self.cluster_port}, '
                f"routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def _argv(self) -> list[str]:
        conf = self.dir / "nats.conf"
        conf.write_text(self._config())
        return [self.binary, "-c", str(conf)]

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=1.0)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                return resp.status == 200 and b"ok" in resp.read()
            finally:
                conn.close()
        except OSError:
            return False


class NatsCluster:
    """``n`` JetStream servers routed to each other on loopback (one cluster, R3-capable).

    ``urls`` is the comma-separated client URL list; ``servers[i].kill()`` and ``.start()``
    kill and restart one node.
    """

    def __init__(self, workdir: str | os.PathLike[str], n: int = 3, name: str = "netmesh") -> None:
        ports = [free_port() for _ in range(n)]
        self.servers = [
            NatsServer(
                Path(workdir) / f"n{i}",
                server_name=f"n{i}",
                cluster=name,
                cluster_port=ports[i],
                routes=[p for j, p in enumerate(ports) if j != i],
            )
            for i in range(n)
        ]

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.servers)

    def start(self) -> None:
        for s in self.servers:
            s.start(wait=False)
        for s in self.servers:
            s.wait_ready(START_TIMEOUT * 2)

    def by_name(self, server_name: str) -> NatsServer:
        return next(s for s in self.servers if s.server_name == server_name)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


# ---------------------------------------------------------------------- pytest fixtures
@contextlib.contextmanager
def _tmpdir(prefix: str) -> Iterator[str]:
    # short paths in /tmp: tmp_path can exceed the Unix-socket and NATS path limits
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running Redis (appendonly, fsync always); stopped and removed afterwards."""
    with _tmpdir("nm-redis-") as d:
        srv = RedisServer(d)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture
def redis_pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """(primary, replica): the replica runs ``REPLICAOF`` the primary and is linked."""
    with _tmpdir("nm-redis2-") as d:
        primary = RedisServer(Path(d) / "p")
        # no AOF on the replica: a SIGTERM during its initial AOF rewrite is refused
        replica = RedisServer(Path(d) / "r", appendonly=False, replicaof=primary)
        primary.start()
        try:
            replica.start()
            yield primary, replica
        finally:
            replica.stop()
            primary.stop()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A running single JetStream server; stopped and removed afterwards."""
    with _tmpdir("nm-nats-") as d:
        srv = NatsServer(d)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed JetStream servers on loopback, all healthy; stopped afterwards."""
    with _tmpdir("nm-natsc-") as d:
        c = NatsCluster(d)
        try:
            c.start()
            yield c
        finally:
            c.stop()


__all__ = [
    "NatsCluster",
    "NatsServer",
    "RedisServer",
    "free_port",
    "nats_cluster",
    "nats_server",
    "redis_pair",
    "redis_server",
]

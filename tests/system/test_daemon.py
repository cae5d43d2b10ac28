"""Node daemons (`netmesh node --config`) as separate OS processes, one per "host".

Three daemons, each from its own config file and data directory, bound to 127.0.0.1,
127.0.0.2 and 127.0.0.3: replication, SIGKILL of the leader daemon and failover, restart
and catch-up, clients (netmesh.connect) publishing and subscribing against a daemon,
/metrics parsed with prometheus_client, SIGHUP reload, SIGTERM leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import netmesh
from netmesh.client.client import Client
from netmesh.errors import NotLeader
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system

CHANNEL = "orders"
CHANNELS_TOML = f"""
[[channels]]
name = "{CHANNEL}"
factor = 3
ack = "quorum"
heartbeat_ms = 150
"""


def netmesh_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Daemons:
    """N daemons with their keys, PSK, configs and data dirs under ``root``.

    ``prefix(i)``: a command prefix for daemon i (``ip netns exec NS`` in namespaces).
    Every process started is remembered by pid and killed in ``close()``.
    """

    def __init__(
        self,
        root: Path,
        hosts: Sequence[str],
        channels_toml: str = CHANNELS_TOML,
        metrics: bool = True,
        prefix: Callable[[int], list[str]] = lambda i: [],
        ports: Sequence[int] | None = None,
        max_datagram: int | None = None,
        announce_ms: int | None = None,
    ) -> None:
        self.root = root
        self.hosts = list(hosts)
        self.prefix = prefix
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o700)
        self.env = {**os.environ, "NETMESH_RUN_DIR": str(self.run_dir)}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.pids: list[int] = []
        self.clients: dict[int, Client] = {}
        self.names = [f"n{i}" for i in range(len(hosts))]
        out = netmesh_cli("psk", "--out", str(root / "cluster.psk"), env=self.env)
        assert out.returncode == 0, out.stderr
        self.keys: list[dict[str, Any]] = []
        for i in range(len(hosts)):
            out = netmesh_cli("keygen", "--out", str(root / f"n{i}.key"), "--json", env=self.env)
            assert out.returncode == 0, out.stderr
            self.keys.append(json.loads(out.stdout))
        self.ports = list(ports) if ports else [free_udp_port(h) for h in hosts]
        self.metrics = [f"{h}:{free_tcp_port(h)}" if metrics else None for h in hosts]
        self.channels_toml = channels_toml
        self.max_datagram = max_datagram
        self.announce_ms = announce_ms
        for i in range(len(hosts)):
            self.write_config(i, [j for j in range(len(hosts)) if j != i])

    def write_config(self, i: int, peers: Sequence[int], channels: str | None = None) -> Path:
        lines = [
            "[node]",
            f'bind = "{self.hosts[i]}:{self.ports[i]}"',
            f'key_file = "n{i}.key"',
            'psk_file = "cluster.psk"',
            f'data_dir = "data-n{i}"',
            f'name = "{self.names[i]}"',
            "keepalive_ms = 100",
            "session_timeout_ms = 1000",
        ]
        if self.metrics[i]:
            lines.append(f'metrics = "{self.metrics[i]}"')
        if self.max_datagram:
            lines.append(f"max_datagram = {self.max_datagram}")
        if self.announce_ms:
            lines.append(f"announce_interval_ms = {self.announce_ms}")
        for j in peers:
            lines += [
                "",
                "[[peers]]",
                f'address = "{self.hosts[j]}:{self.ports[j]}"',
                f'public_key = "{self.keys[j]["public_key"]}"',
            ]
        text = "\n".join(lines) + "\n" + (self.channels_toml if channels is None else channels)
        path = self.config(i)
        path.write_text(text)
        return path

    def config(self, i: int) -> Path:
        return self.root / f"n{i}.toml"

    def log(self, i: int) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.root / f"n{i}.log").read_text()
        return ""

    def start(self, i: int) -> subprocess.Popen[bytes]:
        cmd = [*self.prefix(i), sys.executable, "-P", "-m", "netmesh.cli", "node"]
        with open(self.root / f"n{i}.log", "ab") as logf:
            proc = subprocess.Popen(
                [*cmd, "--config", str(self.config(i)), "--log-level", "INFO"],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.procs[i] = proc
        self.pids.append(proc.pid)
        return proc

    def ready(self, i: int, timeout: float = 20.0) -> Client:
        """Wait until daemon i serves clients; its Client (kept and closed later)."""

        def serving() -> Client | None:
            proc = self.procs[i]
            assert proc.poll() is None, f"daemon {i} exited {proc.returncode}: {self.log(i)}"
            if not (self.run_dir / f"{self.names[i]}.sock").exists():
                return None
            try:
                return netmesh.connect(self.names[i])
            except netmesh.errors.NetmeshError:
                return None

        old = self.clients.pop(i, None)
        if old is not None:
            old.close()
        self.clients[i] = wait_until(serving, timeout=timeout, message=f"daemon {i} serving")
        return self.clients[i]

    def start_all(self) -> None:
        for i in range(len(self.hosts)):
            self.start(i)
        for i in range(len(self.hosts)):
            self.ready(i)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def row(self, i: int, channel: str = CHANNEL) -> Any:
        for c in self.clients[i].channels():
            if c.name == channel:
                return c
        return None

    def leader(self, channel: str = CHANNEL) -> int | None:
        """The daemon that leads ``channel`` by the account of every live daemon (each
        names it by its own config's index: 0 itself, k its ``peers[k - 1]``)."""
        seen = set()
        for i in self.alive():
            r = self.row(i, channel)
            if r is None or r.leader is None:
                return None
            others = [j for j in range(len(self.hosts)) if j != i]
            seen.add(i if r.leader == 0 else others[r.leader - 1])
        return seen.pop() if len(seen) == 1 else None

    def wait_leader(self, other_than: int | None = None, timeout: float = 20.0) -> int:
        """Wait for one leader (not ``other_than``) that every live daemon agrees on."""

        def found() -> tuple[int] | None:
            x = self.leader()
            return None if x is None or x == other_than else (x,)

        return wait_until(found, timeout=timeout, message="one leader")[0]

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(10)
        c = self.clients.pop(i, None)
        if c is not None:
            c.close()

    def terminate(self, i: int, timeout: float = 20.0) -> int:
        c = self.clients.pop(i, None)
        if c is not None:
            c.close()
        self.procs[i].send_signal(signal.SIGTERM)
        return self.procs[i].wait(timeout)

    def metrics_text(self, i: int) -> str:
        with urllib.request.urlopen(f"http://{self.metrics[i]}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def leftovers(self) -> list[str]:
        """Shared-memory names of any daemon this run started, and its sockets and run
        locks in the run dir."""
        shm = [
            n
            for n in os.listdir("/dev/shm")
            if any(n.split("sem.")[-1].startswith(f"netmesh-{pid}-") for pid in self.pids)
        ]
        socks = [
            n
            for n in os.listdir(self.run_dir)
            if n.endswith(".sock")
            or any(n.startswith(f"netmesh-{pid}-") for pid in self.pids)  # run locks
        ]
        return shm + socks


@pytest.fixture
def daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    d = Daemons(tmp_path, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        yield d
    finally:
        d.close()


def publish(client: Client, n: int, start: int = 0, size: int = 100) -> int:
    """Append events ``start .. start+n`` (payload ``ev-<i>`` padded) and flush."""
    with client.producer(CHANNEL) as p:
        for b in range(start, start + n, 1000):
            p.append_batch([payload(i, size) for i in range(b, min(start + n, b + 1000))])
        return p.flush()


def payload(i: int, size: int = 100) -> bytes:
    return f"ev-{i}".encode().ljust(size, b".")


def scenario(d: Daemons, n_before: int = 20_000, n_during: int = 50_000) -> dict[str, float]:
    """Replication, SIGKILL of the leader, failover, restart and catch-up; the figures."""
    d.start_all()
    lead = d.wait_leader()
    follower = next(i for i in d.alive() if i != lead)
    # a replica refuses producers and names the leader
    with pytest.raises(NotLeader):
        d.clients[follower].producer(CHANNEL)
    sub = d.clients[follower].subscribe(CHANNEL, from_seq=0)
    assert publish(d.clients[lead], n_before) == n_before - 1
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < n_before and time.monotonic() < deadline:
        got += [ev.payload for ev in sub.poll(1.0)]
    sub.close()
    assert got == [payload(i) for i in range(n_before)]  # replicated, in order, committed
    wait_until(
        lambda: all(d.row(i).next_seq == n_before for i in d.alive()),
        timeout=20,
        message="every daemon holds the events",
    )

    t_kill = time.monotonic()
    d.kill(lead)
    new = d.wait_leader(other_than=lead)
    failover_s = time.monotonic() - t_kill
    assert publish(d.clients[new], n_during, start=n_before) == n_before + n_during - 1
    total = n_before + n_during

    t_start = time.monotonic()
    d.start(lead)
    d.ready(lead)
    t_ready = time.monotonic()
    wait_until(
        lambda: d.row(lead) is not None and d.row(lead).commit == total,
        timeout=60,
        message="restarted daemon caught up",
    )
    catchup_s = time.monotonic() - t_start
    serving_s = t_ready - t_start
    assert d.row(lead).leader not in (0, None)  # it follows the new leader
    back = d.clients[lead].read_range(CHANNEL, 0, total)
    assert [ev.payload for ev in back] == [payload(i) for i in range(total)]
    return {
        "failover_s": round(failover_s, 3),
        "restart_serving_s": round(serving_s, 3),
        "catchup_s": round(catchup_s, 3),
        "catchup_events": n_during,
    }


def test_three_daemons_replicate_fail_over_and_catch_up(daemons: Daemons) -> None:
    figures = scenario(daemons)
    print(f"\nDAEMON FIGURES {json.dumps(figures)}")
    assert figures["failover_s"] < 10
    # /metrics in Prometheus text, read with the reference parser
    lead = daemons.leader()
    assert lead is not None
    fams = {f.name: f for f in text_string_to_metric_families(daemons.metrics_text(lead))}
    roles = {
        s.labels["role"]: s.value
        for s in fams["netmesh_channel_role"].samples
        if s.labels["channel"] == CHANNEL
    }
    assert roles["LEADER"] == 1 and roles["REPLICA"] == 0
    peers_up = [s.value for s in fams["netmesh_peer_up"].samples]
    assert peers_up == [1.0, 1.0]
    tail = [s.value for s in fams["netmesh_channel_tail_seq"].samples]
    assert tail == [70_000.0]
    # node-status over the socket and over the metrics address
    out = netmesh_cli("node-status", daemons.names[lead], "--json", env=daemons.env)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["channels"][0]["leader"] == 0 and view["channels"][0]["next_seq"] == 70_000
    out = netmesh_cli("node-status", daemons.metrics[lead] or "", env=daemons.env)
    assert out.returncode == 0, out.stderr
    assert "LEADER" in out.stdout and out.stdout.count(" up") >= 2
    same = netmesh_cli("status", "--node", daemons.names[lead], "--json", env=daemons.env)
    assert same.returncode == 0, same.stderr
    ch = json.loads(same.stdout)["channels"][0]  # issue 13 §2's spelling of node-status
    assert (ch["leader"], ch["next_seq"]) == (0, 70_000)
    # SIGTERM with clients still attached (a producer on the leader, a subscription on a
    # replica): clean exit 0, nothing left behind (sockets, shared memory, sessions)
    follower = next(i for i in daemons.alive() if i != lead)
    with netmesh.connect(daemons.names[lead]) as c1, netmesh.connect(daemons.names[follower]) as c2:
        p = c1.producer(CHANNEL)
        p.append(b"last")
        assert p.flush() == 70_000
        sub = c2.subscribe(CHANNEL, from_seq=69_990)
        assert len(sub.poll(5.0)) > 0
        for i in daemons.alive():
            assert daemons.terminate(i) == 0, daemons.log(i)
    for i in daemons.alive():
        assert daemons.terminate(i) == 0, daemons.log(i)
    assert daemons.leftovers() == []
    log = daemons.log(0)
    assert "Traceback" not in log and "stopped" in log


def test_peers_that_start_late_are_joined_with_back_off(daemons: Daemons) -> None:
    daemons.start(0)
    c0 = daemons.ready(0)
    # alone: the channel is open, no leader can be elected in quorum mode
    assert c0.channels()[0].name == CHANNEL
    wait_until(lambda: "unreachable" in daemons.log(0), timeout=10, message="retry logged")
    daemons.start(1)
    daemons.ready(1)
    lead = daemons.wait_leader()
    assert publish(daemons.clients[lead], 10) == 9
    daemons.start(2)
    daemons.ready(2)
    wait_until(lambda: daemons.row(2).commit == 10, timeout=20, message="late node caught up")
    # {0, 1} formed without it (a majority of 3); adding it was a placement step, which
    # restarts the channel's runtime on the members: ask again who leads
    lead = daemons.wait_leader()
    # the CLI clients against daemons: publish on the leader's, tail on another's
    pub = subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", "publish", CHANNEL, "--name", f"n{lead}"],
        input="a\nb\nc\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=daemons.env,
    )
    assert pub.returncode == 0, pub.stderr
    wait_until(lambda: daemons.row(2).commit == 13, timeout=20, message="published events")
    tail = netmesh_cli("tail", CHANNEL, "--name", "n2", "--from", "10", env=daemons.env)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == ["a", "b", "c"]
    log = daemons.log(0)
    # one line per peer state change, not one per attempt
    assert log.count("unreachable") <= 2, log
    assert log.count(") up") == 2, log
    for i in daemons.alive():
        assert daemons.terminate(i) == 0


def test_sighup_reload_opens_and_closes_channels(daemons: Daemons) -> None:
    local = '\n[[channels]]\nname = "local/notes"\nreplicated = false\n'
    daemons.start(0)
    c0 = daemons.ready(0)
    daemons.write_config(0, [1, 2], CHANNELS_TOML + local)
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(
        lambda: [c.name for c in c0.channels()] == [CHANNEL, "local/notes"],
        timeout=10,
        message="reloaded channel",
    )
    with c0.producer("local/notes") as p:  # a local channel: this node leads it
        p.append_batch([b"a", b"b"])
        assert p.flush() == 1
    # a broken file is refused, the running configuration stays
    daemons.config(0).write_text("[node]\nbogus = 1\n")
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in daemons.log(0), timeout=10, message="refusal")
    assert "node.bogus: unknown key" in daemons.log(0)
    assert len(c0.channels()) == 2
    daemons.write_config(0, [1, 2], CHANNELS_TOML)
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: len(c0.channels()) == 1, timeout=10, message="channel closed")
    assert daemons.terminate(0) == 0
    assert daemons.leftovers() == []


def test_sighup_reload_adds_and_removes_peers(daemons: Daemons) -> None:
    def peers_up(i: int) -> dict[str, float]:
        fams = text_string_to_metric_families(daemons.metrics_text(i))
        fam = next((f for f in fams if f.name == "netmesh_peer_up"), None)
        return {} if fam is None else {s.labels["address"]: s.value for s in fam.samples}

    daemons.write_config(0, [], "")  # 0 knows nobody yet: 1's handshakes are refused
    daemons.start(0)
    daemons.start(1)
    daemons.ready(0)
    daemons.ready(1)
    one = f"{daemons.hosts[1]}:{daemons.ports[1]}"
    wait_until(lambda: "unreachable" in daemons.log(1), timeout=10, message="1 refused")
    assert peers_up(0) == {}
    daemons.write_config(0, [1], "")
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: peers_up(0) == {one: 1.0}, timeout=10, message="peer added")
    assert f"peer {daemons.keys[1]['node_id']:#018x} at {one} added" in daemons.log(0)
    daemons.write_config(0, [], "")
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: "removed" in daemons.log(0), timeout=10, message="peer removed")
    assert peers_up(0) == {}
    # its traffic is dropped: 1 sees 0 go down
    wait_until(lambda: ") down" in daemons.log(1), timeout=10, message="1 sees 0 gone")
    assert "at once" not in daemons.log(0)  # one host per reload so far
    # two hosts in one reload: applied, with a warning (quorum membership is one host at
    # a time; tests/replication/test_adversary_forms.py)
    daemons.write_config(0, [1, 2], "")
    daemons.procs[0].send_signal(signal.SIGHUP)
    wait_until(lambda: "2 hosts added or removed at once" in daemons.log(0), timeout=10)
    wait_until(lambda: one in peers_up(0), timeout=10, message="both peers applied")
    for i in daemons.alive():
        assert daemons.terminate(i) == 0


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nbind = "127.0.0.1:7411"\nkey_file = "k"\npsk_file = "p"\n')
    out = netmesh_cli("node", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "node.data_dir: missing" in out.stderr
    cfg.write_text(
        '[node]\nbind = "127.0.0.1:7411"\nkey_file = "k"\npsk_file = "p"\ndata_dir = "d"\n'
    )
    out = netmesh_cli("node", "--config", str(cfg))
    assert out.returncode == 2 and "node.key_file:" in out.stderr and "keygen" in out.stderr
    assert out.stderr.count("\n") == 1
    assert netmesh_cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    assert netmesh_cli("psk", "--out", str(tmp_path / "p")).returncode == 0
    os.chmod(tmp_path / "p", 0o644)
    out = netmesh_cli("node", "--config", str(cfg))
    assert out.returncode == 2 and "node.psk_file:" in out.stderr and "chmod 600" in out.stderr
    assert not (tmp_path / "d").exists()  # nothing started


def test_keygen_and_psk_files(tmp_path: Path) -> None:
    from netmesh.identity import EntityKeypair, node_id_of

    out = netmesh_cli("keygen", "--out", str(tmp_path / "a.key"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert set(info) == {"public_key", "node_id", "node_id_hex"}
    assert info["node_id_hex"] == f"{info['node_id']:#018x}"  # the README's 0x<16 hex>
    kp = EntityKeypair.load(tmp_path / "a.key")
    assert kp.public_key.hex() == info["public_key"]
    assert node_id_of(bytes.fromhex(info["public_key"])) == info["node_id"] == kp.node_id
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    again = netmesh_cli("keygen", "--out", str(tmp_path / "a.key"))
    assert again.returncode == 2 and "--force" in again.stderr  # never overwritten silently
    assert EntityKeypair.load(tmp_path / "a.key") == kp
    shown = netmesh_cli("keygen", "--show", str(tmp_path / "a.key"))
    assert info["public_key"] in shown.stdout and str(info["node_id"]) in shown.stdout
    out = netmesh_cli("psk", "--out", str(tmp_path / "c.psk"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.psk").stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex((tmp_path / "c.psk").read_text().strip())) == 32

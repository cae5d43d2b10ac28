"""Issue 11: clients in other processes publish and subscribe through a named cluster,
across a leader SIGKILL, with the CLI, and nobody else's uid gets in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import netmesh
from netmesh import Cluster, ReplicationConfig
from netmesh.cluster import rundir
from netmesh.errors import ChannelNotOpen, ClusterNotFound, ConfigError, NameTaken
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = tmp_path / "run"
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d))
    yield d


def _script(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-P", "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


PUBLISHER = """
import sys, netmesh
from netmesh.errors import NotLeader
name, channel, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
resent = 0
with netmesh.connect(name) as cl, cl.producer(channel) as p:
    i = 0
    while i < n:
        batch = [b"ev-%06d" % j for j in range(i, min(n, i + 200))]
        while True:
            try:
                p.append_batch(batch)
                p.flush()
                break
            except NotLeader as exc:  # resend what the dead leader did not acknowledge
                lost = min(len(batch), exc.unacknowledged)
                batch = batch[len(batch) - lost:]
                resent += lost
        i += 200
        if i == n // 2:  # half-way: let the test kill the leader, then go on
            print("half", flush=True)
            sys.stdin.readline()
print(resent)
"""

SUBSCRIBER = """
import sys, json, netmesh
name, channel, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seqs, payloads = [], []
with netmesh.connect(name) as cl:
    sub = cl.subscribe(channel, from_seq=0)
    print(sub.node, file=sys.stderr, flush=True)
    for ev in sub:
        seqs.append(ev.entry.seq)
        payloads.append(ev.payload.decode())
        if len(seqs) == n:
            break
    print(json.dumps({"seqs": seqs, "payloads": payloads, "failovers": sub.failovers,
                      "node": sub.node}))
    sub.close()
"""


def test_publisher_and_subscribers_in_other_processes_across_a_leader_sigkill(
    run_dir: Path,
) -> None:
    n = 6000  # multiple of 400: the publisher pauses at exactly n / 2
    with Cluster(nodes=3, heartbeat_ms=100, name="t-failover") as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        lead = c.wait_for_leader("orders")
        subs = [_script(SUBSCRIBER, "t-failover", "orders", str(n)) for _ in range(2)]
        served = [int(s.stderr.readline()) for s in subs]  # type: ignore[union-attr]
        lead = served[0]  # subscribers are fed by the leader (unless it just changed)
        pub = _script(PUBLISHER, "t-failover", "orders", str(n))
        assert pub.stdout is not None and pub.stdout.readline() == "half\n"
        c.kill(lead)  # mid-stream: half published, subscribers following
        pub_out, pub_err = pub.communicate("go\n", timeout=120)
        assert pub.returncode == 0, pub_err
        resent = int(pub_out)
        results = []
        for s in subs:
            out, err = s.communicate(timeout=120)
            assert s.returncode == 0, err
            results.append(json.loads(out))
        log = c.read_range(c.wait_for_leader("orders"), "orders", 0, n + resent)
    published = {b"ev-%06d" % i for i in range(n)}
    for r in results:
        assert r["failovers"] >= (r is results[0] or served[1] == lead)  # its node died
        assert r["seqs"] == list(range(n))  # every seq once, in order
        assert [p.encode() for p in r["payloads"]] == log[:n]  # the one history
    assert published <= set(log)  # nothing lost; `resent` may repeat a few, never lose
    assert len(log) - n <= resent


def test_a_stopped_subscriber_slows_nobody_and_resumes_from_the_log(
    run_dir: Path, tmp_path: Path
) -> None:
    """Issue 11: a subscriber paused (SIGSTOP) while 96 MiB are published leaves the
    serving node's RSS within 64 MiB of where it was; on resume it reads everything."""
    n, size = 96 * 1024, 1024
    code = SUBSCRIBER.replace("payloads.append(ev.payload.decode())", "payloads.append('')")
    with Cluster(nodes=2, heartbeat_ms=100, data_dir=str(tmp_path / "d"), name="t-slow") as c:
        c.open_channel("big", ReplicationConfig(factor=2))
        lead = c.wait_for_leader("big")
        sub = _script(code, "t-slow", "big", str(n))
        assert sub.stderr is not None and sub.stderr.readline().strip()  # it subscribed
        with netmesh.connect("t-slow") as cl, cl.producer("big") as p:
            p.append(b"x" * size)
            p.flush()
            wait_until(
                lambda: any(ch.name == "big" for ch in cl.channels()), timeout=10, message="ch"
            )
            os.kill(sub.pid, signal.SIGSTOP)
            node = psutil.Process(c.info[lead]["pid"])
            before = node.memory_info().rss
            peak = before
            payload = os.urandom(size)
            for _ in range(n // 256 - 1):
                p.append_batch([payload] * 256)
                peak = max(peak, node.memory_info().rss)
            p.append_batch([payload] * 255)
            p.flush()
        os.kill(sub.pid, signal.SIGCONT)
        try:
            out, err = sub.communicate(timeout=180)
        finally:
            if sub.poll() is None:  # never leave it (or its pipes) behind
                sub.kill()
                sub.communicate()
        assert sub.returncode == 0, err
        assert json.loads(out)["seqs"] == list(range(n))
    assert peak - before < 64 << 20, f"node RSS grew {(peak - before) >> 20} MiB"


def test_names_are_exclusive_and_unknown_names_are_clear(run_dir: Path) -> None:
    with pytest.raises(ClusterNotFound, match="no cluster named 'nobody'"):
        netmesh.connect("nobody")
    with pytest.raises(ConfigError):
        netmesh.connect("../etc")
    with Cluster(nodes=1, name="solo") as c:
        with pytest.raises(NameTaken, match="already running"):
            Cluster(nodes=1, name="solo")
        c.open_channel("a")
        with netmesh.connect("solo") as cl:
            assert [ch.name for ch in cl.channels()] == ["a"]
            with pytest.raises(ChannelNotOpen):
                cl.producer("b")
            assert cl.read_range("a", 0, 0) == []
            with pytest.raises(ConfigError):
                cl.read_range("a", 5, 2)
    assert not (run_dir / "solo.sock").exists()  # the name is free again
    with Cluster(nodes=1, name="solo"):
        pass


def test_a_dead_runs_socket_is_replaced(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o700)
    (run_dir / "ghost.sock").write_text("")  # left by a run that was SIGKILLed
    (run_dir / "ghost.lock").write_text("99999")
    with Cluster(nodes=1, name="ghost") as c:
        c.open_channel("x")
        with netmesh.connect("ghost") as cl:
            assert cl.info["pid"] == os.getpid()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a client as 'nobody'")
def test_a_client_of_another_uid_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    run = Path(tempfile.mkdtemp(prefix="nm-uid-"))  # under /tmp: 'nobody' can reach it
    monkeypatch.setenv("NETMESH_RUN_DIR", str(run))
    code = (
        "import os, sys\nimport netmesh, netmesh.client.client\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: /root is not theirs\n"
        "try:\n    netmesh.connect(sys.argv[1], timeout=5).channels()\n"
        "except Exception as exc:\n    print(type(exc).__name__); sys.exit(3)\n"
    )

    raw = (  # an attacker does not use our client (which refuses a foreign run dir)
        "import os, sys, socket\nfrom netmesh.cluster import control\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2] + '/private.sock')\n"
        "try:\n    s.sendall(control.request(1, 'channels', {})); got = s.recv(100)\n"
        "except OSError:\n    got = b''\n"
        "sys.exit(3 if got == b'' else 0)  # closed without an answer\n"
    )

    def as_nobody(script: str = code) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-P", "-c", script, "private", str(run)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        with Cluster(nodes=1, name="private") as c:
            c.open_channel("secret")
            assert c.client_server is not None
            r = as_nobody()
            assert r.returncode == 3, r.stderr  # the 0700 run directory stops it first
            assert c.client_server.refused_peers == 0
            # a run directory opened up by mistake: SO_PEERCRED still refuses the peer
            os.chmod(run, 0o755)
            os.chmod(run / "private.sock", 0o666)
            r = as_nobody()
            assert r.returncode == 3 and "ConfigError" in r.stdout  # our client refuses it
            r = as_nobody(raw)
            assert r.returncode == 3, r.stderr
            wait_until(lambda: c.client_server.refused_peers == 1, timeout=5, message="counted")
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_cli_publish_then_tail_reproduces_the_file(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "orders.jsonl"
    src.write_text("".join(json.dumps({"id": i, "sku": f"s{i % 7}"}) + "\n" for i in range(3000)))
    env = {**os.environ, "NETMESH_RUN_DIR": str(run_dir)}

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-P", "-m", "netmesh.cli", *args],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )

    with Cluster(nodes=3, name="cli", heartbeat_ms=100) as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        c.wait_for_leader("orders")
        r = cli("publish", "orders", "--name", "cli", "--format", "jsonl", stdin=src.read_bytes())
        assert r.returncode == 0, r.stderr
        assert b"published 3000 events" in r.stdout and b"last seq 2999" in r.stdout
        r = cli("tail", "orders", "--name", "cli", "--from", "0")
        assert r.returncode == 0, r.stderr
        assert r.stdout == src.read_bytes()
        r = cli("tail", "orders", "--name", "cli", "--last", "1", "--format", "json")
        assert json.loads(r.stdout) == {
            "seq": 2999,
            "payload": json.dumps({"id": 2999, "sku": "s3"}),
        }
        r = cli("channels", "--name", "cli", "--json")
        row = json.loads(r.stdout)
        assert row["next_seq"] == 3000
        assert row["leader_id_hex"] == f"{row['leader_id']:#018x}"  # as logs and tables
        bad = cli(
            "publish", "orders", "--name", "cli", "--format", "jsonl", stdin=b'{"a":1}\nnope\n'
        )
        assert bad.returncode == 1  # not 2: one event went in (2 means nothing started)
        assert bad.stderr.decode().count("\n") == 1 and b"line 2: not JSON" in bad.stderr
        assert b"the 1 event before it was published (seqs up to 3000)" in bad.stderr
        nothing = cli("publish", "orders", "--name", "cli", "--format", "jsonl", stdin=b"nope\n")
        assert nothing.returncode == 2 and b"line 1: not JSON" in nothing.stderr
        badname = cli("publish", "a//b", "--name", "cli", stdin=b"x\n")
        assert badname.returncode == 2 and b"ChannelNameError" not in badname.stdout
        assert b"empty segment" in badname.stderr, badname.stderr
        for args in (
            ("tail", "nope", "--name", "cli"),
            ("publish", "orders", "--name", "nosuch"),
            ("publish", "orders", str(tmp_path / "missing.txt"), "--name", "cli"),
        ):
            r = cli(*args, stdin=b"")
            assert r.returncode != 0 and r.stderr.count(b"\n") == 1, (args, r.stderr)
            assert b"Traceback" not in r.stderr


def test_async_iteration_csv_publish_and_latest(run_dir: Path, tmp_path: Path) -> None:
    import asyncio

    src = tmp_path / "flights.csv"
    src.write_text("carrier,dep_delay\nUA,2\nAA,-4\nB6,\n")
    env = {**os.environ, "NETMESH_RUN_DIR": str(run_dir)}
    with Cluster(nodes=2, heartbeat_ms=100, name="csv") as c:
        c.open_channel("f", ReplicationConfig(factor=2))
        c.wait_for_leader("f")
        r = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "netmesh.cli",
                "publish",
                "f",
                str(src),
                "--name",
                "csv",
                "--format",
                "csv",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        with netmesh.connect("csv") as cl:

            async def first_three() -> list[dict[str, str]]:
                out = []
                async for ev in cl.subscribe("f", from_seq="earliest"):
                    out.append(json.loads(ev.payload))
                    if len(out) == 3:
                        break
                return out

            rows = asyncio.run(first_three())
            assert rows == [
                {"carrier": "UA", "dep_delay": "2"},
                {"carrier": "AA", "dep_delay": "-4"},
                {"carrier": "B6", "dep_delay": ""},
            ]
            with cl.subscribe("f", from_seq="latest") as sub:
                assert sub.poll(timeout=0.3) == []  # nothing new yet
                with cl.producer("f") as p:
                    p.append(b"new")
                    assert p.flush() == 3
                got = sub.poll(timeout=5)
                assert [(e.entry.seq, e.payload) for e in got] == [(3, b"new")]


def test_done_when_up_publish_tail_follow_across_kill_9_of_the_leader(
    run_dir: Path, tmp_path: Path
) -> None:
    """Issue 11 "done when": `netmesh up --name demo` in one terminal, `netmesh publish`
    in a second, `netmesh tail --follow` in a third, kill -9 the leader node: every
    event once, in order."""
    env = {**os.environ, "NETMESH_RUN_DIR": str(run_dir)}
    cli = [sys.executable, "-P", "-m", "netmesh.cli"]
    up = subprocess.Popen(
        [
            *cli,
            "up",
            "--name",
            "demo",
            "--channel",
            "orders",
            "--ack",
            "quorum",
            "--rate",
            "0",
            "--heartbeat-ms",
            "100",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    tail = None
    try:
        wait_until(lambda: "demo" in rundir.served_names(), timeout=30, message="up")
        with netmesh.connect("demo") as cl:
            wait_until(
                lambda: [ch.leader for ch in cl.channels()] not in ([], [None]),
                timeout=20,
                message="the channel has a leader",
            )
            tail_out = open(tmp_path / "tail.out", "wb")  # noqa: SIM115
            tail = subprocess.Popen(
                [*cli, "tail", "orders", "--name", "demo", "--follow", "--from", "0"],
                stdout=tail_out,
                env=env,
            )

            def publish(first: int, end: int, timeout: float) -> None:
                r = subprocess.run(
                    [*cli, "publish", "orders", "--name", "demo", "--format", "jsonl"],
                    input="".join(json.dumps({"n": i}) + "\n" for i in range(first, end)),
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout,
                    check=False,
                )
                assert r.returncode == 0, r.stderr

            publish(0, 2000, timeout=60)
            leader = cl.channels()[0].leader
            run_file = next(run_dir.glob("netmesh-up-*.json"))
            os.kill(json.loads(run_file.read_text())["pids"][leader], signal.SIGKILL)
            publish(2000, 4000, timeout=120)
            wait_until(
                lambda: (tmp_path / "tail.out").read_bytes().count(b"\n") >= 4000,
                timeout=60,
                message="tail saw everything",
            )
        tail.terminate()
        tail.wait(10)
        tail_out.close()
        lines = (tmp_path / "tail.out").read_text().splitlines()
        assert [json.loads(x)["n"] for x in lines] == list(range(4000))  # once, in order
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
        os.killpg(up.pid, signal.SIGINT)
        up.communicate(timeout=30)

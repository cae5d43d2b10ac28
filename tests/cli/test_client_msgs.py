"""Messages of `netmesh publish / tail` against a real named Cluster: grammar, a
payload too large (its line, nothing of its batch published), Ctrl-C (how many went
in), `tail --ack` without `--durable`; and a channel opened twice the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.cluster.cluster import Cluster
from netmesh.config import ReplicationConfig
from netmesh.errors import ConfigError
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    d = tmp_path / "run"
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d))
    yield d


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tail_ack_without_durable_is_a_usage_error(run_dir: Path) -> None:
    r = cli("tail", "orders", "--name", "nosuch", "--ack")
    # before: --ack was ignored (and here: ClusterNotFound, exit 1)
    assert r.returncode == 2, r
    assert r.stderr == "netmesh tail: error: --ack requires --durable GROUP\n"


def test_publish_messages(run_dir: Path) -> None:
    with Cluster(nodes=1, name="msgs", heartbeat_ms=100) as c:
        c.open_channel("orders", ReplicationConfig(factor=1), max_payload=100)
        c.wait_for_leader("orders")
        one = cli("publish", "orders", "--name", "msgs", stdin=b"a\n")
        assert one.returncode == 0, one.stderr
        assert one.stdout.startswith("published 1 event to orders: last seq 0,"), one.stdout
        big = b"a\nb\nc\n" + b"x" * 101 + b"\nd\n"
        r = cli("publish", "orders", "--name", "msgs", stdin=big)
        assert r.returncode == 1, r
        assert r.stderr.count("\n") == 1, r.stderr
        assert "line 4: payload of 101 bytes exceeds the channel's limit of 100 bytes" in r.stderr
        assert "nothing of its batch (lines 1-5) was published\n" in r.stderr, r.stderr
        assert c.next_seq(0, "orders") == 1  # indeed nothing of it

        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "netmesh.cli", "publish", "orders", "--name", "msgs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write("e\n" * 600)  # one batch of 512 goes in, 88 wait
            proc.stdin.flush()
            wait_until(lambda: c.next_seq(0, "orders") == 513, timeout=30, message="first batch in")
            proc.send_signal(signal.SIGINT)
            proc.wait(30)  # stdin still open: the signal, not the end of input, stops it
            assert proc.stderr is not None
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        # before: "netmesh publish: interrupted", not how many went in
        assert proc.returncode == 130, err
        assert err == "netmesh publish: interrupted; 512 events were published (seqs up to 512)\n"


def test_opening_a_channel_again_the_same_way_is_a_no_op(run_dir: Path) -> None:
    code = (
        "import netmesh\n"
        "from netmesh.config import ReplicationConfig\n"
        "with netmesh.connect('again') as cl:\n"
        "    cl.open_channel('payments', ReplicationConfig(factor=2, ack='quorum'))\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NETMESH_RUN_DIR": str(run_dir)}
    with Cluster(nodes=2, name="again", heartbeat_ms=100) as c:
        for _ in range(2):  # before: the second run failed, channel is already open
            r = subprocess.run(
                [sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env,
                timeout=60, check=False,
            )  # fmt: skip
            assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
        with pytest.raises(ConfigError, match="another configuration"):
            c.open_channel("payments", ReplicationConfig(factor=1))


def test_channels_into_a_closed_pipe_is_quiet(run_dir: Path) -> None:
    with Cluster(nodes=1, name="pipe", heartbeat_ms=100) as c:
        for i in range(3):
            c.open_channel(f"ch{i}")
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "netmesh.cli", "channels", "--name", "pipe"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # `| head -0`: the reader is gone before anything is written
        err = proc.stderr.read()
        proc.stderr.close()
        # before: exit 120 with "Exception ignored ... BrokenPipeError"
        assert proc.wait(60) == 141, err
        assert err == "", err

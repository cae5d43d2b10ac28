"""Clients of a node daemon that does not lead the channel, and how the leader is named.

* ``publish`` (CLI and ``Client.producer``) on a follower's daemon fails at once with one
  NotLeader line naming the leader's node id and UDP address (producers do not follow a
  leader to another host); when leadership moves away from the daemon a producer is
  attached to, ``flush`` says so within seconds instead of retrying for 30 s;
* ``tail`` and subscriptions on a follower's daemon read its local replica;
* the leader appears in one form, ``0x<16 hex digits>`` with what is known in
  parentheses, in ``netmesh channels``, ``netmesh status --node``, ``node-status`` and
  the errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.cluster.nodeconfig import format_node_id
from netmesh.errors import NotLeader
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, Daemons, netmesh_cli, payload, publish

pytestmark = pytest.mark.system


@pytest.fixture
def daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    d = Daemons(tmp_path, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        yield d
    finally:
        d.close()


def addr(d: Daemons, i: int) -> str:
    return f"{d.hosts[i]}:{d.ports[i]}"


def test_publish_on_a_follower_names_the_leader_and_tail_reads_its_replica(
    daemons: Daemons,
) -> None:
    d = daemons
    d.start_all()
    lead = d.wait_leader()
    f = next(i for i in d.alive() if i != lead)
    lead_id = d.keys[lead]["node_id"]
    named = f"{format_node_id(lead_id)} ({addr(d, lead)})"
    assert format_node_id(lead_id) == f"{lead_id:#018x}"  # as `netmesh keygen` prints it

    # the API: refused at producer() time, naming the leader, final (no retry helps)
    t0 = time.monotonic()
    with pytest.raises(NotLeader) as info:
        d.clients[f].producer(CHANNEL)
    assert time.monotonic() - t0 < 5
    assert info.value.leader == lead_id and getattr(info.value, "final", False)
    msg = str(info.value)
    assert f"its leader is {named}: publish through the node daemon on that host" in msg, msg
    assert f"node daemon {d.names[f]!r} ({format_node_id(d.keys[f]['node_id'])})" in msg, msg

    # the CLI: one line, exit 1, nothing published
    pub = subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", "publish", CHANNEL, "--name", d.names[f]],
        input="a\nb\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=d.env,
        check=False,
    )
    assert pub.returncode == 1, pub.stderr
    assert pub.stderr.count("\n") == 1, pub.stderr
    assert pub.stderr.startswith("netmesh publish: NotLeader: ") and named in pub.stderr

    # tail --follow on the follower's daemon sees what the leader's daemon takes
    follow = ["--name", d.names[f], "--follow", "--from", "0", "--format", "json"]
    tail = subprocess.Popen(
        [sys.executable, "-P", "-m", "netmesh.cli", "tail", CHANNEL, *follow],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=d.env,
        start_new_session=True,
    )
    try:
        assert publish(d.clients[lead], 500) == 499
        assert tail.stdout is not None
        got = [json.loads(tail.stdout.readline()) for _ in range(500)]
    finally:
        tail.kill()
        tail.communicate(timeout=10)
    assert [g["seq"] for g in got] == list(range(500))
    assert [g["payload"].encode() for g in got] == [payload(i) for i in range(500)]
    # tail without --follow reads the replica's committed events
    wait_until(lambda: d.row(f).commit == 500, timeout=20, message="follower committed")
    out = netmesh_cli("tail", CHANNEL, "--name", d.names[f], "--from", "490", env=d.env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [payload(i).decode() for i in range(490, 500)]
    # a subscription through the API on the follower
    with d.clients[f].subscribe(CHANNEL, from_seq=495) as sub:
        assert [ev.entry.seq for ev in sub.poll(5.0)][:5] == [495, 496, 497, 498, 499]
        assert sub.node == 0  # served by the follower's own node

    # one form of the leader everywhere
    row = d.row(f)
    assert (row.leader_id, row.leader_address, row.leader_text) == (
        lead_id,
        addr(d, lead),
        named,
    )
    mine = f"{format_node_id(lead_id)} (this node, {addr(d, lead)})"
    assert d.row(lead).leader_text == mine
    chans = netmesh_cli("channels", "--name", d.names[f], env=d.env)
    assert chans.returncode == 0 and named in chans.stdout, chans.stdout
    chans = netmesh_cli("channels", "--name", d.names[lead], env=d.env)
    assert chans.returncode == 0 and mine in chans.stdout, chans.stdout
    for cmd in (["status", "--node"], ["node-status"]):
        out = netmesh_cli(*cmd, d.names[f], env=d.env)
        assert out.returncode == 0 and named in out.stdout, out.stdout
        assert "peers[" not in out.stdout
        assert format_node_id(d.keys[f]["node_id"]) in out.stdout.splitlines()[0], out.stdout
    view = json.loads(netmesh_cli("status", "--node", d.names[f], "--json", env=d.env).stdout)
    assert view["channels"][0]["leader_id"] == lead_id
    assert view["channels"][0]["leader_address"] == addr(d, lead)
    metrics = netmesh_cli("node-status", d.metrics[f] or "", env=d.env)
    assert metrics.returncode == 0 and f"peer {format_node_id(lead_id)}" in metrics.stdout
    assert format_node_id(d.keys[f]["node_id"]) in metrics.stdout.splitlines()[0]


def test_a_producer_whose_daemon_loses_the_lead_is_told_within_seconds(
    daemons: Daemons,
) -> None:
    d = daemons
    d.start_all()
    lead = d.wait_leader()
    others = [i for i in d.alive() if i != lead]
    p = d.clients[lead].producer(CHANNEL)
    p.append(b"first")
    assert p.flush() == 0
    os.kill(d.procs[lead].pid, signal.SIGSTOP)  # the others elect another leader
    try:

        def new_leader() -> tuple[int] | None:
            rows = [d.row(i) for i in others]
            ids = {r.leader_id for r in rows if r is not None}
            if len(ids) != 1 or None in ids or d.keys[lead]["node_id"] in ids:
                return None
            new_id = ids.pop()
            return (next(i for i in others if d.keys[i]["node_id"] == new_id),)

        new = wait_until(new_leader, timeout=20, message="a leader among the others")[0]
        p.append_batch([b"x"] * 10)  # into the ring of the stopped (deposed) daemon
    finally:
        os.kill(d.procs[lead].pid, signal.SIGCONT)
    t0 = time.monotonic()
    with pytest.raises(NotLeader) as info:
        p.flush(timeout=30)
    took = time.monotonic() - t0
    assert took < 10, took  # not the 30 s retry of a producer that follows its leader
    msg = str(info.value)
    assert getattr(info.value, "final", False) and info.value.leader == d.keys[new]["node_id"]
    assert f"{format_node_id(d.keys[new]['node_id'])} ({addr(d, new)})" in msg, msg
    assert getattr(info.value, "unacknowledged", None) == 10, msg
    p.close()
    # the new leader's daemon takes them
    with d.clients[new].producer(CHANNEL) as q:
        q.append_batch([b"y"] * 10)
        assert q.flush() >= 10

"""A node daemon outside a channel's replica set says so (issue: new-user trial §4):
``tail`` / ``read_range`` / ``subscribe`` through it are one ChannelNotOpen line naming
the replicas (exit 1), not silence, a hang or stale events; ``node-status`` shows it
as not a member. ``keygen``/``node-status`` JSON carry node ids in hex too."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.cluster.nodeconfig import format_node_id
from netmesh.errors import ChannelNotOpen
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, Daemons, netmesh_cli, publish

pytestmark = pytest.mark.system

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
TOML = f'[[channels]]\nname = "{CHANNEL}"\nfactor = 2\nheartbeat_ms = 150\n'


@pytest.fixture
def d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    daemons = Daemons(tmp_path, HOSTS, channels_toml=TOML, metrics=False)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(daemons.run_dir))
    yield daemons
    daemons.close()


def test_a_daemon_outside_the_replica_set_refuses_reads_with_one_line(d: Daemons) -> None:
    d.start_all()
    ids = [k["node_id"] for k in d.keys]
    for k in d.keys:  # keygen --json: the int and the README's 0x<16 hex> form
        assert k["node_id_hex"] == format_node_id(k["node_id"])
    holders = sorted(range(3), key=lambda i: ids[i])[:2]
    outsider = next(i for i in range(3) if i not in holders)

    def one_leader() -> tuple[int] | None:  # the outsider knows no leader: ask the holders
        rows = [d.row(i) for i in holders]
        leaders = [i for i, r in zip(holders, rows, strict=True) if r and r.leader == 0]
        return (leaders[0],) if len(leaders) == 1 else None

    (lead,) = wait_until(one_leader, timeout=20, message="one leader among the holders")
    assert publish(d.clients[lead], 50) == 49
    replicas = [format_node_id(ids[i]) for i in sorted(holders, key=lambda i: ids[i])]

    def outside_row() -> str | None:
        row = d.row(outsider)
        text = None if row is None else row.leader_text
        ok = text and text.startswith("not a member") and all(r in text for r in replicas)
        return text if ok else None

    try:
        wait_until(outside_row, timeout=20, message="outsider row")
    except TimeoutError:
        raise AssertionError([d.row(i) for i in range(3)], d.log(outsider)[-1500:]) from None
    name = d.names[outsider]
    # before: nothing printed, exit 0
    r = netmesh_cli("tail", CHANNEL, "--name", name, "--from", "0", env=d.env)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"node daemon {name!r} does not hold {CHANNEL!r} (its replicas: " in r.stderr
    assert all(rep in r.stderr for rep in replicas), r.stderr
    # before: --follow hung
    r = netmesh_cli("tail", CHANNEL, "--name", name, "--follow", env=d.env)
    assert r.returncode == 1 and "does not hold" in r.stderr, r
    # before: stale events (or none) without a word
    with pytest.raises(ChannelNotOpen, match="does not hold"):
        d.clients[outsider].read_range(CHANNEL, 0, 10)
    st = netmesh_cli("node-status", name, env=d.env)
    assert st.returncode == 0 and "not a member (replicas: " in st.stdout, st
    js = netmesh_cli("node-status", name, "--json", env=d.env)
    view = json.loads(js.stdout)
    assert view["node"]["node_id_hex"] == format_node_id(ids[outsider])
    held = netmesh_cli("node-status", d.names[lead], "--json", env=d.env)
    (row,) = json.loads(held.stdout)["channels"]
    assert row["leader_id_hex"] == format_node_id(ids[lead])
    # a replica still serves reads
    r = netmesh_cli("tail", CHANNEL, "--name", d.names[lead], "--from", "0", env=d.env)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 50, r.stderr
    for i in range(3):
        assert d.terminate(i) == 0
    assert d.leftovers() == []


def test_status_with_only_daemons_hints_node(d: Daemons) -> None:
    d.start(0)
    d.ready(0)
    r = subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", "status"],
        capture_output=True, text=True, env=d.env, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r
    assert "netmesh status --node n0" in r.stderr, r.stderr
    assert d.terminate(0) == 0


FOLLOWER = """
import netmesh, sys
with netmesh.connect("n0") as cl:
    sub = cl.subscribe(sys.argv[1], from_seq=0)
    print("subscribed", flush=True)
    try:
        for ev in sub:
            pass
    except netmesh.errors.Closed as exc:
        print(exc, flush=True)
        sys.exit(3)
"""


def test_a_stopping_daemon_tells_its_subscribers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Daemons(tmp_path, HOSTS[:1], channels_toml=f'[[channels]]\nname = "{CHANNEL}"\n')
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        d.start(0)
        d.ready(0)
        sub = subprocess.Popen(
            [sys.executable, "-P", "-c", FOLLOWER, CHANNEL],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env,
        )  # fmt: skip
        try:
            assert sub.stdout is not None
            assert sub.stdout.readline() == "subscribed\n"
            assert d.terminate(0) == 0
            # before: it ran on for 30 s, then NodeUnresponsive ... Broken pipe
            assert sub.wait(2) == 3
            assert "cluster 'n0' stopped" in sub.stdout.read()
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait(10)
            for pipe in (sub.stdout, sub.stderr):
                if pipe is not None:
                    pipe.close()
    finally:
        d.close()

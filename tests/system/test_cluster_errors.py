"""Errors keep their type across the process boundary (issue 16 §1) and refusals leave
no trace (§2): real node processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from netmesh import (
    ChannelNotOpen,
    ConfigError,
    NotLeader,
    PayloadTooLarge,
    ReplicaRole,
    ReplicationConfig,
)
from netmesh.cluster.cluster import Cluster
from tests.conftest import wait_until

pytestmark = pytest.mark.system
HB = 100


def test_node_errors_come_back_as_their_own_class_naming_the_node() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("orders", ReplicationConfig(factor=2))
        c.open_channel("plain", max_payload=10)
        lead = c.wait_for_leader("orders")
        with pytest.raises(ChannelNotOpen, match="node 2 role: channel 'orders' is not open"):
            c.role(2, "orders")  # not a member
        with pytest.raises(PayloadTooLarge, match="node 1 append: payload of 11 bytes") as big:
            c.append(1, "plain", [b"x" * 11])
        assert (big.value.size, big.value.limit) == (11, 10)
        follower = 1 - lead
        with pytest.raises(NotLeader, match=f"node {follower} append") as nl:
            c.append(follower, "orders", [b"e"])
        assert nl.value.channel == "orders"
        assert c.role(lead, "orders") is ReplicaRole.LEADER  # one type, not "LEADER"
        assert c.role(0, "plain") is None  # open, not replicated
        roles = {
            n["node"]: n["channels"]["orders"]["role"] for n in c.metrics(fresh=True)["nodes"][:2]
        }
        assert roles[lead] is ReplicaRole.LEADER


def test_cluster_heartbeat_drives_the_channels() -> None:
    with Cluster(nodes=2, heartbeat_ms=100) as c:
        c.open_channel("hb", ReplicationConfig(factor=2))
        lead = c.wait_for_leader("hb")
        # an idle channel quiesces (no heartbeats); one that hears no majority cannot
        c.cut(1 - lead, lead)
        start = c.metrics(fresh=True)["nodes"][lead]["channels"]["hb"]["heartbeats_sent_total"]
        # 100 ms heartbeats: 8 more within 2 s (the 500 ms default would send 4)
        wait_until(
            lambda: (
                c.metrics(fresh=True)["nodes"][lead]["channels"]["hb"]["heartbeats_sent_total"]
                >= start + 8
            ),
            timeout=2.0,
            interval=0.05,
            message="heartbeats at the cluster's period",
        )


def test_a_channel_refused_by_a_node_leaves_no_trace_and_restart_keeps_the_rest(
    tmp_path: Path,
) -> None:
    with Cluster(nodes=2, heartbeat_ms=HB, data_dir=str(tmp_path)) as c:
        c.open_channel("good", ReplicationConfig(factor=2))
        (tmp_path / "node1" / "blocked").write_text("a file where a directory must go")
        with pytest.raises(
            ConfigError, match=r"node 1 open_channel: path .* not a usable directory"
        ):
            c.open_channel("blocked/events")
        assert "blocked/events" not in c.channels
        with pytest.raises(ChannelNotOpen):
            c.next_seq(0, "blocked/events")
        c.kill(1)
        c.restart(1)  # reopens "good" only; the refused channel is not replayed
        assert c.next_seq(1, "good") == 0
        with pytest.raises(ChannelNotOpen, match="node 0 next_seq"):
            c.sup.call(0, "next_seq", channel="blocked/events")


def test_a_producer_on_a_replica_that_knows_its_leader_is_refused_at_once() -> None:
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("x", ReplicationConfig(factor=2))
        lead = c.wait_for_leader("x")
        follower = 1 - lead
        wait_until(
            lambda: (
                c.metrics(fresh=True)["nodes"][follower]["channels"]["x"]["replica_lag_seconds"]
                is not None
            ),
            timeout=5,
            message="the follower heard its leader",
        )
        with pytest.raises(NotLeader, match=f"node {follower} attach_ring: .*\\(node {lead}\\)$"):
            c.producer(follower, "x")
        with pytest.raises(NotLeader, match=f"node {follower} attach_ring"):
            c.spawn_producer(follower, "x", events=1)
        assert c.producer_processes == [] and c.producers == {}


SUPERVISOR_DIES = """
import sys
from netmesh.cluster.cluster import Cluster
c = Cluster(nodes=1)
c.open_channel("z")
p = c.producer(0, "z")
p.append_batch([b"x"] * 100)
p.flush()
print(c.info[0]["pid"], flush=True)
while True:  # batches queued in the ring when the supervisor is killed
    p.append_batch([b"y" * 64] * 5000)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_nodes_of_a_killed_supervisor_exit_without_error_lines() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_DIES],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NETMESH_LOG": "INFO"},
    )
    try:
        node_pid = int(proc.stdout.readline())  # type: ignore[union-attr]
        wait_until(
            lambda: psutil.Process(node_pid).cpu_times().user > 0.05, message="node draining"
        )
        proc.kill()
        _, err = proc.communicate(timeout=20)  # EOF once every node has exited
        assert "Traceback" not in err and "could not be stored" not in err, err
        wait_until(lambda: _gone(node_pid), timeout=5, message="the node exits")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

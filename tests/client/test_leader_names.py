"""A cluster's leader is named one way to users: ``0x<16 hex digits> (node i)`` in
``netmesh channels``, ``Client.channels()``, the status table and NotLeader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import netmesh
from netmesh import Cluster, ReplicationConfig
from netmesh.cli import status
from netmesh.cluster.nodeconfig import describe_node, format_node_id
from netmesh.errors import NotLeader
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system


def test_the_leader_has_one_user_facing_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(run))
    env = {**os.environ, "NETMESH_RUN_DIR": str(run)}
    with Cluster(nodes=3, name="names", heartbeat_ms=100) as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        lead = c.wait_for_leader("orders")
        text = f"{format_node_id(c.node_ids[lead])} (node {lead})"
        assert describe_node(c.node_ids[lead], index=lead) == text
        with netmesh.connect("names") as cl:
            info = wait_until(
                lambda: next(
                    (i for i in cl.channels() if i.name == "orders" and i.leader is not None),
                    None,
                ),
                timeout=10,
                message="the leader in the metrics pages",
            )
            assert (info.leader, info.leader_id, info.leader_text) == (
                lead,
                c.node_ids[lead],
                text,
            )
            assert cl.serves == "cluster" and cl.node_id is None
        out = subprocess.run(
            [sys.executable, "-P", "-m", "netmesh.cli", "channels", "--name", "names"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0 and text in out.stdout, out.stdout
        caption = status.leaders_caption(status.rows(c.metrics(fresh=True), None))
        assert caption == f"leader {text}"
        follower = (lead + 1) % 3
        with pytest.raises(NotLeader) as err:
            c.producer(follower, "orders")
        assert f"leader is {text}" in str(err.value), str(err.value)

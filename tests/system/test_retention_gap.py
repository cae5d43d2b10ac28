"""Issue 10 §4 on real nodes: a replica that fell behind the leader's retained head
restarts at that head (counted as a gap), and nothing spins."""

from __future__ import annotations

import pytest

from netmesh import Cluster, ReplicationConfig

pytestmark = pytest.mark.system


def test_a_replica_behind_retention_resets_to_the_leaders_head() -> None:
    with Cluster(nodes=2, heartbeat_ms=100) as c:
        c.open_channel("r", ReplicationConfig(factor=2), retention_max_events=200)
        lead = c.wait_for_leader("r")
        other = 1 - lead
        with c.producer(lead, "r") as p:
            p.append_batch([b"a%d" % i for i in range(50)])
            p.flush()
            c.wait_until(lambda: c.next_seq(other, "r") == 50, timeout=10, message="replicated")
            c.partition([lead], [other])
            for i in range(0, 1000, 100):
                p.append_batch([b"b%d" % j for j in range(i, i + 100)])
            assert p.flush() == 1049
        c.heal()
        c.wait_until(lambda: c.next_seq(other, "r") == 1050, timeout=20, message="caught up")
        assert c.read_range(other, "r", 0, 1050) == c.read_range(lead, "r", 0, 1050)
        held = c.read_range(other, "r", 850, 1050)
        assert held[0] == b"b800" and held[-1] == b"b999" and len(held) == 200
        m = c.metrics(fresh=True)["nodes"][other]["channels"]["r"]
        assert m["log_gaps_total"] == 1 and m["gap_events_total"] == 800

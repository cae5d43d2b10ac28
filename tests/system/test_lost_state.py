"""Issue 10 §2 on real nodes: lost or reused replication state is detected, never
silently accepted (a log without its hard state is refused; a node without hard state
never leads a term it may have led before)."""

from __future__ import annotations

import glob
import os

import pytest

from netmesh import Cluster, ReplicationConfig
from netmesh.errors import NetmeshError, NotLeader
from netmesh.replication.roles import ReplicaRole

pytestmark = pytest.mark.system


def _history(c: Cluster, i: int, ch: str) -> list[bytes]:
    return list(c.read_range(i, ch, 0, c.next_seq(i, ch)))


def test_a_log_whose_hard_state_file_is_gone_is_refused_and_nothing_acknowledged_is_lost(
    tmp_path: object,
) -> None:
    """3 nodes, quorum: 100 events on all, C down, 100 more acknowledged by A and B;
    SIGKILL all; delete A's hard state; restart C and A. A refuses the channel with
    LogCorrupt naming the missing file; once B is back every acknowledged event is
    held by B and C."""
    data = str(tmp_path)
    with Cluster(nodes=3, heartbeat_ms=100, data_dir=data) as c:
        c.open_channel("q", ReplicationConfig(factor=3, ack="quorum", leader_pinned=None))
        lead = c.wait_for_leader("q")
        a, b = lead, (lead + 1) % 3
        cc = 3 - a - b
        with c.producer(a, "q") as p:
            p.append_batch([b"e%d" % i for i in range(100)])
            assert p.flush() == 99
            c.wait_until(lambda: c.next_seq(cc, "q") == 100, timeout=10, message="C has 100")
            c.kill(cc)
            p.append_batch([b"e%d" % i for i in range(100, 200)])
            assert p.flush() == 199  # quorum: acknowledged by A and B
        for i in (a, b):
            c.kill(i)
        lost = glob.glob(os.path.join(data, f"node{a}", "**", "hardstate"), recursive=True)
        assert len(lost) == 1
        os.unlink(lost[0])
        c.restart(cc)
        with pytest.raises(NetmeshError) as err:
            c.restart(a)
        assert "LogCorrupt" in repr(err.value) or type(err.value).__name__ == "LogCorrupt"
        assert lost[0] in str(err.value) and "missing" in str(err.value)
        c.kill(a)  # the node process itself is up, without that channel
        c.restart(b)
        c.wait_until(lambda: c.next_seq(cc, "q") == 200, timeout=20, message="C catches up")
        expect = [b"e%d" % i for i in range(200)]
        assert _history(c, b, "q") == expect
        assert _history(c, cc, "q") == expect


def test_a_node_restarted_without_state_never_leads_before_it_learned_the_history() -> None:
    """Leader mode, no data_dir: X leads and writes e0..e9; kill X; Y leads; restart X
    and isolate it at once. X does not lead alone (it withholds its elections: it has
    no state and no peer showed it the current one), so f0..f2 are refused with
    NotLeader, never acknowledged; heal: X follows and holds e0..e9 like the others
    (before: X led a fresh term alone, acknowledged f0..f2, and its newer-term suffix
    replaced e0..e9 everywhere)."""
    with Cluster(nodes=3, heartbeat_ms=100) as c:
        c.open_channel("l", ReplicationConfig(factor=3, ack="leader"))
        x = c.wait_for_leader("l")
        others = [i for i in range(3) if i != x]
        e = [b"e%d" % i for i in range(10)]
        c.append(x, "l", e)
        c.wait_until(
            lambda: all(c.next_seq(i, "l") == 10 for i in others), timeout=10, message="e0..e9"
        )
        c.kill(x)
        y = c.wait_for_leader("l", timeout=15)
        assert y in others
        c.partition([x], others)
        c.restart(x)

        def withheld() -> int:
            ch = c.metrics(fresh=True)["nodes"][x]["channels"]["l"]
            return int(ch["elections_withheld_total"])

        # three silence windows in which X would have campaigned alone
        c.wait_until(lambda: withheld() >= 3, timeout=15, message="X withholds elections")
        assert c.role(x, "l") is not ReplicaRole.LEADER
        with pytest.raises(NotLeader):
            c.append(x, "l", [b"f0", b"f1", b"f2"])
        assert c.next_seq(x, "l") == 0
        c.heal()

        def one_history() -> bool:
            hs = [_history(c, i, "l") for i in range(3)]
            leaders = [i for i in range(3) if c.role(i, "l") is ReplicaRole.LEADER]
            return leaders == [y] and hs[0] == hs[1] == hs[2] == e

        c.wait_until(one_history, timeout=30, message="e0..e9 everywhere, Y still leads")
        assert c.role(x, "l") is ReplicaRole.REPLICA


def test_a_fresh_cluster_without_state_still_elects_and_a_lone_member_leads() -> None:
    """The amnesia rule costs a fresh cluster nothing: nodes without state hear each
    other's (empty) logs and elect at once; a factor-1 channel leads alone."""
    with Cluster(nodes=3, heartbeat_ms=100) as c:
        c.open_channel("fresh", ReplicationConfig(factor=3, ack="leader"))
        c.open_channel("solo", ReplicationConfig(factor=1, ack="leader"))
        lead = c.wait_for_leader("fresh", timeout=10)
        c.append(lead, "fresh", [b"x"])
        c.wait_until(
            lambda: all(c.next_seq(i, "fresh") == 1 for i in range(3)), timeout=10, message="x"
        )
        assert c.wait_for_leader("solo", timeout=10) in range(3)

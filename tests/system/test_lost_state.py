"""Issue 10 §2 on real nodes: lost or reused replication state is detected, never
silently accepted (a log without its hard state is refused; a node without hard state
never leads a term it may have led before)."""

from __future__ import annotations

import glob
import os

import pytest

from netmesh import Cluster, ReplicationConfig
from netmesh.errors import NetmeshError
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


def test_a_node_restarted_without_state_never_leads_a_term_twice() -> None:
    """Leader mode, no data_dir: X leads and writes e0..e9; kill X; Y leads; restart X
    isolated: it leads alone (leader mode) in a term nobody used, writes f0..f2; heal:
    one history everywhere (today X kept [f0,f1,f2,e3..e9] under the old term)."""
    with Cluster(nodes=3, heartbeat_ms=100) as c:
        c.open_channel("l", ReplicationConfig(factor=3, ack="leader"))
        x = c.wait_for_leader("l")
        others = [i for i in range(3) if i != x]
        c.append(x, "l", [b"e%d" % i for i in range(10)])
        c.wait_until(
            lambda: all(c.next_seq(i, "l") == 10 for i in others), timeout=10, message="e0..e9"
        )
        old_term = c.metrics(fresh=True)["nodes"][x]["channels"]["l"]["term"]
        c.kill(x)
        y = c.wait_for_leader("l", timeout=15)
        assert y in others
        c.partition([x], others)
        c.restart(x)
        c.wait_until(lambda: c.role(x, "l") is ReplicaRole.LEADER, timeout=15, message="X leads")
        new_term = c.metrics(fresh=True)["nodes"][x]["channels"]["l"]["term"]
        y_term = c.metrics(fresh=True)["nodes"][y]["channels"]["l"]["term"]
        assert new_term not in (old_term, y_term) and new_term > y_term
        c.append(x, "l", [b"f0", b"f1", b"f2"])
        c.heal()

        def one_history() -> bool:
            hs = [_history(c, i, "l") for i in range(3)]
            leaders = [i for i in range(3) if c.role(i, "l") is ReplicaRole.LEADER]
            return len(leaders) == 1 and hs[0] == hs[1] == hs[2] and len(hs[0]) > 0

        c.wait_until(one_history, timeout=30, message="one history everywhere")
        h = _history(c, 0, "l")
        assert h in ([b"e%d" % i for i in range(10)], [b"f0", b"f1", b"f2"]), h

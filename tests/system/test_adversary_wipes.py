"""Adversarial review of issue 10 §2 on real nodes (quorum channels, ``data_dir``): a
node whose whole data directory is wiped comes back without state; it never helps
elect a log that lacks acknowledged events, and it catches up and leaves the amnesia
(its hard state file is saved without ``recovering``) once a leader shows it the
history."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import pytest

from netmesh import Cluster, ReplicationConfig
from netmesh.log.hardstate import decode
from netmesh.replication.roles import ReplicaRole

pytestmark = pytest.mark.system


def _history(c: Cluster, i: int, ch: str) -> list[bytes]:
    return list(c.read_range(i, ch, 0, c.next_seq(i, ch)))


def _channel_metric(c: Cluster, i: int, ch: str, name: str) -> int:
    return int(c.metrics(fresh=True)["nodes"][i]["channels"][ch][name])


def _wipe(data: str, i: int) -> None:
    """Lose every channel node ``i`` stored (logs and hard states: a replaced data
    disk); its key (``node.key``, its identity) stays."""
    node_dir = os.path.join(data, f"node{i}")
    wiped = [e for e in os.listdir(node_dir) if os.path.isdir(os.path.join(node_dir, e))]
    assert wiped
    for entry in wiped:
        shutil.rmtree(os.path.join(node_dir, entry))


def _hard_states(data: str, i: int) -> list[str]:
    return glob.glob(os.path.join(data, f"node{i}", "**", "hardstate"), recursive=True)


def test_a_wiped_member_never_elects_a_log_without_acknowledged_events(
    tmp_path: Path,
) -> None:
    """3 nodes, quorum: 100 events on all; C down; 100 more acknowledged by A and B;
    kill A and B; wipe B's data directory; start B and C. B knows only C's log (100
    events) and refuses it its vote, so nobody leads while A is down; once A is back
    every node holds the 200 acknowledged events and B's hard state is no longer
    ``recovering``."""
    data = str(tmp_path)
    with Cluster(nodes=3, heartbeat_ms=100, data_dir=data) as c:
        c.open_channel("w", ReplicationConfig(factor=3, ack="quorum", leader_pinned=None))
        a = c.wait_for_leader("w")
        b, cc = (i for i in range(3) if i != a)
        with c.producer(a, "w") as p:
            p.append_batch([b"e%d" % i for i in range(100)])
            assert p.flush() == 99
            c.wait_until(lambda: c.next_seq(cc, "w") == 100, timeout=10, message="C has 100")
            c.kill(cc)
            p.append_batch([b"e%d" % i for i in range(100, 200)])
            assert p.flush() == 199  # acknowledged by A and B
        c.kill(a)
        c.kill(b)
        _wipe(data, b)
        assert _hard_states(data, b) == []
        c.restart(b)
        c.restart(cc)
        for refusals in range(1, 4):  # C campaigns every few windows; B refuses each
            c.wait_until(
                lambda n=refusals: _channel_metric(c, b, "w", "votes_withheld_total") >= n,
                timeout=20,
                message="B withholds its vote from C",
            )
            assert [i for i in (b, cc) if c.role(i, "w") is ReplicaRole.LEADER] == []
        assert c.next_seq(b, "w") == 0 and c.next_seq(cc, "w") == 100
        c.restart(a)
        expect = [b"e%d" % i for i in range(200)]
        c.wait_until(
            lambda: all(c.next_seq(i, "w") == 200 for i in range(3)),
            timeout=30,
            message="every node holds the 200 acknowledged events",
        )
        for i in range(3):
            assert _history(c, i, "w") == expect
        c.wait_until(
            lambda: (
                all(not decode(Path(f).read_bytes()).recovering for f in _hard_states(data, b))
                and len(_hard_states(data, b)) == 1
            ),
            timeout=10,
            message="B saved its hard state without 'recovering'",
        )


def test_a_follower_wiped_under_load_catches_up_and_the_channel_keeps_serving(
    tmp_path: Path,
) -> None:
    """3 nodes, quorum: a follower is killed and wiped while the leader keeps
    acknowledging (A and the other follower are a majority); restarted empty, it
    catches up with every event and the history is one."""
    data = str(tmp_path)
    with Cluster(nodes=3, heartbeat_ms=100, data_dir=data) as c:
        c.open_channel("s", ReplicationConfig(factor=3, ack="quorum", leader_pinned=None))
        lead = c.wait_for_leader("s")
        f = (lead + 1) % 3
        with c.producer(lead, "s") as p:
            p.append_batch([b"a%d" % i for i in range(300)])
            assert p.flush() == 299
            c.kill(f)
            _wipe(data, f)
            p.append_batch([b"b%d" % i for i in range(300)])
            assert p.flush() == 599
            c.restart(f)
            p.append_batch([b"c%d" % i for i in range(300)])
            assert p.flush() == 899
        c.wait_until(
            lambda: all(c.next_seq(i, "s") == 900 for i in range(3)),
            timeout=30,
            message="the wiped follower catches up",
        )
        hs = [_history(c, i, "s") for i in range(3)]
        assert hs[0] == hs[1] == hs[2]
        assert hs[0][:2] == [b"a0", b"a1"] and hs[0][-1] == b"c299"
        assert c.role(lead, "s") is ReplicaRole.LEADER

"""Issue 10 §3 and §5 on real node processes: an acknowledgement means what the mode
promises (Cluster.append on quorum channels, Producer accounting with a frozen node),
and a channel refuses a max_payload replication cannot carry."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from netmesh.cluster.cluster import (
    REPLICATED_MAX_PAYLOAD,
    TRANSPORT_MAX_MESSAGE,
    Cluster,
)
from netmesh.config import ReplicationConfig
from netmesh.errors import ConfigError, NodeUnresponsive, NotLeader, RingFull
from netmesh.replication.roles import ReplicaRole
from tests.conftest import wait_until

pytestmark = pytest.mark.system
HB = 150


def test_quorum_append_returns_after_commit_and_is_refused_by_a_cut_off_leader() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("q", ReplicationConfig(factor=3, ack="quorum"))
        lead = c.wait_for_leader("q")
        first = c.append(lead, "q", [b"e%d" % i for i in range(20)])
        assert first == 0
        # returned after the commit: a majority holds all 20 already, no waiting
        holders = [i for i in range(3) if c.next_seq(i, "q") >= 20]
        assert lead in holders and len(holders) >= 2
        rest = [i for i in range(3) if i != lead]
        c.partition([lead], rest)
        # a leader cut off from the majority stores the event but never commits it:
        # the call must not return its seq (it used to, at once)
        with pytest.raises(NotLeader, match=f"node {lead} append"):
            c.append(lead, "q", [b"lost"], timeout=8.0)
        assert c.role(lead, "q") is not ReplicaRole.LEADER
        c.heal()
        new = c.wait_for_leader("q", timeout=10)
        assert new != lead or c.next_seq(new, "q") >= 20
        c.wait_until(lambda: c.next_seq(lead, "q") == c.next_seq(new, "q"), timeout=10)
        assert b"lost" not in c.read_range(lead, "q", 0, c.next_seq(lead, "q"))


def _frozen(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def test_append_batch_on_a_frozen_node_accounts_for_every_queued_event() -> None:
    with Cluster(nodes=1, ring_bytes=1 << 16) as c:
        c.open_channel("f")
        pid = c.info[0]["pid"]
        with c.producer(0, "f") as p:
            os.kill(pid, signal.SIGSTOP)
            try:
                wait_until(lambda: _frozen(pid), timeout=5, message="node stopped")
                batch = [b"x" * 100] * 1000
                with pytest.raises(RingFull, match=r"of 1000 events queued") as info:
                    p.append_batch(batch, timeout=0.5)
                queued = info.value.queued  # type: ignore[attr-defined]
                assert 0 < queued < 1000
                assert p.sent == queued
                # a batch of one frame is all or nothing
                with pytest.raises(RingFull):
                    p.append_batch([b"y" * 100] * 10, timeout=0.2)
                assert p.sent == queued
                # flush never returns before the node acknowledged every queued event
                with pytest.raises(NodeUnresponsive, match=f"{queued} events not acknowledged"):
                    p.flush(timeout=0.5)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert p.flush(timeout=10) == queued - 1
            assert c.next_seq(0, "f") == queued
            p.append_batch([b"z"] * 5)
            assert p.flush(timeout=10) == queued + 4


def test_open_channel_refuses_a_max_payload_replication_cannot_carry() -> None:
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        with pytest.raises(ConfigError) as info:
            c.open_channel("big", ReplicationConfig(factor=2), max_payload=24 << 20)
        text = str(info.value)
        assert str(24 << 20) in text and str(TRANSPORT_MAX_MESSAGE) in text
        assert str(REPLICATED_MAX_PAYLOAD) in text
        assert "big" not in c.channels
        # the largest replicable size is accepted, and an unreplicated channel is free
        c.open_channel("edge", ReplicationConfig(factor=2), max_payload=REPLICATED_MAX_PAYLOAD)
        c.open_channel("local", max_payload=24 << 20)
        lead = c.wait_for_leader("edge")
        c.append(lead, "edge", [b"a" * (REPLICATED_MAX_PAYLOAD)], timeout=20)
        c.wait_until(lambda: c.next_seq(1 - lead, "edge") == 1, timeout=15, message="replicated")

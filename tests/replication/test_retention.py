"""Retention and replication agree (issue 10 §4), on the simulation running the
shipped executor.

* 2 nodes, leader mode, ``retention_max_events=200``: append 50; partition the replica;
  append 1,000; heal. Right value: the replica restarts its log at the leader's
  retained head (a counted gap) and reaches ``next_seq == 1050`` holding the leader's
  events 850..1049, and no retry loop spins: the replica's requests per heartbeat stay
  bounded (today it asked forever, at network speed, for events that no longer exist).
* 3 nodes, quorum, ``retention_max_events=100``: one batch of 300 commits (retention
  never removes events a majority does not hold yet: the floor is the commit).
"""

from __future__ import annotations

import pytest

from netmesh.testing.sim import SimCluster


@pytest.mark.parametrize("seed", range(10))
def test_replica_behind_the_retained_head_restarts_there(seed: int) -> None:
    sim = SimCluster(2, seed=seed, ack="leader", retention_max_events=200)
    lead = sim.wait_for_leader()
    replica = next(i for i in sim.ids if i != lead)
    sim.propose([f"a{i}".encode() for i in range(50)])
    sim.wait_converged()
    sim.isolate(replica)
    for k in range(10):
        sim.propose([f"b{k}-{i}".encode() for i in range(100)], lead)
        sim.step()
    assert sim.nodes[lead].storage.head == 850
    sim.heal()
    assert sim.wait_converged(20) == lead, sim.describe()
    r, lg = sim.nodes[replica], sim.nodes[lead]
    assert r.coord.tail_seq == 1050 and r.log[850:] == lg.log[850:]
    assert r.coord.metrics.log_gaps_total == 1 and r.coord.metrics.gap_events_total == 800
    before = r.coord.metrics.sync_requests_total
    sim.run_heartbeats(20)
    assert r.coord.metrics.sync_requests_total - before <= 2, "no retry loop once in sync"
    sim.propose([b"after"])
    sim.wait_converged(10)
    assert r.log[-1] == b"after"


def test_a_replica_that_cannot_restart_backs_off() -> None:
    """A log without a reset (today's RedexFile) leaves the replica behind, asking at
    most about once a heartbeat, never at network speed."""
    sim = SimCluster(2, seed=3, ack="leader", retention_max_events=200)
    lead = sim.wait_for_leader()
    replica = next(i for i in sim.ids if i != lead)
    sim.propose([b"x"] * 50)
    sim.wait_converged()
    sim.isolate(replica)
    sim.propose([b"y"] * 1000, lead)
    sim.step(2)

    def no_reset(first_seq: int, prev_term: int) -> None:
        raise NotImplementedError("reset")

    sim.nodes[replica].storage.reset = no_reset  # type: ignore[method-assign]
    sim.heal()
    sim.run_heartbeats(5)
    r = sim.nodes[replica]
    before = r.coord.metrics.sync_requests_total
    sim.run_heartbeats(20)
    asked = r.coord.metrics.sync_requests_total - before
    assert 5 <= asked <= 25, f"{asked} requests in 20 heartbeats"
    assert r.executor.gaps_unfilled >= 5 and r.coord.tail_seq == 50 and r.running


@pytest.mark.parametrize("seed", range(10))
def test_quorum_batch_larger_than_retention_commits(seed: int) -> None:
    sim = SimCluster(3, seed=seed, ack="quorum", retention_max_events=100)
    lead = sim.wait_for_leader()
    sim.propose([f"e{i}".encode() for i in range(300)])
    assert sim.nodes[lead].storage.head == 0, "nothing committed yet: nothing may go"
    assert sim.wait_converged(20) == lead
    for node in sim.nodes.values():
        assert node.coord.commit_seq == 300 and node.coord.metrics.log_gaps_total == 0
    sim.propose([b"next"])
    sim.wait_converged(10)
    assert all(n.storage.head >= 200 for n in sim.nodes.values()), "retention resumes"
    sim.assert_committed_kept()

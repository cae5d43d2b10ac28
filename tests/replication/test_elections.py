"""Elections under partial connectivity (issue 10 §6), on the simulation.

* The best candidate may be unable to campaign (it reaches no majority): the others
  defer to it at most once, then campaign themselves (bounded deferral, randomised
  waits from the coordinator's rng), so a leader emerges within a bounded number of
  heartbeats.
* A one-way loss leader -> B must not depose a healthy leader: B's pre-vote is refused
  by every voter that hears the leader (Raft pre-vote + etcd-raft's checkQuorum lease),
  so B never raises the term.
"""

from __future__ import annotations

import pytest

from netmesh.testing.sim import SimCluster

SEEDS = range(40)


def most_up_to_date_linked_to_one(seed: int) -> tuple[SimCluster, int, int]:
    """5 nodes, quorum: A holds the newest (uncommitted) events and keeps a link to B
    only; B, C, D are fully connected; the leader E dies. Returns (sim, A, B)."""
    sim = SimCluster(5, seed=seed, ack="quorum")
    lead = sim.wait_for_leader()
    sim.propose([b"base"])
    sim.wait_converged()
    others = [i for i in sim.ids if i != lead]
    a, b, c, d = others
    sim.partition([lead, a], [b, c, d])  # only A hears the leader's newest events
    sim.propose([b"new1", b"new2"])
    sim.step(4)
    assert sim.nodes[a].coord.tail_seq == 3, sim.describe()
    sim.crash(lead)
    sim.heal()
    for x in (c, d):
        sim.cut(a, x, both=True)
    return sim, a, b


@pytest.mark.parametrize("seed", SEEDS)
def test_leader_elected_when_the_best_candidate_reaches_no_majority(seed: int) -> None:
    sim, a, _ = most_up_to_date_linked_to_one(seed)
    lead = sim.wait_for_leader(max_heartbeats=20)
    assert lead != a, f"seed={seed}: A reaches no majority: {sim.describe()}"
    campaigns = sum(n.coord.metrics.elections_total for n in sim.nodes.values())
    assert campaigns <= 12, f"seed={seed}: {campaigns} campaigns: {sim.describe()}"
    sim.propose([b"after"])
    sim.run_heartbeats(4)
    assert sim.nodes[lead].coord.commit_seq == sim.nodes[lead].coord.tail_seq
    sim.heal()
    sim.wait_converged()
    sim.assert_committed_kept()


@pytest.mark.parametrize("ack", ["quorum", "leader"])
@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(10))
def test_one_way_loss_from_the_leader_does_not_depose_it(seed: int, n: int, ack: str) -> None:
    sim = SimCluster(n, seed=seed, ack=ack)  # type: ignore[arg-type]
    lead = sim.wait_for_leader()
    sim.run_heartbeats(5)
    term = sim.nodes[lead].coord.term
    victim = next(i for i in sim.ids if i != lead)
    sim.cut(lead, victim)  # the victim hears nothing from the leader; it still sends
    sim.run_heartbeats(30)
    assert sim.leaders() == [lead], f"seed={seed}: {sim.describe()}"
    assert all(node.coord.term == term for node in sim.nodes.values()), sim.describe()
    assert sim.nodes[lead].coord.metrics.leader_changes_total == 1
    sim.propose([b"x"])
    sim.heal()
    assert sim.wait_converged(20) == lead
    assert sim.nodes[victim].log == sim.nodes[lead].log


def test_a_pre_candidate_that_hears_the_leader_follows_it() -> None:
    """Pre-vote keeps the term, so the live leader of that term may still speak: the
    pre-candidate stands down at once instead of waiting out its campaign."""
    from netmesh.replication.messages import Heartbeat
    from netmesh.replication.roles import ReplicaRole as R

    sim = SimCluster(3, seed=5, ack="quorum")
    lead = sim.wait_for_leader()
    sim.run_heartbeats(3)
    b = next(i for i in sim.ids if i != lead)
    node = sim.nodes[b]
    term = node.coord.term
    sim.cut(lead, b)
    for _ in range(40):
        sim.step()
        if node.coord.role is R.CANDIDATE:
            break
    assert node.coord.role is R.CANDIDATE and node.coord.term == term, sim.describe()
    lt = sim.nodes[lead].coord
    node.executor.run(
        node.coord.step(lead, Heartbeat(term, R.LEADER, lt.tail_seq, 0, term, term), sim.now)
    )
    assert node.coord.role is R.REPLICA and node.coord.leader_id == lead

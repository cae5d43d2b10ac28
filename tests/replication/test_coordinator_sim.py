"""Deterministic simulation over many seeds: random faults, invariants after every step.

SimCluster asserts after every step: one leader per term; log length == coordinator
tail; quorum mode: commit monotonic and every log agrees with the committed prefix.
After the faults stop, the cluster must converge (one leader, identical logs) and, in
quorum mode, keep every committed (acknowledged) event.
"""

from __future__ import annotations

import random

import pytest

from netmesh.testing.sim import InvariantViolation, SimCluster

QUORUM_SEEDS = range(200)
LEADER_SEEDS = range(1000, 1100)


def run_faults(sim: SimCluster, rng: random.Random, steps: int) -> list[bytes]:
    proposed: list[bytes] = []
    n = len(sim.ids)
    for k in range(steps):
        x = rng.random()
        if x < 0.35:
            batch = [f"{sim.seed}-{k}-{j}".encode() for j in range(rng.randint(1, 3))]
            if sim.propose(batch) is not None:
                proposed += batch
        elif x < 0.40:
            sim.crash(rng.choice(sim.ids))
        elif x < 0.45:
            dead = [i for i in sim.ids if not sim.nodes[i].alive]
            if dead:
                sim.restart(rng.choice(dead))
        elif x < 0.50:
            ids = list(sim.ids)
            rng.shuffle(ids)
            cut = rng.randint(1, n - 1)
            sim.partition(ids[:cut], ids[cut:])
        elif x < 0.55:
            sim.heal()
        sim.step(rng.randint(1, 4))
    return proposed


def make(seed: int, ack: str) -> tuple[SimCluster, random.Random]:
    rng = random.Random(seed * 7919 + (ack == "leader"))
    n = rng.choice([3, 3, 5]) if ack == "quorum" else rng.choice([2, 3, 3, 5])
    sim = SimCluster(
        n,
        seed=seed,
        ack=ack,  # type: ignore[arg-type]
        drop=rng.choice([0.0, 0.05, 0.2]),
        duplicate=rng.choice([0.0, 0.05, 0.2]),
        max_delay=rng.choice([None, 0.05, 0.25]),
        pinned=rng.choice([None, 0]),
    )
    return sim, rng


@pytest.mark.parametrize("seed", QUORUM_SEEDS)
def test_quorum_mode_random_faults(seed: int) -> None:
    sim, rng = make(seed, "quorum")
    run_faults(sim, rng, 100)
    sim.quiet()
    sim.wait_converged(80)
    sim.assert_committed_kept()
    lead = sim.leader()
    assert lead is not None
    final = sim.nodes[lead]
    sim.propose([b"final"])
    sim.wait_converged(20)
    assert final.coord.commit_seq == len(final.log), f"seed={seed}: {sim.describe()}"


@pytest.mark.parametrize("seed", LEADER_SEEDS)
def test_leader_mode_one_leader_per_term_and_convergence_after_heal(seed: int) -> None:
    sim, rng = make(seed, "leader")
    run_faults(sim, rng, 100)
    sim.quiet()
    sim.wait_converged(80)
    sim.run_heartbeats(10)  # a healthy pinned leader takes over once in sync
    lead = sim.wait_converged(20)
    if sim.config.leader_pinned is not None:
        assert lead == sim.config.leader_pinned, f"seed={seed}: {sim.describe()}"
    sim.run_heartbeats(10)
    assert sim.leaders() == [lead], f"seed={seed}: leadership flapped: {sim.describe()}"


def test_invariant_failure_names_the_seed() -> None:
    sim = SimCluster(3, seed=77)
    sim.wait_for_leader()
    sim.nodes[sim.ids[0]].log.append(b"corrupt")
    with pytest.raises(InvariantViolation, match="seed=77"):
        sim.step()


def test_same_seed_replays_identically() -> None:
    def trace(seed: int) -> str:
        sim, rng = make(seed, "quorum")
        run_faults(sim, rng, 60)
        return sim.describe() + f" {sim.delivered}"

    assert trace(5) == trace(5)


MID_CRASH_SEEDS = range(80)


def run_mid_crash(seed: int, ack: str) -> SimCluster:
    """Nodes die only half-way through output lists (before an Apply or Truncate),
    between partitions, restarts and proposals on the current leaders."""
    rng = random.Random(seed)
    n = rng.choice([3, 3, 5])
    sim = SimCluster(
        n,
        seed=seed,
        ack=ack,  # type: ignore[arg-type]
        drop=rng.choice([0.0, 0.1]),
        duplicate=rng.choice([0.0, 0.1]),
        max_delay=rng.choice([None, 0.3]),
        pinned=rng.choice([None, 0]),
        crash_mid_output=0.15,
    )
    for k in range(300):
        x = rng.random()
        if x < 0.35:
            if leaders := sim.leaders():
                batch = [f"{seed}-{k}-{j}".encode() for j in range(rng.randint(1, 3))]
                sim.propose(batch, rng.choice(leaders))
        elif x < 0.45:
            if dead := [i for i in sim.ids if not sim.nodes[i].alive]:
                sim.restart(rng.choice(dead))
        elif x < 0.52:
            ids = list(sim.ids)
            rng.shuffle(ids)
            cut = rng.randint(1, n - 1)
            sim.heal()
            sim.partition(ids[:cut], ids[cut:])
        elif x < 0.58:
            sim.heal()
        sim.step(rng.randint(1, 4))
    sim.crash_mid_output = 0.0
    sim.quiet()
    sim.wait_converged(200)
    return sim


@pytest.mark.parametrize("ack", ["quorum", "leader"])
@pytest.mark.parametrize("seed", MID_CRASH_SEEDS)
def test_crash_half_way_through_outputs_keeps_logs_consistent(seed: int, ack: str) -> None:
    """A node may die between a log change and the hard-state save that follows it;
    after the faults stop every log is the same and (quorum) every commit survives."""
    sim = run_mid_crash(seed, ack)
    if ack == "quorum":
        sim.assert_committed_kept()
    logs = {tuple(n.log) for n in sim.nodes.values()}
    assert len(logs) == 1, f"seed={seed}: logs differ after convergence: {sim.describe()}"

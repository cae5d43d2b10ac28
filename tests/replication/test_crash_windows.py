"""Crash windows and storage failures (issue 10 §1, §7 on the replication side).

* The log describes itself: every batch carries its term, so a crash between an
  ``Apply`` and the ``SaveHardState`` after it cannot mislabel events. Reproduced input:
  X leads and, isolated, appends 10; Y and Z elect Y, which appends 10; Z applies Y's
  events and dies before saving its hard state; Y dies; X and Z elect a leader and
  commit. With epochs only in the hard state (``log_terms=False``) X and Z hold
  different events below their commit on 20 of 20 seeds; right value: identical.
* Random faults with a power cut possible at EVERY output boundary (before and after
  each Apply, Truncate, SaveHardState, Send), injected storage errors (a failed write,
  fsync, truncate or hard-state save: fail-stop, role FAILED until reopened), one-way
  link cuts, drops, duplicates and delays, over 500 seeds: the simulation's invariants
  hold after every step, and after the faults stop every log is the same (quorum: every
  committed event kept).
"""

from __future__ import annotations

import random

import pytest

from netmesh.replication.coordinator import Apply, Truncate
from netmesh.testing.sim import EVERY_BOUNDARY, InvariantViolation, SimCluster


def crash_after_apply(seed: int, log_terms: bool) -> tuple[SimCluster, int, int]:
    """The §1 input; returns (sim, X, Z) after X and Z committed more."""
    sim = SimCluster(3, seed=seed, ack="quorum", log_terms=log_terms)
    x = sim.wait_for_leader()
    sim.propose([f"e{i}".encode() for i in range(10)])
    sim.wait_converged()
    sim.isolate(x)
    sim.propose([f"x{i}".encode() for i in range(10)], x)
    sim.step(2)
    y_lead = None
    for _ in range(200):  # Y and Z elect one of them
        sim.step()
        if leaders := [i for i in sim.leaders() if i != x]:
            y_lead = leaders[0]
            break
    assert y_lead is not None, sim.describe()
    z = next(i for i in sim.ids if i not in (x, y_lead))
    sim.cut(y_lead, z)  # Z misses Y's pushes: it will get them in one SyncResponse
    sim.propose([f"y{i}".encode() for i in range(10)], y_lead)
    sim.step(1)
    sim.crash_points = frozenset({("after", Apply)})
    sim.crash_mid_output = 1.0  # Z dies right after Apply, before SaveHardState
    sim.heal()
    sim.isolate(x)
    for _ in range(40):
        sim.step()
        if not sim.nodes[z].alive:
            break
    sim.crash_mid_output = 0.0
    assert not sim.nodes[z].alive and len(sim.nodes[z].log) == 20, sim.describe()
    sim.crash(y_lead)
    sim.heal()
    sim.restart(z)
    sim.run_heartbeats(20)
    sim.propose([b"more"])
    sim.run_heartbeats(10)
    return sim, x, z


@pytest.mark.parametrize("seed", range(20))
def test_crash_between_apply_and_hard_state_cannot_mislabel_events(seed: int) -> None:
    sim, x, z = crash_after_apply(seed, log_terms=True)
    xs, zs = sim.nodes[x], sim.nodes[z]
    commit = min(xs.coord.commit_seq, zs.coord.commit_seq)
    assert commit > 20, f"seed={seed}: {sim.describe()}"
    assert xs.log[:commit] == zs.log[:commit], f"seed={seed}: {sim.describe()}"
    assert zs.log[10:20] == [f"y{i}".encode() for i in range(10)], "Z's newer term wins"


def test_the_same_input_breaks_a_log_without_terms() -> None:
    """The reproduced bug: epochs only in the hard state mislabel Y's events as X's."""
    with pytest.raises(InvariantViolation, match="committed prefix"):
        crash_after_apply(0, log_terms=False)


def run_faults_everywhere(seed: int, ack: str) -> SimCluster:
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
        crash_mid_output=0.004,
        crash_points=EVERY_BOUNDARY,
        storage_errors=0.003,
    )
    for k in range(200):
        x = rng.random()
        if x < 0.35:
            if leaders := sim.leaders():
                batch = [f"{seed}-{k}-{j}".encode() for j in range(rng.randint(1, 3))]
                sim.propose(batch, rng.choice(leaders))
        elif x < 0.45:
            if down := sim.down():
                sim.restart(rng.choice(down))
        elif x < 0.50:
            ids = list(sim.ids)
            rng.shuffle(ids)
            cut = rng.randint(1, n - 1)
            sim.heal()
            sim.partition(ids[:cut], ids[cut:])
        elif x < 0.54:
            a, b = rng.sample(sim.ids, 2)
            sim.cut(a, b)  # one way
        elif x < 0.60:
            sim.heal()
        sim.step(rng.randint(1, 4))
    return sim


CHUNK = 25
FAULT_CHUNKS = [("quorum", start) for start in range(0, 300, CHUNK)] + [
    ("leader", start) for start in range(1000, 1200, CHUNK)
]


@pytest.mark.parametrize(("ack", "first_seed"), FAULT_CHUNKS)
def test_crashes_at_every_boundary_and_storage_errors(ack: str, first_seed: int) -> None:
    """500 seeds in chunks of 25 (a few seconds per test); failures name the seed."""
    for seed in range(first_seed, first_seed + CHUNK):
        sim = run_faults_everywhere(seed, ack)
        sim.quiet()
        sim.wait_converged(200)
        if ack == "quorum":
            sim.assert_committed_kept()
        logs = {tuple(n.log) for n in sim.nodes.values()}
        assert len(logs) == 1, f"seed={seed}: logs differ after convergence: {sim.describe()}"


def test_the_fault_mix_exercises_what_it_claims() -> None:
    """Across 40 seeds: crashes at every kind of boundary, storage failures that stop
    nodes (role FAILED) and commits all happen (the stress test tests something)."""
    seen: set[tuple[str, str]] = set()
    failed = commits = 0
    for seed in range(40):
        sim = run_faults_everywhere(seed, "quorum")
        failed += sum(n.storage.failures for n in sim.nodes.values())  # type: ignore[attr-defined]
        commits += len(sim.committed)
        seen |= {(w, k.__name__) for w, k in sim.crashes_at}
    assert failed > 0 and commits > 100
    assert {(w, k) for w in ("before", "after") for k in ("Apply", "SaveHardState", "Send")} <= seen


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("seed", range(10))
def test_crash_at_a_truncate_boundary(seed: int, when: str) -> None:
    """Truncates are rare in the random mix: a leader-mode split brain forces one (the
    old leader's suffix goes on heal) and the node dies right before or after it."""
    sim = SimCluster(3, seed=seed, ack="leader")
    old = sim.wait_for_leader()
    sim.propose([b"common"])
    sim.wait_converged()
    sim.isolate(old)
    sim.propose([b"lost1", b"lost2"], old)
    sim.run_heartbeats(8)
    new = next(i for i in sim.leaders() if i != old)
    sim.propose([b"kept1", b"kept2", b"kept3"], new)
    sim.run_heartbeats(2)
    sim.crash_points = frozenset({(when, Truncate)})  # type: ignore[arg-type]
    sim.crash_mid_output = 1.0
    sim.heal()
    sim.run_heartbeats(10)
    assert sim.crashes_at == [(when, Truncate)], f"seed={seed}: {sim.describe()}"
    sim.quiet()
    lead = sim.wait_converged(60)
    assert sim.nodes[old].log == sim.nodes[lead].log
    assert sim.nodes[lead].log == [b"common", b"kept1", b"kept2", b"kept3"]

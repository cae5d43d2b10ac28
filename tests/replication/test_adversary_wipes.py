"""Adversarial review of issue 10 §2 (lost state, commit 6b9dfde) in the simulator:
random proposals, crashes, restarts, partitions and wipes (one node without state at a
time), in quorum and leader mode, 3 and 5 nodes; fresh clusters, a crash while
recovering, quiescent clusters with a wiped member. At the end, issue 13 §3's placement
steps (commit 2c1c146) as a model with stale views.

What these tests do NOT cover (reported to the lead, see the adversary's report): a
wipe while another member is intact at term 0 with an empty log (it crashed before the
first election) makes a "fresh" majority with the wiped node and loses committed
events; the random tests below therefore only wipe while every other member has taken
a term.
"""

from __future__ import annotations

import itertools
import random
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netmesh.log.hardstate import MAX_TERM
from netmesh.replication import placement as pl
from netmesh.replication.roles import ReplicaRole
from netmesh.testing.sim import EVERY_BOUNDARY, MemoryStorage, SimCluster, SimNode

Ack = Literal["leader", "quorum"]


class FloorSim(SimCluster):
    """SimCluster whose nodes started without hard state campaign only above every term
    the cluster reached, as ``ChannelRuntime`` passes ``incarnation_term_floor()`` (the
    wall clock, assumed above every earlier term) to such a node. Without it a wiped
    node of the simulator may lead a term it led in its former life."""

    def _node(self, node_id: int, storage: MemoryStorage) -> SimNode:
        nodes: dict[int, SimNode] = getattr(self, "nodes", {})
        top = max([n.coord.term for n in nodes.values()] + [getattr(self, "_top", 0)])
        self._top = top
        node = super()._node(node_id, storage)
        if storage.hard_state is None and nodes:
            node.coord.term_floor = min(top + 1, MAX_TERM // 2)
        return node


def _stateless(sim: SimCluster, node_id: int) -> bool:
    """Without state: amnesiac (running), or no hard state / one saved recovering."""
    node = sim.nodes[node_id]
    if node.alive:
        return node.coord.amnesiac
    hs = node.storage.hard_state
    return hs is None or hs.recovering


def _may_wipe(sim: SimCluster, node_id: int) -> bool:
    """One node without state at a time, and (see the module docstring) no other
    member still at term 0."""
    others = [i for i in sim.ids if i != node_id]
    return all(not _stateless(sim, i) and sim.nodes[i].hard_state.term > 0 for i in others)


def _random_run(
    seed: int, n: int, ack: Ack, ops: int = 100, crash_mid: float = 0.0, drop: float = 0.0
) -> tuple[int, int]:
    """Random faults, then quiet(): the cluster converges (one leader, equal logs,
    commit at the tail), every node has left the amnesia, and (quorum) every committed
    event is kept; invariants hold at every step (InvariantViolation otherwise).
    Returns (wipes done, events in the final log)."""
    rng = random.Random(seed * 7919 + n)
    sim = FloorSim(
        n,
        seed=seed,
        ack=ack,
        drop=drop,
        crash_mid_output=crash_mid,
        crash_points=EVERY_BOUNDARY,
    )
    wipes = ev = 0
    kinds = ["propose", "run", "crash", "restart", "partition", "heal", "wipe", "isolate"]
    for _ in range(ops):
        op = rng.choices(kinds, [5, 6, 2, 3, 1, 2, 2, 1])[0]
        if op == "propose":
            count = rng.randint(1, 20)
            sim.propose([b"%d-%d" % (seed, ev + j) for j in range(count)])
            ev += count
        elif op == "run":
            sim.run_heartbeats(rng.choice([0.5, 1, 2, 5, 10]))
        elif op == "crash":
            sim.crash(rng.choice(sim.ids))
        elif op == "restart":
            if sim.down():
                sim.restart(rng.choice(sim.down()))
        elif op == "partition":
            ids = sim.ids[:]
            rng.shuffle(ids)
            cut = rng.randint(1, n - 1)
            sim.heal()
            sim.partition(ids[:cut], ids[cut:])
        elif op == "isolate":
            sim.isolate(rng.choice(sim.ids))
        elif op == "heal":
            sim.heal()
        else:
            victim = rng.choice(sim.ids)
            if not _may_wipe(sim, victim):
                continue
            sim.wipe(victim)
            wipes += 1
            if rng.random() < 0.8:
                sim.restart(victim)
                if rng.random() < 0.3:
                    sim.isolate(victim)
    sim.quiet()
    sim.wait_converged(max_heartbeats=300)
    sim.run_heartbeats(20)
    sim.wait_converged(max_heartbeats=100)
    if ack == "quorum":
        sim.assert_committed_kept()
    amnesiac = [i for i in sim.ids if sim.nodes[i].coord.amnesiac]
    assert not amnesiac, f"seed={seed}: still amnesiac after converging: {amnesiac}"
    return wipes, len(sim.nodes[sim.leaders()[0]].log)


@pytest.mark.parametrize(("n", "seeds"), [(3, range(100)), (5, range(40))])
def test_random_wipes_in_quorum_mode_keep_committed_events_and_converge(
    n: int, seeds: range
) -> None:
    runs = [_random_run(seed, n, "quorum") for seed in seeds]
    assert sum(w for w, _ in runs) >= len(seeds)  # the runs did wipe...
    assert sum(1 for w, events in runs if w and events) >= len(seeds) // 2  # ...holders


@pytest.mark.parametrize("n", [3, 5])
def test_random_wipes_with_power_cuts_and_lossy_links(n: int) -> None:
    """Crashes at every output boundary (a crash while recovering among them) and 5 %
    datagram loss."""
    for seed in range(100, 100 + (20 if n == 3 else 10)):
        _random_run(seed, n, "quorum", crash_mid=0.01, drop=0.05)


@pytest.mark.parametrize("n", [3, 5])
def test_random_wipes_in_leader_mode_converge(n: int) -> None:
    for seed in range(200, 200 + (20 if n == 3 else 10)):
        _random_run(seed, n, "leader")


@pytest.mark.parametrize("n", [3, 5])
def test_a_wiped_node_cut_off_at_once_never_leads_in_leader_mode(n: int) -> None:
    """Leader mode: a lone survivor leads alone, but not one that just lost its state:
    wiped, restarted and isolated at once, it stays a replica however long the cut
    lasts; after the heal there is one history and it has left the amnesia."""
    for seed in range(12):
        rng = random.Random(seed)
        sim = FloorSim(n, seed=seed, ack="leader")
        sim.wait_for_leader()
        for round_ in range(3):
            sim.propose([b"r%d-%d" % (round_, i) for i in range(rng.randint(1, 9))])
            sim.run_heartbeats(rng.choice([1, 4]))
            sim.wait_converged()
            wiped = rng.choice(sim.ids)
            sim.wipe(wiped)
            sim.restart(wiped)
            sim.isolate(wiped)
            for _ in range(4 * rng.choice([5, 20, 40])):
                sim.step()
                assert sim.nodes[wiped].coord.role is not ReplicaRole.LEADER, (seed, round_)
            assert sim.nodes[wiped].coord.amnesiac
            sim.propose([b"while-cut-%d" % round_])
            sim.heal()
            sim.wait_converged(max_heartbeats=120)
            lead = sim.nodes[sim.leaders()[0]]
            assert all(n.log == lead.log for n in sim.nodes.values())
        sim.run_heartbeats(5)
        assert not any(sim.nodes[i].coord.amnesiac for i in sim.ids)


@pytest.mark.parametrize(
    ("n", "up", "ack"),
    [
        (3, 2, "leader"),
        (5, 3, "leader"),
        (3, 3, "leader"),
        (5, 5, "leader"),
        (3, 3, "quorum"),
        (5, 4, "quorum"),
        (5, 5, "quorum"),
    ],
)
def test_a_fresh_cluster_of_amnesiac_nodes_elects_with_enough_members_up(
    n: int, up: int, ack: Ack
) -> None:
    """Liveness of a new channel: every node starts without hard state (amnesiac);
    enough of them running is a fresh channel and elects (leader mode: a majority;
    quorum mode: n - majority + 2, so that one wiped holder plus members that never
    held anything cannot pass for a fresh channel); the rest join later."""
    for seed in range(5):
        sim = SimCluster(n, seed=seed, ack=ack)
        down = sim.ids[up:]
        for i in down:
            sim.crash(i)
        assert all(sim.nodes[i].coord.amnesiac for i in sim.ids)
        sim.wait_for_leader(max_heartbeats=40)
        sim.propose([b"first"])
        sim.run_heartbeats(5)
        for i in down:
            sim.restart(i)
        sim.wait_converged()
        assert all(n.log == [b"first"] for n in sim.nodes.values())
        sim.run_heartbeats(3)
        assert not any(sim.nodes[i].coord.amnesiac for i in sim.ids)


@pytest.mark.parametrize(("n", "up"), [(3, 2), (5, 3)])
def test_a_fresh_quorum_channel_with_only_a_majority_up_waits(n: int, up: int) -> None:
    """The price of the rule above (the adversary's F1): a quorum channel whose members
    all start without state does not elect with a bare majority up; it elects as soon
    as n - majority + 2 are."""
    sim = SimCluster(n, seed=3, ack="quorum")
    for i in sim.ids[up:]:
        sim.crash(i)
    sim.run_heartbeats(30)
    assert sim.leaders() == []
    sim.restart(sim.ids[up])
    sim.wait_for_leader(max_heartbeats=40)


def test_one_wipe_and_a_member_that_never_held_anything_are_not_a_fresh_channel() -> None:
    """The adversary's F1: all clear the initial amnesia; B crashes before the first
    election (saved: term 0, empty log); A and X commit 10 events; A crashes, X is
    wiped; X and B come back. X and B alone must not elect an empty log."""
    sim = SimCluster(3, seed=0, ack="quorum")
    while any(nd.coord.amnesiac for nd in sim.nodes.values()):
        sim.step()
    b = sim.ids[-1]
    sim.crash(b)
    lead = sim.wait_for_leader()
    x = next(i for i in sim.ids if i not in (lead, b))
    sim.propose([b"e%d" % i for i in range(10)])
    sim.run_heartbeats(5)
    assert len(sim.committed) == 10
    sim.crash(lead)
    sim.wipe(x)
    sim.restart(x)
    sim.restart(b)
    sim.run_heartbeats(40)
    assert sim.leaders() == []
    sim.restart(lead)
    sim.wait_converged()
    sim.assert_committed_kept()


def test_a_crash_while_recovering_keeps_the_amnesia() -> None:
    """Quorum, 3 nodes: L and F hold 300 committed events, O is down; F is wiped and
    restarted and, halfway through its catch-up, crashes. Its hard state says
    ``recovering``; restarted from it, F is amnesiac again (it has the term, not the
    history), refuses the vote that would elect O over 150 events it lacks, and
    completes once L is back."""
    sim = SimCluster(3, seed=11, ack="quorum", sync_chunk_bytes=1024)
    lead = sim.wait_for_leader()
    f, o = (i for i in sim.ids if i != lead)
    sim.crash(o)
    sim.propose([b"event-%04d" % i + bytes(200) for i in range(300)])
    for _ in range(400):
        if len(sim.committed) == 300:
            break
        sim.step()
    assert len(sim.committed) == 300
    sim.wipe(f)
    sim.restart(f)
    for _ in range(400):
        sim.step()
        if 0 < len(sim.nodes[f].log) < 300:
            break
    assert 0 < len(sim.nodes[f].log) < 300
    assert sim.nodes[f].coord.amnesiac
    sim.crash(f)
    saved = sim.nodes[f].storage.hard_state
    assert saved is not None and saved.recovering and saved.term > 0
    sim.crash(lead)
    sim.restart(f)
    sim.restart(o)
    assert sim.nodes[f].coord.amnesiac
    sim.run_heartbeats(40)
    assert sim.leaders() == []  # F knows only O's log: it grants nothing
    assert sim.nodes[f].coord.metrics.votes_withheld_total > 0
    sim.restart(lead)
    sim.wait_converged()
    sim.assert_committed_kept()
    assert all(len(n.log) == 300 for n in sim.nodes.values())
    assert not sim.nodes[f].coord.amnesiac
    hs = sim.nodes[f].storage.hard_state
    assert hs is not None and not hs.recovering


@pytest.mark.parametrize("who", ["follower", "leader"])
def test_a_quiescent_cluster_takes_back_a_wiped_member(who: str) -> None:
    """A quiescent cluster (no per-channel heartbeats) and a member wiped and restarted
    within the same step (its node's beats never stop): it is noticed, catches up,
    leaves the amnesia, and the cluster quiesces again with every event kept."""
    for seed in range(6):
        sim = SimCluster(3, seed=seed, ack="quorum")
        lead = sim.wait_for_leader()
        sim.propose([b"q%d" % i for i in range(40)])
        sim.wait_converged()
        sim.run_heartbeats(10)
        assert all(n.coord.quiescent for n in sim.nodes.values()), sim.describe()
        victim = lead if who == "leader" else next(i for i in sim.ids if i != lead)
        sim.wipe(victim)
        sim.restart(victim)
        assert sim.nodes[victim].coord.amnesiac
        sim.wait_converged(max_heartbeats=80)
        sim.assert_committed_kept()
        assert all(len(n.log) == 40 for n in sim.nodes.values())
        sim.run_heartbeats(10)
        assert not sim.nodes[victim].coord.amnesiac
        assert all(n.coord.quiescent for n in sim.nodes.values()), sim.describe()


# ------------------------------------------------------------------ placement steps
# Issue 13 §3 (``placement.quorum_change``), checked as a model: nodes step with stale,
# per-sender monotone views of the others' announcements (the set each runs, whether it
# is a ready learner, the step it ordered as a leader), elections (a candidate wins a
# term from a majority of its set's members running it and reachable), heartbeats (a
# leader tells the members of its set its term), and targets that may differ between
# nodes (some resolved a newcomer the others had not heard yet: the adversary's P1).

PLACEMENT_NODES = range(6)

_Entry = tuple[tuple[int, ...] | None, bool, pl.Step | None, int]


class _StepModel:
    """Each node's announcement history, each node's view (an index into every other
    node's history, or None while that node is down for it), each node's target and
    coordinator (term, known leader; a new set starts a new coordinator), and the set
    each node runs or ran last with its version (``persist``: kept across restarts,
    as a channel's ``placement`` file, and a restarted node resumes that set; else a
    restarted node runs nothing and may join any version, as an in-memory one)."""

    def __init__(self, first: tuple[int, ...], persist: bool = True) -> None:
        self.persist = persist
        self.version = {n: 0 for n in PLACEMENT_NODES}
        self.applied: dict[int, tuple[int, ...] | None] = {
            n: (first if n in first else None) for n in PLACEMENT_NODES
        }
        self.history: dict[int, list[_Entry]] = {
            n: [(self.applied[n], False, None, 0)] for n in PLACEMENT_NODES
        }
        self.view: dict[int, dict[int, int | None]] = {
            i: {j: 0 for j in PLACEMENT_NODES if j != i} for i in PLACEMENT_NODES
        }
        self.up = {n: True for n in PLACEMENT_NODES}
        self.targets: dict[int, tuple[int, ...]] = {n: first for n in PLACEMENT_NODES}
        self.learning: set[int] = set()
        self.term = {n: 0 for n in PLACEMENT_NODES}
        self.lead: dict[int, pl.Lead | None] = {n: None for n in PLACEMENT_NODES}
        self.step: dict[int, pl.Step | None] = {n: None for n in PLACEMENT_NODES}

    @property
    def target(self) -> tuple[int, ...]:
        return self.targets[0]

    @target.setter
    def target(self, target: tuple[int, ...]) -> None:
        self.targets = {n: target for n in PLACEMENT_NODES}

    def seen(
        self, i: int
    ) -> tuple[dict[int, tuple[int, ...] | None], set[int], dict[int, pl.Step], dict[int, int]]:
        seen: dict[int, tuple[int, ...] | None] = {}
        ready = set()
        steps: dict[int, pl.Step] = {}
        versions: dict[int, int] = {}
        for j, at in self.view[i].items():
            if at is not None:
                members, is_ready, step, version = self.history[j][at]
                seen[j] = members
                versions[j] = version
                if is_ready and members is None:
                    ready.add(j)
                if step is not None:
                    steps[j] = step
        return seen, ready, steps, versions

    def _announce(self, i: int, ready: bool = False) -> None:
        version = self.version[i] if self.applied[i] is not None else 0
        self.history[i].append((self.applied[i], ready, self.step[i], version))

    def act(self, i: int) -> None:
        if not self.up[i]:
            return
        seen, ready, steps, versions = self.seen(i)
        for _ in range(2):
            if self.step[i] is not None:
                steps[i] = self.step[i]  # type: ignore[assignment]
            out = pl.quorum_change(
                i,
                self.applied[i],
                self.targets[i],
                seen,
                ready,
                lead=self.lead[i],
                steps=steps,
                version=self.version[i],
                versions=versions,
            )
            if not isinstance(out, pl.Step):
                break
            assert self.lead[i] == pl.Lead(out.term, i), "only a leader orders, in its term"
            self.step[i] = out
            self._announce(i)
        if out == pl.LEARN:
            self.learning.add(i)
        elif isinstance(out, pl.Change):
            self.applied[i] = out.members
            if out.members is not None:
                self.version[i] = out.version
            self.lead[i] = None  # a new set: a new coordinator
            if self.step[i] is not None and self.step[i].members != out.members:  # type: ignore[union-attr]
                self.step[i] = None
            self.learning.discard(i)
            self._announce(i)

    def _reach(self, i: int, j: int) -> bool:
        return i == j or (
            self.up[i]
            and self.up[j]
            and self.view[i][j] is not None
            and self.view[j][i] is not None
        )

    def elect(self, i: int) -> None:
        """``i`` campaigns in the set it runs: it wins a new term if a majority of
        that set runs it, is up and reaches ``i`` (votes are per term and set: the
        membership id)."""
        cur = self.applied[i]
        if not self.up[i] or cur is None:
            return
        voters = [j for j in cur if self.applied[j] == cur and self._reach(i, j)]
        if len(voters) < len(cur) // 2 + 1:
            return
        term = max(self.term[j] for j in voters) + 1
        for j in voters:
            self.term[j], self.lead[j] = term, pl.Lead(term, i)

    def beat(self, i: int, j: int) -> None:
        """Leader ``i``'s heartbeat reaches ``j`` (same set): ``j`` learns its term."""
        lead = self.lead[i]
        if lead is None or lead.leader != i or lead.term != self.term[i] or i == j:
            return
        if self.applied[j] == self.applied[i] and self._reach(i, j) and self.term[j] <= lead.term:
            self.term[j], self.lead[j] = lead.term, lead

    def deliver(self, i: int, j: int, how_far: float) -> None:
        at = self.view[i][j]
        if at is not None and self.up[j]:
            newest = len(self.history[j]) - 1
            self.view[i][j] = at + round((newest - at) * how_far)

    def lose(self, i: int, j: int) -> None:
        """``i`` takes ``j`` for down (a partition): ``j`` runs on."""
        if i != j:
            self.view[i][j] = None

    def rejoin(self, i: int, j: int) -> None:
        if i != j and self.up[j] and self.view[i][j] is None:
            self.view[i][j] = len(self.history[j]) - 1

    def partition(self, side: set[int]) -> None:
        """Every node takes the nodes across the cut for down."""
        for i in PLACEMENT_NODES:
            for j in PLACEMENT_NODES:
                if (i in side) != (j in side):
                    self.lose(i, j)

    def heal(self) -> None:
        for i in PLACEMENT_NODES:
            for j in PLACEMENT_NODES:
                self.rejoin(i, j)

    def crash(self, i: int) -> None:
        self.up[i] = False
        for k in PLACEMENT_NODES:
            if k != i:
                self.view[k][i] = None  # the peer event: down

    def restart(self, i: int) -> None:
        if self.up[i]:
            return
        # its term is hard state: kept; so are the set it ran last and its version
        # (placement file): it resumes that set (None: it had left, or runs nothing)
        self.up[i] = True
        if not self.persist:
            self.applied[i], self.version[i] = None, 0
        self.lead[i], self.step[i] = None, None
        self.learning.discard(i)
        self._announce(i)
        for k in PLACEMENT_NODES:
            if k != i:
                self.view[k][i] = len(self.history[i]) - 1

    def ready(self) -> None:
        for i in sorted(self.learning):
            if self.applied[i] is None and self.history[i][-1][:2] != (None, True):
                self._announce(i, ready=True)

    def check(self) -> None:
        running: dict[tuple[int, ...], set[int]] = {}
        for n in PLACEMENT_NODES:
            members = self.applied[n]
            if self.up[n] and members is not None:
                running.setdefault(members, set()).add(n)
        quorate = [m for m, r in running.items() if len(r & set(m)) >= len(m) // 2 + 1]
        assert len(quorate) <= 1, f"sets with a running majority at once: {running}"
        leaders = {}
        for n in PLACEMENT_NODES:
            lead = self.lead[n]
            if lead is not None and lead.leader is not None:
                other = leaders.setdefault((self.applied[n], lead.term), lead.leader)
                assert other == lead.leader, "two leaders of one set in one term"


_node = st.integers(0, len(PLACEMENT_NODES) - 1)
_three = st.sets(_node, min_size=3, max_size=3)
_op = st.one_of(
    st.tuples(st.just("deliver"), _node, _node, st.floats(0, 1)),
    st.tuples(st.just("act"), _node),
    st.tuples(st.just("elect"), _node),
    st.tuples(st.just("beat"), _node, _node),
    st.tuples(st.just("target"), _three),
    st.tuples(st.just("target_some"), st.sets(_node, min_size=1), _three),
    st.tuples(st.just("crash"), _node),
    st.tuples(st.just("restart"), _node),
    st.tuples(st.just("lose"), _node, _node),
    st.tuples(st.just("rejoin"), _node, _node),
    st.tuples(st.just("ready")),
)


#: the scenario of 2c1c146: 0 hears neither 1 nor 2 (they run on) and walks
#: {0,1,2} -> {0,1,2,3} -> {0,1,3} with 3; 1 and 2 are a majority of {0,1,2}
_TWO_STEPS_AHEAD = [
    ("elect", 0),
    ("lose", 0, 1),
    ("lose", 0, 2),
    ("target", {0, 1, 3}),
    ("act", 3),
    ("ready",),
    ("deliver", 0, 3, 1.0),
    ("act", 0),
    ("deliver", 3, 0, 1.0),
    ("act", 3),
    ("deliver", 0, 3, 1.0),
    ("act", 0),
    ("elect", 0),
    ("act", 0),
    ("lose", 3, 1),
    ("lose", 3, 2),
    ("deliver", 3, 0, 1.0),
    ("act", 3),
]

#: the adversary's P1 in this model: the channel runs on {1,2,3,4} (mid-way from
#: {2,3,4} to {1,2,3}), leader 3; nodes 3 and 4 heard newcomer 0 (target {0,1,2}),
#: nodes 1 and 2 did not (target {1,2,3}). Under the rule before leader-ordered steps,
#: 3 and 4 added 0 while 1 and 2 removed 4: {0,3,4} ran {0,1,2,3,4} and {1,2} ran
#: {1,2,3}, each a majority of its set.
_P1 = [
    ("elect", 3),
    *[("beat", 3, j) for j in (1, 2, 4)],
    ("target_some", {0, 3, 4}, {0, 1, 2}),
    ("act", 0),
    ("ready",),
    ("deliver", 3, 0, 1.0),
    ("deliver", 4, 0, 1.0),
    ("act", 3),
    ("act", 4),
    ("act", 1),
    ("act", 2),
    ("deliver", 0, 3, 1.0),
    ("deliver", 0, 4, 1.0),
    ("act", 0),
]


def _play(
    ops: list[tuple],  # type: ignore[type-arg]
    first: tuple[int, ...] = (0, 1, 2),
    target: tuple[int, ...] | None = None,
) -> _StepModel:
    model = _StepModel(first)
    model.target = first[:3] if target is None else target
    for op in ops:
        kind = op[0]
        if kind == "deliver":
            if op[1] != op[2]:
                model.deliver(op[1], op[2], op[3])
        elif kind == "act":
            model.act(op[1])
        elif kind == "elect":
            model.elect(op[1])
        elif kind == "beat":
            model.beat(op[1], op[2])
        elif kind == "target":
            model.target = tuple(sorted(op[1]))
        elif kind == "target_some":
            for n in op[1]:
                model.targets[n] = tuple(sorted(op[2]))
        elif kind == "crash":
            model.crash(op[1])
        elif kind == "restart":
            model.restart(op[1])
        elif kind == "lose":
            model.lose(op[1], op[2])
        elif kind == "rejoin":
            model.rejoin(op[1], op[2])
        elif kind == "partition":
            model.partition(op[1])
        elif kind == "heal":
            model.heal()
        else:
            model.ready()
        model.check()
    return model


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, max_size=200))
@example(_TWO_STEPS_AHEAD)
def test_placement_steps_never_run_two_sets_with_disjoint_majorities(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Stale views, crashes (dropped from views), partitions (a live node dropped from
    some views), restarts (running nothing), learners, elections and heartbeats, and
    target changes at any time, on every node or only on some: at no time do two sets
    each have a majority of their members running them. The rule before 2c1c146 fails
    on its scenario (the example)."""
    _play(ops)


def test_the_adversarys_p1_in_the_model() -> None:
    """Divergent targets from a 4-set (``_P1``): the rule before leader-ordered steps
    put two sets with running majorities in use; now 3's order is the only step taken,
    and once the targets agree the members reach the target."""
    model = _play(_P1, first=(1, 2, 3, 4), target=(1, 2, 3))
    model.target = (0, 1, 2)
    for _ in range(40):
        _round(model)
    assert model.applied == {0: (0, 1, 2), 1: (0, 1, 2), 2: (0, 1, 2), 3: None, 4: None, 5: None}


def test_placement_steps_over_seeded_random_schedules() -> None:
    """The same property over 600 seeded schedules of 300 operations, weighted towards
    steps, elections, deliveries and partitions (random lists rarely line up a
    learner, a partition and two steps), from 3-sets and 4-sets (mid-step), with
    targets that differ between nodes."""
    kinds = [
        "deliver",
        "act",
        "elect",
        "beat",
        "target",
        "target_some",
        "crash",
        "restart",
        "partition",
        "heal",
        "ready",
    ]
    for seed in range(600):
        rng = random.Random(seed)
        first = tuple(sorted(rng.sample(PLACEMENT_NODES, 3 + seed % 2)))
        ops: list[tuple] = []  # type: ignore[type-arg]
        for _ in range(300):
            kind = rng.choices(kinds, [10, 10, 3, 6, 2, 2, 1, 1, 6, 2, 4])[0]
            a, b = rng.sample(PLACEMENT_NODES, 2)
            if kind == "deliver":
                ops.append((kind, a, b, rng.random()))
            elif kind in ("act", "crash", "restart", "elect"):
                ops.append((kind, a))
            elif kind == "beat":
                ops.append((kind, a, b))
            elif kind == "target":
                ops.append((kind, set(rng.sample(PLACEMENT_NODES, 3))))
            elif kind == "target_some":
                who = set(rng.sample(PLACEMENT_NODES, rng.randint(1, 5)))
                ops.append((kind, who, set(rng.sample(PLACEMENT_NODES, 3))))
            elif kind == "partition":
                ops.append((kind, set(rng.sample(PLACEMENT_NODES, rng.randint(1, 3)))))
            else:
                ops.append((kind,))
        _play(ops, first)


def _round(model: _StepModel) -> None:
    """Announcements delivered, each set in use without a leader elects its lowest
    running member that can win, leaders beat, every node acts, learners get ready."""
    for i in PLACEMENT_NODES:
        for j in model.view[i]:
            model.deliver(i, j, 1.0)
    for members in {m for m in model.applied.values() if m is not None}:
        runners = [n for n in members if model.applied[n] == members and model.up[n]]
        led = any(model.lead[n] == pl.Lead(model.term[n], n) for n in runners)
        if runners and not led:
            model.elect(runners[0])
    for i in PLACEMENT_NODES:
        for j in PLACEMENT_NODES:
            model.beat(i, j)
    for i in PLACEMENT_NODES:
        model.act(i)
    model.ready()
    model.check()


def _restart_with_a_partial_view(persist: bool) -> _StepModel:
    """{1,2,3} (leader 1) moves to {1,2,4} while 3 is cut off from everyone: 3 stays
    on {1,2,3}. Then 2 restarts and at first hears only 3."""
    model = _StepModel((1, 2, 3), persist=persist)
    model.partition({3})
    model.target = (1, 2, 4)
    for _ in range(40):
        _round(model)
    assert model.applied == {
        0: None,
        1: (1, 2, 4),
        2: (1, 2, 4),
        3: (1, 2, 3),
        4: (1, 2, 4),
        5: None,
    }
    model.crash(2)
    model.restart(2)
    for j in (0, 1, 4, 5):
        model.lose(2, j)
    model.rejoin(2, 3)
    model.act(2)
    model.check()
    return model


def test_a_restarted_member_never_joins_a_set_older_than_its_last() -> None:
    """Right value: 2 does not join {1,2,3} beside 3 (a majority of it) while 1 and 4
    run {1,2,4} (a majority of that): it resumes the set it ran, {1,2,4} (version 2,
    kept in its placement file). A restarted node that forgot its set joins the old
    one (checked here: the in-memory case, see the README)."""
    with pytest.raises(AssertionError, match="running majority"):
        _restart_with_a_partial_view(persist=False)
    model = _restart_with_a_partial_view(persist=True)
    assert (model.applied[2], model.version[2]) == ((1, 2, 4), 2)
    model.heal()
    for _ in range(20):
        _round(model)
    assert model.applied == {0: None, 1: (1, 2, 4), 2: (1, 2, 4), 3: None, 4: (1, 2, 4), 5: None}


def test_placement_reaches_any_target_with_one_member_down() -> None:
    """Every 3-set to every 3-set of 6 nodes, fresh views, with no node down or one
    (not one the target adds): the others reach the target (learners ready at once)."""
    for first in itertools.combinations(PLACEMENT_NODES, 3):
        for target in itertools.combinations(PLACEMENT_NODES, 3):
            for down in [None, *PLACEMENT_NODES]:
                if down is not None and down in target and down not in first:
                    continue
                model = _StepModel(first)
                model.target = target
                if down is not None:
                    model.crash(down)
                for _ in range(40):
                    _round(model)
                want = {n: (target if n in target else None) for n in PLACEMENT_NODES}
                got = {n: model.applied[n] for n in PLACEMENT_NODES if n != down}
                assert got == {n: want[n] for n in got}, (first, target, down, got)


def test_placement_converges_once_divergent_targets_agree() -> None:
    """Targets differ between nodes for a while (each node heard a different newcomer
    first), then every node resolves the same target: the members reach it."""
    rng = random.Random(7)
    for trial in range(200):
        first = tuple(sorted(rng.sample(PLACEMENT_NODES, 3)))
        model = _StepModel(first)
        for n in PLACEMENT_NODES:
            model.targets[n] = tuple(sorted(rng.sample(PLACEMENT_NODES, 3)))
        for _ in range(rng.randint(0, 6)):
            _round(model)
        target = tuple(sorted(rng.sample(PLACEMENT_NODES, 3)))
        model.target = target
        for _ in range(40):
            _round(model)
        got = {n: model.applied[n] for n in PLACEMENT_NODES}
        assert got == {n: (target if n in target else None) for n in PLACEMENT_NODES}, (
            trial,
            got,
        )

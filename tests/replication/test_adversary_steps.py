"""Adversarial review of commit b45906d (quorum placement: each single-server step is
ordered by the leader of the current set) in the placement model of
``test_adversary_wipes`` (``_StepModel``: stale per-sender views, per-node targets,
elections from a majority of the set's running members, heartbeats, crashes, restarts
that run nothing and keep the term, partitions).

The claim under test: at no moment do two member sets in use each have a majority of
their members running them; and once views are fresh and targets agree, the members
reach the target. Every test here failed on b45906d; the fixes: set versions kept in
a placement record beside the log (a node never joins an older set, a restarted one
resumes its set), ``may_form`` (S3) and re-version steps for members stranded by a
voided step (L1, L3).

* S1, S2: a node that runs nothing joins *any* set it sees holding it
  (``_newcomer``'s "holding" path), whoever runs it. A straggler left on an old set
  plus a restarted (S1) or removed (S2) member of that set is a majority of it, while
  the set the others moved on to has its own majority.
* S3: the same path after ``FORM``: a restarted member whose first view holds only
  nodes running nothing forms a new set with them (the model never acts on ``FORM``,
  so this one is a pure test of the shell's pipeline: resolve, quorum_change,
  ChannelPlacement with a daemon's ``min_form``).
* L1: a leader that leads its set again in a later term keeps announcing the step it
  ordered earlier; the member that followed it can never come back (the step's source
  is "back" for it) and blocks every later step (it runs a third set).
* L2: a set whose majority restarts while outside the target is never run again.
* L3: as L1 with targets that agree at the end: the stranded follower's set is closer
  to the target than the step's source, so ``_quorate_set`` never takes it back.
"""

from __future__ import annotations

from netmesh.config import PlacementStrategy
from netmesh.replication import placement as pl
from tests.replication.test_adversary_wipes import PLACEMENT_NODES, _play, _round, _StepModel

#: {0,1,2} -> {0,1,2,3} -> (a removal), ordered by leader 1 while 0 is cut off from
#: everybody (0 keeps running {0,1,2} alone: a straggler, not a majority).
_WALK_WITHOUT_0 = [
    ("partition", {0}),
    ("elect", 1),  # term 1: 1 and 2 (a majority of {0,1,2})
    ("act", 3),  # 3 learns
    ("ready",),
    ("deliver", 1, 3, 1.0),
    ("act", 1),  # 1 orders {0,1,2} -> {0,1,2,3} in term 1
    ("deliver", 2, 1, 1.0),
    ("act", 2),  # 2 follows
    ("deliver", 1, 2, 1.0),
    ("act", 1),  # 1 follows last
    ("deliver", 3, 1, 1.0),
    ("deliver", 3, 2, 1.0),
    ("act", 3),  # 3 joins: {0,1,2,3} runs with 1, 2, 3
    ("elect", 1),  # term 2 in {0,1,2,3}
    ("deliver", 1, 2, 1.0),
    ("deliver", 1, 3, 1.0),
    ("act", 1),  # 1 orders the removal in term 2
    ("deliver", 2, 1, 1.0),
    ("act", 2),
    ("deliver", 3, 1, 1.0),
    ("act", 3),
    ("deliver", 1, 2, 1.0),
    ("deliver", 1, 3, 1.0),
    ("act", 1),
]


def test_s1_a_restarted_member_joins_the_old_set_a_straggler_runs() -> None:
    """Input: {0,1,2}, target {1,2,3}. 0 is cut off; leader 1 walks {0,1,2} ->
    {0,1,2,3} -> {1,2,3} with 2 and 3 (``_WALK_WITHOUT_0``); 0 still runs {0,1,2}
    alone. Then the cut moves ({0,1} | the rest) and 1's daemon restarts: it runs
    nothing, and its first view holds only 0, which runs {0,1,2}. ``_newcomer`` finds
    one set holding 1 and joins it.

    Got: {0,1} run {0,1,2} and {2,3} run {1,2,3}: two sets with a running majority (1
    is the longest log of {0,1,2}: it wins there and commits beside the leader of
    {1,2,3}). Right: 1 must not join {0,1,2} (it last ran {1,2,3}; a set one node
    runs is no evidence that it is the current one): at most one quorate set."""
    walk = [*_WALK_WITHOUT_0, ("partition", {0, 1}), ("rejoin", 0, 1), ("rejoin", 1, 0)]
    model = _play(walk, target=(1, 2, 3))
    assert model.applied[1] == model.applied[2] == model.applied[3] == (1, 2, 3)
    assert model.applied[0] == (0, 1, 2)
    model.crash(1)
    model.restart(1)
    for j in (2, 3, 4, 5):
        model.lose(1, j)  # a new process: it has heard only 0 so far
    model.act(1)
    model.check()


def test_s2_a_removed_member_rejoins_the_old_set_a_straggler_runs() -> None:
    """Input: {0,1,2}, target {0,1,3}. 0 is cut off; leader 1 walks {0,1,2} ->
    {0,1,2,3} -> {0,1,3} with 2 and 3; 2 is removed and leaves (it does not hear 0,
    the only member whose set still holds it). No restart. Then 2 hears 0 (0 still runs
    {0,1,2}) and resolves a target that holds 2 again ({0,1,2}: targets may differ
    between nodes; in-process Redex drops a lost peer's candidacy).

    Got: 2 runs nothing, its target holds it, 0's set holds it: it joins {0,1,2}, and
    {0,2} run {0,1,2} while {1,3} run {0,1,3}. Right: at most one quorate set (2 was
    removed by a later step than the one that made {0,1,2}). Random schedules find the
    same through a leader that moved early (``_follow``'s second clause) leaving two
    stragglers on a 4-set, joined by a member removed later."""
    ops = [
        *_WALK_WITHOUT_0,
        ("deliver", 2, 1, 1.0),
        ("deliver", 2, 3, 1.0),
        ("act", 2),  # removed: leaves
        ("rejoin", 2, 0),
        ("rejoin", 0, 2),
        ("target_some", {2}, {0, 1, 2}),
    ]
    model = _play(ops, target=(0, 1, 3))
    assert model.applied[2] is None
    assert model.applied[1] == model.applied[3] == (0, 1, 3)
    model.act(2)
    model.check()


def test_s3_a_restarted_member_forms_a_new_set_from_a_partial_first_view() -> None:
    """Input (node daemons: ``form_majority``, ``retain``; factor 3, standard
    placement): 0..4 are candidates, {0,1,2} runs. The network splits {0,2} | {1,3,4}
    and the daemons of 1 and 3 restart: each runs nothing and has heard only the other
    and 4 (4 runs nothing; retained announcements are only those a process heard). 1
    resolves {1,3,4}, sees nobody running: ``quorum_change`` says FORM and
    ``ChannelPlacement`` forms the full set at once; 3 then joins it (it holds 3).

    Got: {1,3} run {1,3,4} while {0,2} run {0,1,2}. Right: a node that ran the channel
    (1 has its log and term) never forms a new set; FORM is for a channel nobody ever
    ran, known from every configured peer, not from the first announcements heard."""
    std = PlacementStrategy.standard()

    def ann(n: int, members: tuple[int, ...] | None = None) -> pl.Announcement:
        runs = {"c": members} if members is not None else {}
        return pl.Announcement(n, 1, 1, channels=frozenset({"c"}), members=pl.sorted_members(runs))

    old = (0, 1, 2)
    running: dict[int, tuple[int, ...]] = {0: old, 2: old}  # the other side of the cut
    # node 1, restarted: it hears 3 (restarted too) and 4
    view1 = [ann(3), ann(4)]
    target1 = pl.resolve(std, 3, "c", [ann(1), *view1])
    out1 = pl.quorum_change(1, None, target1, {a.node_id: None for a in view1})
    assert out1 == pl.FORM
    # the shell forms only when ``may_form``: 1 ran the channel (it resumes {0,1,2})
    configured = {0, 2, 3, 4}
    heard = {a.node_id for a in view1}
    if pl.may_form(True, configured, heard, 3):
        cp = pl.ChannelPlacement(1, 3, settle_window=1.0, min_form=2)
        formed = cp.update(target1, 0.0)
        if isinstance(formed, pl.Change) and formed.members is not None:
            running[1] = formed.members
    # nor would a node that never ran it, from that partial first view: 0 and 2 are
    # unheard, a majority of factor 3 (they could run a set); one unheard is fine
    assert not pl.may_form(False, configured, heard, 3)
    assert pl.may_form(False, configured, {0, 3, 4}, 3) and pl.may_form(False, (), heard, 3)
    # node 3, restarted: it hears 1 (now running what it formed) and 4
    view3 = {1: running.get(1), 4: None}
    target3 = pl.resolve(std, 3, "c", [ann(3), ann(1, running.get(1)), ann(4)])
    out3 = pl.quorum_change(3, None, target3, view3)
    if isinstance(out3, pl.Change) and out3.members is not None:
        running[3] = out3.members
    by_set: dict[tuple[int, ...], set[int]] = {}
    for n, m in running.items():
        by_set.setdefault(m, set()).add(n)
    quorate = [m for m, r in by_set.items() if len(r & set(m)) >= len(m) // 2 + 1]
    assert len(quorate) <= 1, f"sets with a running majority at once: {by_set}"


def test_l1_a_stale_order_of_a_releading_leader_strands_its_first_follower() -> None:
    """Input: {0,1,2}, leader 0 (term 1). The target drops 2 for a moment ({0,1}: 0
    lost 2's candidacy, say); 0 orders {0,1,2} -> {0,1} in term 1 and 1 follows. Before
    0 moves, 0 and 2 elect again in {0,1,2} (term 2, leader 0: 0 had lost its lease)
    and the target is {0,1,2} again everywhere. Views fresh from then on.

    Got: 0 still announces its term-1 step (``ch.step`` is kept while 0 runs the
    step's source), so for 1 the set {0,1,2} is the set its own was ordered from
    (``_quorate_set``'s ``back``): 1 runs {0,1} for ever. And it blocks the leader
    for good: with the target {0,1,2,3}, 0 never orders the addition (1, a member of
    both sets, runs a third one). Right: 1 returns to {0,1,2} (the step is void once
    its leader leads a later term of the source), then 3 is added."""
    ops = [
        ("elect", 0),
        ("target", {0, 1}),
        ("act", 0),  # orders {0,1,2} -> {0,1} in term 1
        ("deliver", 1, 0, 1.0),
        ("act", 1),  # follows
        ("target", {0, 1, 2}),
        ("elect", 0),  # term 2 in {0,1,2}: 0 and 2
    ]
    model = _play(ops)
    assert model.applied[1] == (0, 1) and model.applied[0] == model.applied[2] == (0, 1, 2)
    for _ in range(40):
        _round(model)
    stuck = {n: model.applied[n] for n in PLACEMENT_NODES}
    model.target = (0, 1, 2, 3)
    for _ in range(40):
        _round(model)
    assert (stuck[1], model.applied[3]) == ((0, 1, 2), (0, 1, 2, 3))


def test_l2_a_set_whose_majority_restarts_outside_the_target_is_never_run_again() -> None:
    """Input: {2,3,4} runs; the target becomes {0,1,2} (candidates 0 and 1 appeared:
    lower ids) and, before any step, the daemons of 3 and 4 restart (a host reboot;
    daemons restart to read a new peer list). Views fresh, every node up.

    Got: 3 and 4 run nothing and are outside the target, so they stay Idle; 2 alone
    cannot be elected in {2,3,4}, so nobody orders a step; 0 learns and waits for
    ever. Right: the members reach {0,1,2} (3 and 4 resume {2,3,4}, which a majority
    of it can then run: a restarted member must know the set it ran)."""
    model = _StepModel((2, 3, 4))
    model.target = (0, 1, 2)
    model.crash(3)
    model.crash(4)
    model.restart(3)
    model.restart(4)
    for _ in range(40):
        _round(model)
    want = {n: ((0, 1, 2) if n in (0, 1, 2) else None) for n in PLACEMENT_NODES}
    assert {n: model.applied[n] for n in PLACEMENT_NODES} == want


def test_l3_a_follower_of_a_voided_step_that_is_closer_to_the_target_blocks_for_good() -> None:
    """Input: {0,1,2,3}, leader 0 (term 1), target {0,1,2}: 0 orders the removal of 3
    and 1 follows; 0, 2 and 3 elect 0 again in {0,1,2,3} (term 2) before 0 moves, and
    the target becomes {0,1,2,4} everywhere. Views fresh from then on.

    Got: the new leader orders {0,1,2,3} -> {0,1,2,3,4}, but never: 1, a member of
    both sets, runs a third one ({0,1,2}); 1 never returns, since {0,1,2,3} is the set
    its own was ordered from (``back``) and is not closer to the target than {0,1,2}
    (``_quorate_set``). Withdrawing the void step alone does not help (the distance
    rule still holds 1). Right: the members reach {0,1,2,4}."""
    ops = [
        ("elect", 0),
        ("target", {0, 1, 2}),
        ("act", 0),  # orders {0,1,2,3} -> {0,1,2} in term 1
        ("deliver", 1, 0, 1.0),
        ("act", 1),  # follows
        ("elect", 0),  # term 2 in {0,1,2,3}: 0, 2 and 3
        ("target", {0, 1, 2, 4}),
    ]
    model = _play(ops, first=(0, 1, 2, 3))
    assert model.applied[1] == (0, 1, 2)
    for _ in range(40):
        _round(model)
    want = {n: ((0, 1, 2, 4) if n in (0, 1, 2, 4) else None) for n in PLACEMENT_NODES}
    assert {n: model.applied[n] for n in PLACEMENT_NODES} == want

"""Placement resolution, announcements, joining and the announce rate limit (pure:
netmesh.replication.placement; issue 13 §4)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.config import MeshNodeConfig, PlacementStrategy, ReplicationConfig
from netmesh.errors import ConfigError, DecodeError, LogCorrupt
from netmesh.replication.placement import (
    FORM,
    LEARN,
    AnnounceLimiter,
    Announcement,
    Change,
    ChannelPlacement,
    Lead,
    LearnChunk,
    LearnRequest,
    Step,
    decode,
    decode_learn,
    decode_version,
    encode,
    encode_learn,
    encode_version,
    next_step,
    quorum_change,
    resolve,
    resolve_ids,
    sorted_members,
)

STD = PlacementStrategy.standard()
ids = st.integers(min_value=1, max_value=(1 << 64) - 1)


def ann(node: int, *channels: str, chains: tuple[str, ...] = (), version: int = 1) -> Announcement:
    return Announcement(node, 7, version, frozenset(channels), frozenset(chains))


# -- resolution ---------------------------------------------------------------------


def test_standard_takes_the_factor_lowest_ids_among_the_openers() -> None:
    anns = [ann(30, "ch"), ann(10, "ch"), ann(20, "ch"), ann(5, "other")]
    assert resolve(STD, 2, "ch", anns) == (10, 20)
    assert resolve(STD, 3, "ch", anns) == (10, 20, 30)
    assert resolve(STD, 5, "ch", anns) == (10, 20, 30)  # fewer candidates than factor
    assert resolve(STD, 2, "nobody", anns) == ()
    assert resolve_ids(STD, 2, [30, 10, 20]) == (10, 20)


@given(st.sets(ids, min_size=1, max_size=20), st.integers(1, 16), st.randoms())
def test_standard_is_the_same_set_whatever_the_order_of_the_view(
    opened: set[int], factor: int, rnd: object
) -> None:
    anns = [ann(n, "ch") for n in opened]
    view = list(anns)
    rnd.shuffle(view)  # type: ignore[attr-defined]
    got = resolve(STD, factor, "ch", view)
    assert got == resolve(STD, factor, "ch", anns) == tuple(sorted(opened)[:factor])
    assert len(got) == min(factor, len(opened))


def test_non_openers_are_never_members() -> None:
    anns = [ann(1), ann(2, "ch"), ann(3, "ch")]  # node 1 has the lowest id, no channel
    assert resolve(STD, 2, "ch", anns) == (2, 3)


def test_colocation_strict_only_holders_of_the_chain_even_below_the_factor() -> None:
    strat = PlacementStrategy.colocation_strict("chain-a")
    anns = [
        ann(1, "ch", chains=("chain-a",)),
        ann(2, "ch"),  # opened, no chain: never selected
        ann(3, "ch", chains=("chain-b", "chain-a")),
        ann(4, chains=("chain-a",)),  # the chain, but the channel is not open there
    ]
    assert resolve(strat, 3, "ch", anns) == (1, 3)
    assert resolve(strat, 1, "ch", anns) == (1,)
    assert resolve(PlacementStrategy.colocation_strict("none"), 3, "ch", anns) == ()
    assert resolve_ids(strat, 3, [1, 2, 3], {1: ["chain-a"], 3: ["chain-a"]}) == (1, 3)


def test_pinned_is_the_list_whatever_was_announced() -> None:
    assert resolve(PlacementStrategy.pinned([9, 3]), 1, "ch", [ann(1, "ch")]) == (3, 9)


def test_colocation_strict_config() -> None:
    cfg = ReplicationConfig(placement=PlacementStrategy.colocation_strict("k"))
    cfg.validate()
    assert cfg.placement.key == "k" and cfg.effective_factor() == 3
    with pytest.raises(ConfigError, match="chain key"):
        ReplicationConfig(placement=PlacementStrategy.colocation_strict("")).validate()


def test_min_announce_interval_config() -> None:
    assert MeshNodeConfig(psk=bytes(32)).min_announce_interval == 10.0
    MeshNodeConfig(psk=bytes(32), min_announce_interval=0.0).validate()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="min_announce_interval"):
            MeshNodeConfig(psk=bytes(32), min_announce_interval=bad).validate()


# -- the wire -----------------------------------------------------------------------


def test_announcement_round_trips() -> None:
    a = Announcement(
        0xDEADBEEF,
        123,
        4,
        frozenset({"a", "b/c"}),
        frozenset({"k"}),
        (("rack", "r1"),),
        sorted_members({"b/c": [3, 1, 2], "a": [7]}),
        frozenset({"a"}),
    )
    assert a.members_of("b/c") == (1, 2, 3) and a.members_of("x") is None
    assert decode(encode(a), 0xDEADBEEF) == a
    assert decode(encode(a)) == a
    assert encode(a) == encode(Announcement(**a.__dict__))  # canonical bytes
    assert Announcement(1).empty and not a.empty
    assert a.metadata_dict() == {"rack": "r1"}
    # quorum channels: the set's version and the step a leader ordered
    q = Announcement(
        5,
        1,
        2,
        members=sorted_members({"q": [1, 5]}),
        steps=(("q", Step((1, 5), 9, (1, 2, 5), 3)),),
        versions=(("q", 3),),
    )
    assert decode(encode(q), 5) == q
    assert q.version_of("q") == 3 and q.version_of("x") == 0
    assert q.step_of("q") == Step((1, 5), 9, (1, 2, 5), 3) and q.step_of("x") is None
    assert not Announcement(5, steps=q.steps).empty


@pytest.mark.parametrize(
    "body",
    [
        [4, 1, 0, 0, [], [], [], [["q", [1], -1]], [], []],
        [4, 1, 0, 0, [], [], [], [["q", [1]]], [], []],
        [4, 1, 0, 0, [], [], [], [], [], [["q", [1], 2, [1, 2]]]],
        [4, 1, 0, 0, [], [], [], [], [], [["q", [1], "t", [1, 2], 0]]],
        [3, 1, 0, 0, [], [], [], [], []],
    ],
)
def test_bad_versions_and_steps_are_decode_errors(body: list[object]) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(body))


def test_the_placement_record_round_trips_and_garbage_is_log_corrupt() -> None:
    assert decode_version(encode_version([3, 1, 3], 7)) == ((1, 3), 7)
    assert decode_version(encode_version([], 2)) == ((), 2)
    for bad in (b"", b"\xc1", msgpack.packb([2, [1], 0]), msgpack.packb([1, [1], -3])):
        with pytest.raises(LogCorrupt, match="placement"):
            decode_version(bad, "/d/placement")


def test_an_announcement_naming_another_node_is_refused() -> None:
    with pytest.raises(DecodeError, match="sent by"):
        decode(encode(ann(5, "ch")), 6)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        msgpack.packb([3, 2, 3]),
        msgpack.packb([1, 1, 0, 0, [], [], [], [], []]),  # unknown version
        msgpack.packb([3, -1, 0, 0, [], [], [], [], []]),
        msgpack.packb([3, 1, 0, 0, [3], [], [], [], []]),
        msgpack.packb([3, 1, 0, 0, [], "x", [], [], []]),
        msgpack.packb([3, 1, 0, 0, [], [], [["k"]], [], []]),
        msgpack.packb([3, 1, 0, 1.5, [], [], [], [], []]),
        msgpack.packb([3, 1, 0, 0, [], [], [], [["ch", [-1]]], []]),
        msgpack.packb([3, 1, 0, 0, [], [], [], [["ch", list(range(17))]], []]),
        msgpack.packb([3, 1, 0, 0, [], [], [], [], [1]]),
    ],
)
def test_garbage_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(body)


def test_newer_announcements_replace_older_ones() -> None:
    old = Announcement(1, incarnation=5, version=9)
    assert Announcement(1, 5, 10).newer_than(old)
    assert Announcement(1, 6, 0).newer_than(old)  # a restarted node's first one
    assert not Announcement(1, 5, 9).newer_than(old)
    assert not Announcement(1, 4, 99).newer_than(old)
    assert old.newer_than(None)


# -- joining ------------------------------------------------------------------------


def test_a_full_set_is_joined_at_once_and_left_at_once() -> None:
    cp = ChannelPlacement(self_id=2, factor=2, settle_window=1.0)
    assert cp.update((1, 2), 0.0) == Change((1, 2))
    assert cp.update((1, 2), 0.1) is None  # unchanged: nothing to do
    assert cp.update((1, 3), 0.2) == Change(None)  # displaced: Idle at once
    assert cp.applied is None
    assert cp.update((1, 3), 0.3) is None


def test_a_short_set_must_settle_before_it_is_joined() -> None:
    cp = ChannelPlacement(self_id=2, factor=3, settle_window=1.0)
    assert cp.update((2,), 0.0) == 1.0  # alone: maybe the others are not heard yet
    assert cp.update((2,), 0.5) == 1.0
    assert cp.update((1, 2), 0.6) == 1.6  # changed: the window starts again
    assert cp.update((1, 2), 1.6) == Change((1, 2))
    assert cp.update((1, 2, 3), 2.0) == Change((1, 2, 3))  # full: at once
    assert cp.update((1, 2), 2.1) == 3.1  # a member left: the short set settles first
    assert cp.update((1, 2), 3.1) == Change((1, 2))


def test_no_settle_window_joins_a_short_set_at_once() -> None:
    assert ChannelPlacement(1, 3, 0.0).update((1,), 0.0) == Change((1,))


# -- rate limit ---------------------------------------------------------------------


def test_the_limiter_sends_at_most_once_per_window_and_never_loses_the_last_change() -> None:
    lim = AnnounceLimiter(10.0)
    assert lim.due_at() is None and not lim.may_send(0.0)
    lim.changed()
    assert lim.may_send(0.0)  # the first announcement goes at once
    lim.sent(0.0)
    lim.changed()
    lim.changed()  # two changes inside the window...
    assert lim.due_at() == 10.0 and not lim.may_send(9.9)
    assert lim.may_send(10.0)  # ...go out together at its end
    lim.sent(10.0)
    assert lim.due_at() is None
    lim.changed()
    assert lim.may_send(25.0)  # a change after a quiet window goes at once


# -- single-server changes (quorum mode) ---------------------------------------------


def test_next_step_moves_one_node_at_a_time_adding_first() -> None:
    assert next_step((2, 3, 4), (1, 2, 3)) == (1, 2, 3, 4)
    assert next_step((1, 2, 3, 4), (1, 2, 3)) == (1, 2, 3)
    assert next_step((1, 2), (1, 2)) == (1, 2)
    assert next_step((5, 6), (1, 2)) == (1, 5, 6)


@given(st.sets(st.integers(1, 12), min_size=1, max_size=5), st.sets(st.integers(1, 12), max_size=5))
def test_steps_reach_the_target_and_each_differs_by_one_node(
    cur: set[int], target: set[int]
) -> None:
    step, goal = tuple(sorted(cur)), tuple(sorted(target))
    for _ in range(len(cur | target) + 1):
        nxt = next_step(step, goal)
        assert len(set(nxt) ^ set(step)) <= 1
        step = nxt
    assert step == goal or (not goal and len(step) == 1)


def test_only_the_leader_orders_a_step_and_its_members_follow_it() -> None:
    b, c, d, a = 2, 3, 4, 1  # A (lowest id) opened later: target {A, B, C}
    old, mid, new = (b, c, d), (a, b, c, d), (a, b, c)
    led_by_b = Lead(5, b)
    # a member that does not lead orders nothing and moves on nothing of its own
    assert quorum_change(c, old, new, {b: old, d: old}, lead=led_by_b) is None
    assert quorum_change(c, old, new, {b: old, d: old}) is None  # no leader known
    # the leader orders the step that adds A once C and D run the old set or that step
    order = quorum_change(b, old, new, {c: old, d: old}, lead=led_by_b)
    assert order == Step(old, 5, mid)
    assert quorum_change(b, old, new, {c: (b, c), d: old}, lead=led_by_b) is None  # C elsewhere
    # the members follow the order of their leader in their term, whatever their target
    ordered = {b: Step(old, 5, mid)}
    assert quorum_change(c, old, old, {b: old, d: old}, lead=led_by_b, steps=ordered) == Change(mid)
    # not an order of another term, nor of a node that is not their leader
    assert quorum_change(c, old, new, {b: old}, lead=Lead(6, b), steps=ordered) is None
    assert quorum_change(c, old, new, {b: old}, lead=Lead(5, d), steps=ordered) is None
    # the leader follows its own order last, once a majority of its set (2 of 3) runs it
    assert quorum_change(b, old, new, {c: old, d: old}, lead=led_by_b, steps=ordered) is None
    following = quorum_change(
        b, old, new, {c: mid, d: old}, lead=led_by_b, steps=ordered, versions={c: 1}
    )
    assert following == Change(mid) and following.version == 1
    # (a member on the step's set counts only at the step's version: one more)
    assert quorum_change(b, old, new, {c: mid, d: old}, lead=led_by_b, steps=ordered) is None
    # A joins the step that adds it once a member's set holds it
    assert quorum_change(a, None, new, {b: old, c: old, d: old}) is None
    assert quorum_change(a, None, new, {b: old, c: mid, d: old}) == Change(mid)
    # the leader of mid orders the removal of D; D leaves once no running member holds it
    removal = {c: Step(mid, 9, new)}
    led_by_c = Lead(9, c)
    assert quorum_change(c, mid, new, {a: mid, b: mid, d: mid}, lead=led_by_c) == Step(mid, 9, new)
    assert quorum_change(b, mid, new, {a: mid, c: mid}, lead=led_by_c, steps=removal) == Change(new)
    assert (
        quorum_change(d, mid, new, {a: new, b: new, c: mid}, lead=led_by_c, steps=removal) is None
    )
    assert quorum_change(d, mid, new, {a: new, b: new, c: new}, lead=led_by_c, steps=removal) == (
        Change(None)
    )
    assert quorum_change(b, new, new, {a: new, c: new}, lead=Lead(11, b)) is None
    # nobody runs it yet: form the first set
    assert quorum_change(b, None, new, {a: None}) == FORM
    assert quorum_change(d, None, new, {}) is None  # not selected


def test_a_new_member_learns_before_the_leader_orders_its_addition() -> None:
    b, c, d, a = 2, 3, 4, 1
    old, mid, new = (b, c, d), (a, b, c, d), (a, b, c)
    lead = Lead(3, b)
    # A's turn to be added: it learns first (the leader waits for its "ready")
    assert quorum_change(a, None, new, {b: old, c: old, d: old}, ready=set()) == LEARN
    assert quorum_change(b, old, new, {c: old, d: old}, ready=set(), lead=lead) is None
    assert quorum_change(b, old, new, {c: old, d: old}, ready={a}, lead=lead) == Step(old, 3, mid)
    # ready, A waits until the members' sets hold it, then joins theirs
    assert quorum_change(a, None, new, {b: old, c: old, d: old}, ready={a}) is None
    assert quorum_change(a, None, new, {b: mid, c: old, d: old}, ready=set()) == Change(mid)
    # a removal needs no learner
    assert quorum_change(b, mid, new, {a: mid, c: mid, d: mid}, ready=set(), lead=lead) == Step(
        mid, 3, new
    )


def test_learner_messages_round_trip() -> None:
    req = LearnRequest("orders", 42)
    assert decode_learn(encode_learn(req)) == req
    chunk = LearnChunk("orders", 42, 50, ((7, (b"a", b"b")), (9, (b"c",))))
    assert decode_learn(encode_learn(chunk)) == chunk
    assert decode_learn(encode_learn(LearnChunk("o", 5, 5))) == LearnChunk("o", 5, 5)
    for bad in (
        b"\xc1",
        msgpack.packb([1, 0, "o"]),
        msgpack.packb([1, 0, 5, 1]),
        msgpack.packb([1, 1, "o", 0, 1, [[1, ["str"]]]]),
        msgpack.packb([1, 2, "o", 0]),
        msgpack.packb([2, 0, "o", 0]),
    ):
        with pytest.raises(DecodeError):
            decode_learn(bad)


def test_the_leader_orders_only_once_a_majority_of_its_set_is_heard() -> None:
    """Adversary's input (placement.py's step rule skipped members not heard from):
    A runs {A, B, C} and hears nobody; the target adds D. Before, A took the step to
    {A, B, C, D} and then {A, B, D} with D alone, while B and C (unheard, still on
    {A, B, C}) are a majority of that set: two disjoint majorities. Now A, even as the
    leader, orders only once a majority of its set is known to run it; one silent
    member (down) does not block it."""
    a, b, c, d = 1, 2, 3, 4
    cur, target = (a, b, c), (a, b, d)
    step1 = next_step(cur, target)
    assert step1 == (a, b, c, d)
    lead = Lead(7, a)
    assert quorum_change(a, cur, target, {}, lead=lead) is None
    assert quorum_change(a, cur, target, {d: None}, lead=lead) is None
    assert quorum_change(a, cur, target, {b: cur}, lead=lead) == Step(cur, 7, step1)  # C down
    step2 = next_step(step1, target)
    assert step2 == (a, b, d)
    # from the 4-set, a majority (3) must be known on it or the next step
    assert quorum_change(a, step1, target, {d: step1}, lead=lead) is None
    assert quorum_change(a, step1, target, {b: step1, d: step1}, lead=lead) == Step(step1, 7, step2)


def _quorate(moves: dict[int, tuple[int, ...] | None]) -> list[tuple[int, ...]]:
    running: dict[tuple[int, ...], set[int]] = {}
    for n, m in moves.items():
        if m is not None:
            running.setdefault(m, set()).add(n)
    return [m for m, r in running.items() if len(r & set(m)) > len(m) // 2]


def test_divergent_targets_never_run_two_sets_with_disjoint_majorities() -> None:
    """The adversary's P1. The channel runs on S = {1,2,3,4}, mid-way from {2,3,4} to
    {1,2,3}; node 0 announces. Nodes 3 and 4 heard it (target {0,1,2}: they add 0),
    nodes 1 and 2 did not yet (target {1,2,3}: they remove 4). Before, 3 and 4 ran
    {0,1,2,3,4} with 0 and 1 and 2 ran {1,2,3}: two sets each run by a majority.
    Right value: at most one of the sets in use has a majority of its members
    running it, whoever leads; here every member follows its leader's one step."""
    s = (1, 2, 3, 4)
    targets = {1: (1, 2, 3), 2: (1, 2, 3), 3: (0, 1, 2), 4: (0, 1, 2)}
    for leader in s:
        lead = Lead(8, leader)
        view = {1: s, 2: s, 3: s, 4: s}
        step = quorum_change(leader, s, targets[leader], {**view, 0: None}, {0}, lead=lead)
        assert isinstance(step, Step) and step.source == s
        moves: dict[int, tuple[int, ...] | None] = {0: None, **view}
        for me, target in targets.items():
            seen = {k: m for k, m in {**view, 0: None}.items() if k != me}
            out = quorum_change(me, s, target, seen, {0}, lead=lead, steps={leader: step})
            if isinstance(out, Change):
                moves[me] = out.members
        joined = quorum_change(0, None, (0, 1, 2), moves, {0})
        if isinstance(joined, Change):
            moves[0] = joined.members
        assert len(_quorate(moves)) <= 1, (leader, moves)
        assert set(moves.values()) - {None} == {step.members} | ({s} if leader else set())


def test_a_stale_order_is_not_followed_after_a_later_election() -> None:
    """Leader 3 of S = {1,2,3,4} orders the addition of 0 in term 8; only 4 follows
    before the others lose 3 for a while. 1, 2 and 3 (a majority of S; 4 left it)
    elect 1 in term 9, and 1 orders the removal of 4 (its target). The order of term
    8 reaches 2 late: it is not followed (2 is in term 9). Right value: only the set
    of the later order ends up with a running majority; 4 leaves."""
    s, plus0, minus4 = (1, 2, 3, 4), (0, 1, 2, 3, 4), (1, 2, 3)
    old = {3: Step(s, 8, plus0)}
    moves: dict[int, tuple[int, ...] | None] = {0: None, 1: s, 2: s, 3: s, 4: s}
    out = quorum_change(4, s, (0, 1, 2), {1: s, 2: s, 3: s}, {0}, lead=Lead(8, 3), steps=old)
    assert out == Change(plus0)
    moves[4] = plus0
    moves[0] = plus0
    seen2 = {k: m for k, m in moves.items() if k != 2}
    assert quorum_change(2, s, (0, 1, 2), seen2, {0}, lead=Lead(9, 1), steps=old) is None
    new = {**old, 1: Step(s, 9, minus4)}
    for me in (2, 3):
        seen = {k: m for k, m in moves.items() if k != me}
        out = quorum_change(me, s, (0, 1, 2), seen, {0}, lead=Lead(9, 1), steps=new)
        assert out == Change(minus4), me
        moves[me] = minus4
    moves[1] = minus4
    assert _quorate(moves) == [minus4]
    # 4 and 0 are left on a set no majority runs: 4 is not in the target; 0 waits
    assert quorum_change(4, plus0, (1, 2, 3), moves, steps=new) == Change(None)


def test_a_target_change_mid_step_does_not_stick_the_placement() -> None:
    """Members 1, 2, 3 run {1,2,3,4} (they added 1 toward {1,2,3}); member 4 still runs
    {2,3,4}; node 0 appears, so the target becomes {0,1,2}. Right value: some node can
    move (here: 4 catches up to the set the others run)."""
    s, s1 = (2, 3, 4), (1, 2, 3, 4)
    state: dict[int, tuple[int, ...] | None] = {0: None, 1: s1, 2: s1, 3: s1, 4: s}
    outs = []
    for ready in (set(), {0}):
        for me, applied in state.items():
            seen = {k: m for k, m in state.items() if k != me}
            outs.append(quorum_change(me, applied, (0, 1, 2), seen, ready))
    assert any(o is not None for o in outs), "no node can ever move"
    # the one that can: 4 joins the set a majority of its members runs
    seen4 = {k: m for k, m in state.items() if k != 4}
    assert quorum_change(4, s, (0, 1, 2), seen4, {0}) == Change(s1)


def test_the_first_member_to_take_a_step_is_not_pulled_back() -> None:
    """Seen with daemons: A took the removal step {A, B, C, D} -> {A, C, D} first; C
    and D still ran the old set (a majority of it), and the catch-up rule pulled A
    back, then everyone flapped twice. A node never joins a set of an older version
    (the old set is version 0, the step's set 1), whatever its target."""
    a, b, c, d = 1, 2, 3, 4
    old, new = (a, b, c, d), (a, c, d)
    assert quorum_change(a, new, new, {b: old, c: old, d: old}, version=1) is None
    ordered = {b: Step(old, 4, new)}
    assert quorum_change(a, new, old, {b: old, c: old, d: old}, steps=ordered, version=1) is None
    # and the others follow the order as usual
    lead = Lead(4, b)
    assert quorum_change(c, old, new, {a: new, b: old, d: old}, lead=lead, steps=ordered) == (
        Change(new)
    )

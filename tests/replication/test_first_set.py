"""The first set of a quorum channel on node daemons is chosen by Paxos
(``placement.form_vote``), so two nodes with different views can never form two sets.

The adversary's V1 (issue 13): six daemons, factor 3, node 0 (the lowest id) starts
last. Nodes 2 and 3 had not heard 0 and resolved {1,2,3}; node 1 had and resolved
{0,1,2}. Under the earlier rule (form once fewer than a majority of the factor is
unheard) each formed its own set: {2,3} ran {1,2,3} and {0,1} ran {0,1,2}, two
majorities, two leaders. Here each of those nodes only proposes its set; a set is
formed only once a majority of the six accepted it in one ballot.

Pure state machine: deterministic schedules and hypothesis-driven interleavings, with
stale and reordered views, dead proposers and changing targets.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.errors import DecodeError, LogCorrupt
from netmesh.replication import placement as pl
from netmesh.replication.placement import NO_BALLOT, FormVote, form_vote

NODES = tuple(range(6))
#: one step of a schedule: (node, view advance per node, want, live nodes)
Step = tuple[int, tuple[int, ...], tuple[int, ...] | None, frozenset[int]]
A = (1, 2, 3)  # what 2 and 3 resolved before hearing 0
B = (0, 1, 2)  # what 0 and 1 resolved


def step(
    i: int,
    votes: dict[int, FormVote],
    seen: Mapping[int, FormVote],
    want: tuple[int, ...] | None,
    live: tuple[int, ...] = NODES,
) -> tuple[int, ...] | None:
    votes[i], chosen = form_vote(i, NODES, votes[i], seen, want, live)
    return chosen


def test_v1_the_two_proposers_do_not_both_form() -> None:
    """The adversary's schedule: 2 and 3 act on a view without 0, 1 and 0 on a view
    with it, each as soon as it may; no set is chosen until a majority of all six
    accepted one, and then only one."""
    votes = {n: FormVote() for n in NODES}
    chosen: set[tuple[int, ...]] = set()
    # 2 and 3 see only each other and 1, 4, 5 (running nothing): the earlier rule let
    # them form {1,2,3} here; now 2 proposes it
    for i in (2, 3):
        c = step(i, votes, {n: votes[n] for n in (1, 2, 3, 4, 5) if n != i}, A)
        assert c is None
    # 1 hears 0 first and proposes {0,1,2} with a ballot of its own
    for i in (0, 1):
        c = step(i, votes, {n: votes[n] for n in NODES if n != i}, B)
        assert c is None
    # deliver everything, every node acting on its own target, until something is chosen
    wants = {0: B, 1: B, 2: A, 3: A, 4: None, 5: None}
    for _ in range(20):
        for i in NODES:
            c = step(i, votes, {n: votes[n] for n in NODES if n != i}, wants[i])
            if c is not None:
                chosen.add(c)
        if chosen:
            break
    assert len(chosen) == 1
    assert chosen <= {A, B}
    accepted = [v.value for v in votes.values() if v.accepted != NO_BALLOT]
    assert sum(1 for v in accepted if v == next(iter(chosen))) >= 4


def test_a_minority_never_chooses() -> None:
    """Three of six (the old rule's two-node view plus one) cannot choose a set."""
    votes = {n: FormVote() for n in NODES}
    for _ in range(10):
        for i in (1, 2, 3):
            c = step(i, votes, {n: votes[n] for n in (1, 2, 3) if n != i}, A, (1, 2, 3))
            assert c is None
    assert all(votes[n].accepted == NO_BALLOT for n in (0, 4, 5))


def test_a_later_proposer_adopts_the_set_already_accepted() -> None:
    """Paxos P2c: once {1,2,3} may have been chosen (1, 2, 3 and 4 accepted it), a
    proposer of a higher ballot whose view holds only part of that proposes {1,2,3},
    not its own {0,1,2}: it learns it from the promises."""
    votes = {n: FormVote() for n in NODES}
    for _ in range(6):  # 2's messages reach 1, 3 and 4 only; theirs reach 2 only
        step(2, votes, {n: votes[n] for n in (1, 3, 4)}, A)
        for i in (1, 3, 4):
            step(i, votes, {2: votes[2]}, None)
    assert {n for n in NODES if votes[n].value == A} == {1, 2, 3, 4}
    # 0 hears 1, 3 and 5 only (two of the acceptances: not a majority, not chosen to it)
    for _ in range(6):
        c = step(0, votes, {n: votes[n] for n in (1, 3, 5)}, B, (0, 1, 3, 5))
        assert c in (None, A)
        for i in (1, 3, 5):
            step(i, votes, {0: votes[0]}, None, (0, 1, 3, 5))
    assert votes[0].ballot > votes[2].ballot
    assert votes[0].proposal == A  # not B
    assert all(v.value in ((), A) for v in votes.values())


def test_an_acceptor_never_accepts_below_its_promise() -> None:
    votes = {n: FormVote() for n in NODES}
    step(2, votes, {}, A)  # ballot (1, 2), phase 1
    step(1, votes, {2: votes[2]}, None)
    step(0, votes, {}, B)
    step(0, votes, {}, B)
    assert votes[0].ballot == (1, 0)
    votes[0] = FormVote(votes[0].promised, NO_BALLOT, (), (5, 0), ())  # a higher ballot
    step(1, votes, {0: votes[0]}, None)
    assert votes[1].promised == (5, 0)
    # 2's phase 2 for (1, 2) arrives late: 1 promised (5, 0) and must not accept it
    late = FormVote((1, 2), (1, 2), A, (1, 2), A)
    step(1, votes, {0: votes[0], 2: late}, None)
    assert votes[1].accepted == NO_BALLOT and votes[1].value == ()


def test_a_proposer_yields_to_a_live_higher_ballot_and_replaces_a_dead_one() -> None:
    votes = {n: FormVote() for n in NODES}
    step(5, votes, {}, (3, 4, 5))
    assert votes[5].ballot == (1, 5)
    step(4, votes, {5: votes[5]}, (3, 4, 5))
    assert votes[4].ballot == NO_BALLOT and votes[4].promised == (1, 5)  # supports 5
    # 5 dies: 4 starts a higher ballot of its own
    step(4, votes, {5: votes[5]}, (3, 4, 5), live=(0, 1, 2, 3, 4))
    assert votes[4].ballot == (2, 4)


def test_a_node_that_no_longer_proposes_drops_its_ballot() -> None:
    votes = {n: FormVote() for n in NODES}
    step(1, votes, {}, A)
    assert votes[1].ballot != NO_BALLOT
    step(1, votes, {}, None)
    assert votes[1].ballot == NO_BALLOT and votes[1].proposal == ()
    assert votes[1].promised != NO_BALLOT  # its promise stands (never below it again)


# ------------------------------------------------------------------ interleavings

SETS = st.sampled_from([A, B, (0, 1, 3), (3, 4, 5), (1, 2, 4)])


@st.composite
def schedules(
    draw: st.DrawFn,
) -> list[tuple[int, tuple[int, ...], tuple[int, ...] | None, frozenset[int]]]:
    """Steps ``(node, how far it advances its view of each other node, want, live)``."""
    out = []
    for _ in range(draw(st.integers(10, 80))):
        i = draw(st.sampled_from(NODES))
        advance = tuple(draw(st.sampled_from((0, 0, 0, 1, 1, 2, 9))) for _ in NODES)
        want = draw(st.one_of(st.none(), SETS))
        live = frozenset(draw(st.sets(st.sampled_from(NODES))))
        out.append((i, advance, want, live))
    return out


@given(schedules())
@settings(max_examples=100, deadline=None)
def test_at_most_one_set_is_ever_chosen(
    sched: list[Step],
) -> None:
    """Every node sees the others' votes late, skips some and never goes back to an
    older one (announcements are ordered); targets change; proposers die and come back
    with their persisted vote. Whatever any node learns as chosen, and whatever a
    majority accepted in one ballot, is one set."""
    history: dict[int, list[FormVote]] = {n: [FormVote()] for n in NODES}
    view: dict[int, dict[int, int]] = {i: dict.fromkeys(NODES, 0) for i in NODES}
    learned: set[tuple[int, ...]] = set()
    for i, advance, want, live in sched:
        for j in NODES:
            if j != i:
                view[i][j] = min(view[i][j] + advance[j], len(history[j]) - 1)
        seen = {j: history[j][view[i][j]] for j in NODES if j != i}
        vote, chosen = form_vote(i, NODES, history[i][-1], seen, want, live | {i})
        if vote != history[i][-1]:
            history[i].append(vote)
        if chosen is not None:
            learned.add(chosen)
        assert len(learned) <= 1, learned
    # every (ballot, set) that a majority accepted at some moment is the same set
    accepted: dict[tuple[tuple[int, int], tuple[int, ...]], set[int]] = {}
    for n, hist in history.items():
        for v in hist:
            if v.accepted != NO_BALLOT:
                accepted.setdefault((v.accepted, v.value), set()).add(n)
    chosen_sets = {value for (_, value), who in accepted.items() if len(who) >= 4}
    assert len(chosen_sets | learned) <= 1
    # an acceptor's promise never goes down, nor its accepted ballot
    for hist in history.values():
        assert [v.promised for v in hist] == sorted(v.promised for v in hist)
        assert [v.accepted for v in hist] == sorted(v.accepted for v in hist)


@given(schedules(), st.sampled_from(NODES), SETS)
@settings(max_examples=60, deadline=None)
def test_once_the_views_settle_a_set_is_chosen(
    sched: list[Step],
    proposer: int,
    target: tuple[int, ...],
) -> None:
    """After any chaos, with every node live, every vote delivered and one node
    wanting to form, a set is chosen within a few rounds."""
    votes = {n: FormVote() for n in NODES}
    for i, _, want, live in sched:  # chaos with complete but arbitrary-order views
        votes[i], _ = form_vote(i, NODES, votes[i], dict(votes), want, live | {i})
    got = None
    for _ in range(8):
        for i in NODES:
            votes[i], c = form_vote(
                i, NODES, votes[i], dict(votes), target if i == proposer else None, NODES
            )
            got = got or c
        if got is not None:
            break
    assert got is not None


# ------------------------------------------------------------------ wire and record


def test_form_votes_travel_in_announcements() -> None:
    v = FormVote((3, 7), (2, 5), (1, 5, 7), (3, 7), (1, 5, 7))
    a = pl.Announcement(7, 1, 2, channels=frozenset({"c"}), forms=(("c", v),))
    back = pl.decode(pl.encode(a), 7)
    assert back.form_of("c") == v and back.form_of("d") is None
    assert back == a


@pytest.mark.parametrize(
    "bad",
    [
        [[3, 7], [2, 5], [1], [3, 7]],  # four fields
        [[3], [2, 5], [1], [3, 7], []],  # a ballot of one number
        [[3, -1], [0, 0], [], [0, 0], []],  # not a u64
        [[3, 7], [0, 0], "x", [0, 0], []],  # a set that is not a list
    ],
)
def test_a_malformed_form_vote_is_refused(bad: list[object]) -> None:
    import msgpack

    body = msgpack.unpackb(pl.encode(pl.Announcement(7)), raw=False)
    body[10] = [["c", bad]]
    with pytest.raises(DecodeError):
        pl.decode(msgpack.packb(body), 7)


def test_the_vote_record_round_trips_and_garbage_is_log_corrupt() -> None:
    v = FormVote((3, 7), (2, 5), (1, 5, 7), (3, 7), ())
    assert pl.decode_form(pl.encode_form(v)) == v
    with pytest.raises(LogCorrupt, match="placement-form"):
        pl.decode_form(b"\x93\x01\x02")

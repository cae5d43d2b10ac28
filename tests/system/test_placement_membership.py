"""A membership id on the wire (issue 13 §3): every message on a channel's stream
starts with the id of the sender's member list, and a node refuses (drops unread,
counts) messages from a node whose member list differs, so a node with another
member list gets no vote and gives none. Real MeshNodes over loopback UDP, one
asyncio loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netmesh import PlacementStrategy, RedexFileConfig, ReplicaRole, ReplicationConfig
from netmesh.replication.placement import CAPABILITY_STREAM, FORM_YIELD_S, membership_id
from tests.system.test_placement import mesh, poll, run, steady, teardown
from tests.system.test_placement import roles as roles_of

LEADER = ReplicaRole.LEADER


def quorum(members: list[int]) -> RedexFileConfig:
    return RedexFileConfig(
        replication=ReplicationConfig(
            factor=len(members),
            heartbeat_ms=100,
            ack="quorum",
            placement=PlacementStrategy.pinned(members),
        )
    )


def test_membership_id_names_the_member_list() -> None:
    assert membership_id([3, 1, 2]) == membership_id([1, 2, 3, 3])
    assert membership_id([1, 2, 3]) != membership_id([1, 2])
    assert 0 <= membership_id([7]) < 1 << 64


def test_votes_are_refused_across_member_lists() -> None:
    """B's member list is {A, B, C}, C's is {B, C}; A never opens the channel. Each
    needs the other's vote for a majority: without the membership check C (or B)
    would win with the other's vote, a leader that the other's member list does not
    agree on. With it neither leads and both count refusals; once C opens the channel
    with B's member list (and A opens it too: a fresh quorum channel of 3 elects with
    all 3 running it, the coordinator's "Lost state"), a leader is elected and
    replicates."""

    async def body() -> None:
        nodes, (ra, rb, rc) = await mesh(3)
        a, b, c = (n.node_id for n in nodes)
        name = "repl/membership"
        fb = rb.open_file(name, quorum([a, b, c]))
        rc.open_file(name, quorum([b, c]))
        roles = lambda: [r.replication_coordinator_for(name).role for r in (rb, rc)]  # noqa: E731
        refused = lambda r: r.channel_metrics(name)["membership_refused_total"]  # noqa: E731
        await poll(lambda: refused(rb) > 0 and refused(rc) > 0, 8, "refusals on both sides")
        # 20 heartbeats of campaigning on both sides: nobody gets the other's vote
        await steady(lambda: LEADER not in roles(), 2.0, "a leader across member lists")
        assert refused(rb) > 1 and refused(rc) > 1

        rc.close_file(name)
        fc = rc.open_file(name, quorum([a, b, c]))  # the same member list as B
        fa = ra.open_file(name, quorum([a, b, c]))
        files = (fa, fb, fc)
        every = lambda: [r.replication_coordinator_for(name).role for r in (ra, rb, rc)]  # noqa: E731
        await poll(lambda: LEADER in every(), 8, "a leader once the member lists agree")
        leader = files[every().index(LEADER)]
        leader.append(b"agreed")
        others = [f for f in files if f is not leader]
        await poll(lambda: all(f.next_seq == 1 for f in others), 5, "the members replicated")
        for r in (ra, rb, rc):
            r.close()

    run(body)


@pytest.mark.parametrize("persisted", [False, True], ids=["memory", "disk"])
def test_quorum_placement_changes_one_node_at_a_time_and_loses_nothing(
    persisted: bool, tmp_path: Path
) -> None:
    """Standard placement, factor 3, ack=quorum: B, C, D hold the channel; then A (the
    lowest id) opens it, so the set becomes {A, B, C}. A first catches up as a learner
    (copies the committed events from a member); only then do the members go
    {B, C, D} -> {A, B, C, D} -> {A, B, C} (add first, then remove), never straight
    across; D goes Idle; every acknowledged (committed) event is on the final set."""

    async def body() -> None:
        nodes, redexes = await mesh(4)
        order = sorted(range(4), key=lambda i: nodes[i].node_id)
        ia, ib, ic, id_ = order  # by node id
        a, b, c, d = (nodes[i].node_id for i in order)
        name = "repl/steps"
        repl = ReplicationConfig(factor=3, heartbeat_ms=100, ack="quorum")

        def cfg(i: int) -> RedexFileConfig:
            if not persisted:
                return RedexFileConfig(replication=repl)
            path = str(tmp_path / f"n{i}")
            return RedexFileConfig(path=path, fsync="batch", replication=repl)

        files = {i: redexes[i].open_file(name, cfg(i)) for i in (ib, ic, id_)}

        def leader() -> int | None:
            for i in (ia, ib, ic, id_):
                coord = redexes[i].replication_coordinator_for(name)
                if coord is not None and coord.role is LEADER:
                    return i
            return None

        await poll(lambda: leader() is not None, 8, "a leader of {B, C, D}")
        lead = leader()
        assert lead is not None
        for k in range(10):
            files[lead].append(f"acked-{k}".encode())
        coord = redexes[lead].replication_coordinator_for(name)
        await poll(lambda: coord.commit_seq >= 10, 5, "10 events committed")

        files[ia] = redexes[ia].open_file(name, cfg(ia))
        final = (a, b, c)
        await poll(
            lambda: (
                all(redexes[i].placement_members(name) == final for i in (ia, ib, ic))
                and redexes[id_].placement_members(name) is None
            ),
            10,
            "the set moved to {A, B, C}",
        )
        for i in (ib, ic):
            assert redexes[i].placement_changes(name)[-2:] == [(a, b, c, d), final]
        assert redexes[id_].placement_changes(name)[-2:] == [(a, b, c, d), None]
        await poll(lambda: leader() is not None, 8, "a leader of {A, B, C}")
        lead = leader()
        assert lead in (ia, ib, ic)
        await poll(lambda: files[ia].next_seq >= 10, 5, "A caught up")
        # A copied the 10 committed events as a learner, before the members counted it
        assert redexes[ia].placement_stats()["learner_events"] == 10
        served = sum(redexes[i].placement_stats()["learner_chunks_served"] for i in (ib, ic, id_))
        assert served >= 1
        want = [f"acked-{k}".encode() for k in range(10)]
        for i in (ia, ib, ic):
            assert [e.payload for e in files[i].read_range(0, 10)] == want
        files[lead].append(b"after")
        coord = redexes[lead].replication_coordinator_for(name)
        await poll(lambda: coord.commit_seq >= 11, 5, "the new set commits")
        for r in redexes:
            r.close()

    run(body)


def test_two_views_of_who_opened_a_quorum_channel_form_one_first_set() -> None:
    """The adversary's V1 on six real MeshNodes (loopback UDP, Noise) with the daemons'
    placement policy (every other node configured, ``form_majority``): ranks 2 and 3
    (by node id) never get the announcements of rank 0 (the lowest id; as if it had
    started after they decided), so they resolve {1,2,3} while ranks 0, 1, 4 and 5
    resolve {0,1,2}. Under the earlier rule (form once fewer than a majority of the
    factor is unheard) ranks 2 and 3 formed {1,2,3} and ranks 0 and 1 formed {0,1,2}:
    two sets each run by a majority of its members, two leaders. Now the first set is
    chosen by Paxos over the six: at every observation at most one set is run by a
    majority of its members, and one set settles, with one leader."""

    async def body() -> None:
        nodes, redexes = await mesh(6)
        rank = sorted(range(6), key=lambda i: nodes[i].node_id)
        ids = [n.node_id for n in nodes]
        for i, r in enumerate(redexes):
            r.set_placement_policy(retain=[x for x in ids if x != ids[i]], form_majority=True)
        lowest = ids[rank[0]]
        cuts = []
        for deaf in (rank[2], rank[3]):  # drop rank 0's announcements there
            placement = redexes[deaf]._placement
            assert placement is not None
            handler = placement._on_announcements

            def filtered(from_id: int, msgs: list[bytes], h: Any = handler) -> None:
                if from_id != lowest:
                    h(from_id, msgs)

            nodes[deaf].unsubscribe(CAPABILITY_STREAM, handler)
            nodes[deaf].subscribe_batch(CAPABILITY_STREAM, filtered)
            cuts.append((deaf, handler, filtered))
        name = "repl/first"
        repl = ReplicationConfig(factor=3, heartbeat_ms=100, ack="quorum")
        for r in redexes:
            r.open_file(name, RedexFileConfig(replication=repl))

        def quorate_sets() -> set[tuple[int, ...]]:
            running: dict[tuple[int, ...], int] = {}
            for r in redexes:
                m = r.placement_members(name)
                if m is not None:
                    running[m] = running.get(m, 0) + 1
            return {m for m, k in running.items() if k >= len(m) // 2 + 1}

        def one_set_led() -> bool:
            sets = quorate_sets()
            if len(sets) != 1:
                return False
            (members,) = sets
            runners = [i for i in range(6) if redexes[i].placement_members(name) == members]
            leads = [i for i in runners if roles_of(redexes, name)[i] is LEADER]
            return len(leads) == 1

        async def until(done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 20
            while not done():
                assert len(quorate_sets()) <= 1, quorate_sets()
                assert time.monotonic() < deadline, f"not {what} within 20 s"
                await asyncio.sleep(0.01)

        await until(one_set_led, "one first set led")
        await steady(lambda: len(quorate_sets()) <= 1, 1.0, "never two quorate sets")
        # the announcements get through again: one set, the three lowest ids, one leader
        for deaf, handler, filtered in cuts:
            nodes[deaf].unsubscribe(CAPABILITY_STREAM, filtered)
            nodes[deaf].subscribe_batch(CAPABILITY_STREAM, handler)
        target = tuple(sorted(ids)[:3])
        await until(lambda: one_set_led() and quorate_sets() == {target}, "the lowest three")
        await teardown(nodes, redexes)

    run(body)


def test_a_proposer_cut_off_from_the_majority_does_not_stall_the_first_set() -> None:
    """Liveness of the first-set vote under partial connectivity: A and B open the
    channel first and both propose; B's ballot outranks A's, so A, which sees it from a
    live session, yields to it. B reaches only A (its links to C, D and E are cut) and
    can never gather a majority of the five. After ``FORM_YIELD_S`` A stops waiting on
    it and runs a higher ballot with C, D and E: a set is chosen and a majority of its
    members runs it. (Whether that set can elect a leader with B in it and cut off from
    another member is the coordinator's matter: a brand-new quorum set elects once
    every member is heard, issue 10's F1.)"""

    async def body() -> None:
        nodes, redexes = await mesh(5)
        ids = [n.node_id for n in nodes]
        for i, r in enumerate(redexes):
            r.set_placement_policy(retain=[x for x in ids if x != ids[i]], form_majority=True)
        a, b = sorted((0, 1), key=lambda i: ids[i])  # b's ballots outrank a's
        for cut in (2, 3, 4):
            nodes[b].block_peer(ids[cut])
            nodes[cut].block_peer(ids[b])
        name = "repl/cutoff"
        repl = ReplicationConfig(factor=3, heartbeat_ms=100, ack="quorum")
        for i in (a, b):  # {A, B}: two of three, a set they may form once settled
            redexes[i].open_file(name, RedexFileConfig(replication=repl))

        def ballot(i: int) -> Any:
            placement = redexes[i]._placement
            assert placement is not None
            ch = placement.channels.get(name)
            return None if ch is None else ch.form.ballot

        await poll(lambda: ballot(b) not in (None, (0, 0)), 5, "B runs a ballot")
        for i in (2, 3, 4):
            redexes[i].open_file(name, RedexFileConfig(replication=repl))

        def formed() -> bool:
            running = [redexes[i].placement_members(name) for i in range(5)]
            return any(m is not None and running.count(m) >= len(m) // 2 + 1 for m in running)

        started = time.monotonic()
        # a stall without the yield limit is for good; 40 s leaves room for a loaded CI
        # machine (it timed out once at 18 s there; 3.0 s in every run alone)
        await poll(formed, 40 + FORM_YIELD_S, "a first set chosen and formed")
        print(f"\nFORM cut-off proposer: formed after {time.monotonic() - started:.2f} s")
        await teardown(nodes, redexes)

    run(body)

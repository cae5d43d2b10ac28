"""PeerIndex: one table for peers, sessions, pending initiations and addresses."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from netmesh.link.index import PeerIndex


def fixed(values: list[int]) -> Callable[[int], int]:
    it = itertools.chain(values, itertools.count(1000))
    return lambda bits: next(it)


def test_alloc_skips_zero_and_indices_in_use() -> None:
    idx: PeerIndex[str, object] = PeerIndex(fixed([0, 5, 5, 7]))
    assert idx.alloc() == 5
    assert idx.alloc() == 7  # 0 never, 5 is taken
    idx.release(5)
    assert not idx.in_use(5) and idx.in_use(7)


def test_pending_becomes_session_without_freeing_its_index() -> None:
    idx: PeerIndex[str, object] = PeerIndex(fixed([9]))
    i = idx.alloc()
    idx.add_pending(i, "p")
    assert idx.pending(i) == "p"
    idx.remove_pending(i, release=False)
    s = object()
    idx.add_session(i, "p", s)
    assert idx.pending(i) is None and idx.session(i) == ("p", s) and idx.in_use(i)


def test_remove_session_only_if_it_still_names_that_session() -> None:
    idx: PeerIndex[str, object] = PeerIndex(fixed([3]))
    old, new = object(), object()
    idx.add_session(3, "p", old)
    idx.add_session(3, "p", new)  # index reused
    assert idx.remove_session(3, old) is False and idx.session(3) == ("p", new)
    assert idx.remove_session(3, new) is True
    assert idx.session(3) is None and not idx.in_use(3) and idx.session_count() == 0


def test_peers_and_addresses_follow_rebind_and_remove() -> None:
    idx: PeerIndex[str, object] = PeerIndex(fixed([]))
    idx.add_peer(1, "p1", ("h", 1))
    idx.add_peer(2, "p2")
    with pytest.raises(LookupError):
        idx.add_peer(1, "again")
    assert idx.at(("h", 1)) == 1 and idx.peer(2) == "p2" and len(idx) == 2
    idx.rebind(1, ("h", 1), ("h", 9))
    assert idx.at(("h", 1)) is None and idx.at(("h", 9)) == 1
    idx.rebind(2, None, ("h", 9))  # another peer now owns that address
    idx.rebind(1, ("h", 9), None)  # ...so the old owner's move does not erase it
    assert idx.at(("h", 9)) == 2
    assert idx.remove_peer(1, "not p1") is False and idx.peer(1) == "p1"
    assert idx.remove_peer(1, "p1") is True and idx.peer(1) is None
    # iterating is a snapshot: removal while iterating is safe
    for p in idx.peers():
        idx.remove_peer(2, p, ("h", 9))
    assert len(idx) == 0 and idx.at(("h", 9)) is None and idx.node_ids() == []

"""RFC 6479 replay window against a set-based model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.link.replay import WINDOW_SIZE, ReplayWindow


class Model:
    def __init__(self, limit: int) -> None:
        self.seen: set[int] = set()
        self.greatest = 0
        self.limit = limit

    def check_and_update(self, c: int) -> bool:
        if c >= self.limit or c in self.seen or self.greatest - c > WINDOW_SIZE:
            return False
        self.seen.add(c)
        self.greatest = max(self.greatest, c)
        return True


def test_window_is_at_least_2048() -> None:
    assert WINDOW_SIZE >= 2048


def test_basic_cases() -> None:
    w = ReplayWindow()
    assert w.check_and_update(0)
    assert not w.check_and_update(0)
    assert w.check_and_update(5)
    assert w.check_and_update(3)
    assert not w.check_and_update(3)
    assert w.check_and_update(10_000)
    assert not w.check_and_update(10_000 - WINDOW_SIZE - 1)
    assert w.check_and_update(10_000 - WINDOW_SIZE)
    assert not w.check_and_update((1 << 64) - 1)  # the limit itself is refused
    assert w.check_and_update((1 << 64) - 2)
    assert not w.check_and_update(10_000 + 1)  # now far behind


counters = st.one_of(st.integers(0, 300), st.integers(0, 20_000), st.integers(0, (1 << 64) - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(counters, max_size=400), st.integers(1, 1 << 64))
def test_matches_set_model(seq: list[int], limit: int) -> None:
    w, m = ReplayWindow(limit), Model(limit)
    for c in seq:
        assert w.check_and_update(c) == m.check_and_update(c), c


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=2000))
def test_dense_sequences_match_model(seq: list[int]) -> None:
    w, m = ReplayWindow(), Model((1 << 64) - 1)
    for c in seq:
        assert w.check_and_update(c) == m.check_and_update(c), c


def test_in_order_stream_all_accepted_once() -> None:
    w = ReplayWindow()
    assert all(w.check_and_update(i) for i in range(20_000))
    assert not any(w.check_and_update(i) for i in range(19_000, 20_000))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * WINDOW_SIZE), max_size=200))
def test_check_predicts_check_and_update_without_changing_anything(counters: list[int]) -> None:
    w = ReplayWindow(limit=2 * WINDOW_SIZE)
    for c in counters:
        before = (list(w._ring), w.greatest)
        predicted = w.check(c)
        assert (list(w._ring), w.greatest) == before
        assert w.check(c) == predicted  # still read-only
        assert w.check_and_update(c) == predicted
    assert not w.check(-1) and not w.check(2 * WINDOW_SIZE)

"""Token bucket: starts full, refills from `now`, oversize costs drain a full bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.errors import LocalProtocolError
from netmesh.ratelimit import TokenBucket
from netmesh.replication.budget import replication_budget


def test_starts_full_and_denies_when_empty() -> None:
    b = TokenBucket(1000, now=0.0)
    assert b.try_consume(600, 0.0)
    assert not b.try_consume(600, 0.0)
    assert b.try_consume(400, 0.0)
    assert not b.try_consume(1, 0.0)


def test_refills_with_time_capped_at_capacity() -> None:
    b = TokenBucket(1000, now=10.0)
    assert b.try_consume(1000, 10.0)
    assert not b.try_consume(500, 10.4)
    assert b.try_consume(500, 10.5)
    b.refill(1000.0)
    assert b.available == 1000


def test_time_going_backwards_adds_nothing() -> None:
    b = TokenBucket(1000, now=5.0)
    b.try_consume(1000, 5.0)
    b.refill(1.0)
    assert b.available == 0


def test_oversize_cost_only_when_full() -> None:
    b = TokenBucket(100, now=0.0)
    assert b.try_consume(5000, 0.0)
    assert b.available == 0
    assert not b.try_consume(5000, 0.5)
    assert b.try_consume(5000, 1.0)


def test_zero_cost_always_admitted_and_refund() -> None:
    b = TokenBucket(10, now=0.0)
    assert b.try_consume(10, 0.0)
    assert b.try_consume(0, 0.0)
    b.refund(7)
    assert b.available == 7
    b.refund(100)
    assert b.available == 10


def test_for_replication_uses_fraction_of_nic_peak() -> None:
    b = replication_budget(0.5, 125_000_000, now=0.0)
    assert b.rate == b.capacity == 62_500_000


def test_rate_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError):
        TokenBucket(0, now=0.0)


@given(st.lists(st.tuples(st.floats(0, 2), st.integers(0, 3000)), max_size=50))
def test_never_admits_more_than_capacity_plus_refill(ops: list[tuple[float, int]]) -> None:
    b = TokenBucket(1000, now=0.0)
    now = admitted = 0.0
    for dt, cost in ops:
        now += dt
        if cost <= 1000 and b.try_consume(cost, now):
            admitted += cost
        assert 0 <= b.available <= 1000
    assert admitted <= 1000 + now * 1000 + 1e-6


def test_token_bucket_rate_and_burst() -> None:
    b = TokenBucket(rate=10.0, now=0.0, capacity=3.0)
    assert [b.try_consume(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not b.try_consume(1, 0.05)  # half a token
    assert b.try_consume(1, 0.1)
    assert not b.try_consume(1, 0.1)
    assert [b.try_consume(1, 100.0) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]  # capped at burst
    assert not b.try_consume(1, 99.0)  # a clock going backwards refills nothing

"""Handshake admission (HandshakeGate) and cookie replies, pure: explicit clocks, no sockets."""

from __future__ import annotations

import pytest

from netmesh.errors import AuthenticationError
from netmesh.link import codec
from netmesh.link.cookie import (
    SECRET_LIFETIME,
    HandshakeGate,
    Verdict,
    cookie_key,
    make_cookie,
    open_cookie,
    seal_cookie,
)
from netmesh.link.handshake import INITIATION_LEN, mac1_key

PSK, RESPONDER = b"p" * 32, b"r" * 32
MAC = mac1_key(PSK, RESPONDER)
NOISE = bytes(range(INITIATION_LEN))
S1, S2, S3 = b"1" * 32, b"2" * 32, b"3" * 32
A, B = ("10.0.0.1", 4000), ("10.0.0.2", 4000)


def init(cookie: bytes | None = None, index: int = 7) -> bytes:
    return codec.encode_initiation(index, NOISE, MAC, cookie)


def test_one_source_cannot_spend_the_node_budget() -> None:
    g = HandshakeGate(rate=100, per_source_rate=20, now=0.0, secret=S1)
    verdicts = [g.admit(init(), A, 0.0) for _ in range(50)]
    assert verdicts == [Verdict.ACCEPT] * 20 + [Verdict.COOKIE] * 30
    assert not g.under_load(0.0)
    assert g.admit(init(), B, 0.0) is Verdict.ACCEPT  # another source still gets DH
    later = [g.admit(init(), A, 0.5) for _ in range(11)]  # refilled at 20/s: 10 back
    assert later == [Verdict.ACCEPT] * 10 + [Verdict.COOKIE]


def test_many_sources_put_the_node_under_load_and_a_cookie_gets_through() -> None:
    g = HandshakeGate(rate=100, per_source_rate=20, now=0.0, secret=S1)
    for i in range(100):
        assert g.admit(init(), (f"10.1.0.{i}", 1), 0.0) is Verdict.ACCEPT
    assert g.under_load(0.0)
    assert g.admit(init(), A, 0.0) is Verdict.COOKIE  # a new source, no cookie
    proven = init(g.cookie_for(A))
    assert g.admit(proven, A, 0.0) is Verdict.ACCEPT  # mac2 proves A's address
    # the cookie is bound to the address: another port or host is not proven
    assert g.admit(proven, (A[0], A[1] + 1), 0.0) is Verdict.COOKIE
    assert g.admit(proven, B, 0.0) is Verdict.COOKIE
    assert g.admit(init(b"x" * 16), A, 0.0) is Verdict.COOKIE  # a made-up cookie


def test_proven_traffic_is_held_to_its_per_source_rate() -> None:
    g = HandshakeGate(rate=100, per_source_rate=20, now=0.0, secret=S1)
    proven = init(g.cookie_for(A))
    verdicts = [g.admit(proven, A, 0.0) for _ in range(25)]
    assert verdicts == [Verdict.ACCEPT] * 20 + [Verdict.RATE_LIMITED] * 5
    assert g.admit(init(), A, 0.0) is Verdict.ACCEPT  # unproven tokens are counted apart
    assert g.admit(proven, A, 0.1) is Verdict.ACCEPT  # 2 tokens back after 0.1 s


def test_cookies_survive_one_secret_rotation_not_two() -> None:
    g = HandshakeGate(rate=1, per_source_rate=20, now=0.0, secret=S1)
    g.admit(init(), B, 0.0)  # node budget spent: everything unproven gets a cookie
    old = init(g.cookie_for(A))
    assert not g.secret_due(SECRET_LIFETIME - 0.1) and g.secret_due(SECRET_LIFETIME)
    g.rotate(SECRET_LIFETIME, S2)
    assert g.admit(old, A, SECRET_LIFETIME) is Verdict.ACCEPT
    assert g.cookie_for(A) != make_cookie(S1, A)
    assert g.proven(old, A)
    g.rotate(2 * SECRET_LIFETIME, S3)
    assert not g.proven(old, A)
    g.admit(init(), B, 2 * SECRET_LIFETIME)  # spend the refilled node token again
    assert g.admit(old, A, 2 * SECRET_LIFETIME) is Verdict.COOKIE


def test_source_tables_are_bounded() -> None:
    g = HandshakeGate(rate=10_000, per_source_rate=20, now=0.0, secret=S1, max_sources=8)
    for i in range(100):
        g.admit(init(), (f"10.2.0.{i}", 1), 0.0)
        g.admit(init(g.cookie_for((f"10.3.0.{i}", 1))), (f"10.3.0.{i}", 1), 0.0)
    assert g.sources() == 16


def test_cookie_reply_opens_only_for_its_initiation_and_psk() -> None:
    key = cookie_key(PSK, RESPONDER)
    assert key != cookie_key(b"q" * 32, RESPONDER) and key != cookie_key(PSK, b"s" * 32)
    mac1 = codec.mac1_of(init(index=1))
    sealed = seal_cookie(key, bytes(12), b"c" * 16, mac1)
    assert open_cookie(key, bytes(12), sealed, mac1) == b"c" * 16
    for bad_key, bad_mac1 in (
        (key, codec.mac1_of(init(index=2))),  # answers another initiation
        (cookie_key(b"q" * 32, RESPONDER), mac1),  # no PSK
    ):
        with pytest.raises(AuthenticationError):
            open_cookie(bad_key, bytes(12), sealed, bad_mac1)

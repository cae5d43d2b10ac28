"""Transport sessions: round trips, tampering, replay, limits."""

from __future__ import annotations

import hashlib

import pytest

from netmesh.errors import AuthenticationError, Replayed
from netmesh.link import codec
from netmesh.link.handshake import Initiator, Responder, encode_timestamp, public_key_of
from netmesh.link.replay import WINDOW_SIZE
from netmesh.link.session import Session, SessionExpired, SessionLimits

NOW = 100.0  # the sessions' creation time in pair()


def key(label: str) -> bytes:
    return hashlib.blake2s(label.encode()).digest()


def pair(limits: SessionLimits | None = None) -> tuple[Session, Session]:
    init = Initiator(key("si"), public_key_of(key("sr")), key("psk"), key("ei"))
    resp = Responder(key("sr"), key("psk"))
    resp.consume_initiation(init.create_initiation(encode_timestamp(1)))
    m2, kr = resp.create_response(key("er"))
    ki = init.consume_response(m2)
    a = Session(ki, local_index=11, remote_index=22, created=100.0, limits=limits)
    b = Session(kr, local_index=22, remote_index=11, created=100.0, limits=limits)
    return a, b


def receive(s: Session, datagram: bytes, now: float = NOW) -> bytes:
    hdr = codec.decode(datagram)
    assert isinstance(hdr, codec.DataHeader)
    assert hdr.receiver_index == s.local_index
    return s.open(datagram, hdr.counter, now)


def test_round_trip_both_directions() -> None:
    a, b = pair()
    assert a.confirmed and not b.confirmed
    for i in range(50):
        body = bytes([i]) * i
        assert receive(b, a.seal(body, NOW)) == body
    assert b.confirmed
    assert receive(a, b.seal(b"back", NOW)) == b"back"
    assert a.send_counter == 50


def test_counter_is_in_header_and_increments() -> None:
    a, _ = pair()
    counters = [codec.decode(a.seal(b"x", NOW)).counter for _ in range(3)]  # type: ignore[union-attr]
    assert counters == [0, 1, 2]


@pytest.mark.parametrize("pos", [0 + 4, 8, 15, 16, 20, -1])
def test_tampering_is_detected(pos: int) -> None:
    a, b = pair()
    d = bytearray(a.seal(b"payload bytes", NOW))
    d[pos] ^= 1
    with pytest.raises(AuthenticationError):
        b.open(bytes(d), codec.DATA_HEADER.unpack_from(d)[4], NOW)
    assert not b.confirmed
    # the window was not touched: the genuine packet still opens
    good = a.seal(b"ok", NOW)
    assert receive(b, good) == b"ok"


def test_replay_is_rejected_and_reordering_within_window_accepted() -> None:
    a, b = pair()
    d0, d1, d2 = a.seal(b"0", NOW), a.seal(b"1", NOW), a.seal(b"2", NOW)
    assert receive(b, d2) == b"2"
    assert receive(b, d0) == b"0"
    with pytest.raises(Replayed):
        receive(b, d0)
    assert receive(b, d1) == b"1"
    with pytest.raises(Replayed):
        receive(b, d2)


def test_wrong_direction_fails() -> None:
    a, _ = pair()
    d = a.seal(b"x", NOW)
    with pytest.raises(AuthenticationError):
        a.open(d, 0, NOW)


def test_rekey_and_reject_limits() -> None:
    limits = SessionLimits(
        rekey_after_messages=3,
        reject_after_messages=5,
        rekey_after_time=10.0,
        reject_after_time=20.0,
    )
    a, b = pair(limits)
    assert not a.needs_rekey(100.0)
    assert a.needs_rekey(110.0) and not a.expired(110.0)
    assert a.expired(120.0)
    for _ in range(3):
        a.seal(b"", NOW)
    assert a.needs_rekey(100.0)
    a.seal(b"", NOW)
    last = a.seal(b"", NOW)
    assert a.expired(100.0)
    with pytest.raises(SessionExpired):
        a.seal(b"", NOW)
    assert receive(b, last) == b""


def test_reject_after_time_refuses_open_and_seal() -> None:
    limits = SessionLimits(rekey_after_time=10.0, reject_after_time=20.0)
    a, b = pair(limits)
    early = a.seal(b"early", 119.9)
    late_sealed = a.seal(b"late", 119.9)
    assert receive(b, early, 119.99) == b"early"
    with pytest.raises(SessionExpired):  # the boundary itself is expired
        a.seal(b"x", 120.0)
    with pytest.raises(SessionExpired):
        a.seal(b"x", 500.0)
    with pytest.raises(SessionExpired):  # genuine, fresh counter, but too old a session
        receive(b, late_sealed, 120.0)
    with pytest.raises(SessionExpired):
        receive(b, late_sealed, 1e9)
    # refusing did not touch the replay window: the same datagram opens in time
    assert receive(b, late_sealed, 119.99) == b"late"
    assert a.send_counter == 2


def test_expired_open_does_not_confirm_a_responder_session() -> None:
    limits = SessionLimits(rekey_after_time=10.0, reject_after_time=20.0)
    a, b = pair(limits)
    d = a.seal(b"confirm", NOW)
    with pytest.raises(SessionExpired):
        receive(b, d, NOW + 20.0)
    assert not b.confirmed


class _CountingAead:
    """Stands in for a session's ChaCha20Poly1305 opener and counts decrypts."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0

    def decrypt(self, nonce: bytes, data: bytes, ad: bytes) -> bytes:
        self.calls += 1
        return self.inner.decrypt(nonce, data, ad)  # type: ignore[attr-defined]


def test_replay_is_refused_before_decrypting() -> None:
    a, b = pair()
    counting = _CountingAead(b._open_aead)
    b._open_aead = counting
    d0, d1 = a.seal(b"zero", NOW), a.seal(b"one", NOW)
    assert receive(b, d1) == b"one" and receive(b, d0) == b"zero"
    assert counting.calls == 2
    for d in (d0, d1):
        with pytest.raises(Replayed):
            receive(b, d)
    # a replayed counter with garbage ciphertext: still Replayed, never decrypted
    forged = d1[:16] + bytes(len(d1) - 16)
    with pytest.raises(Replayed):
        receive(b, forged)
    # a counter too old for the window, likewise
    old = codec.encode_data_header(22, 0) + bytes(20)
    for _ in range(WINDOW_SIZE + 2):
        a.seal(b"", NOW)
    assert receive(b, a.seal(b"far", NOW)) == b"far"
    calls = counting.calls
    with pytest.raises(Replayed):
        receive(b, old)
    assert counting.calls == calls == 3


def test_forgery_on_a_fresh_counter_leaves_the_window_alone() -> None:
    a, b = pair()
    d = a.seal(b"x", NOW)
    bad = bytearray(d)
    bad[-1] ^= 1
    with pytest.raises(AuthenticationError):
        receive(b, bytes(bad))
    assert receive(b, d) == b"x"  # the forged attempt did not mark counter 0 as seen


def test_rekey_due_initiator_on_time_responder_after_extra_delay() -> None:
    lim = SessionLimits(rekey_after_messages=5, rekey_after_time=10.0, reject_after_time=15.0)
    a, b = pair(lim)
    assert a.is_initiator and not b.is_initiator
    assert not a.rekey_due(NOW + 9.9, 2.0) and a.rekey_due(NOW + 10.0, 2.0)
    assert not b.rekey_due(NOW + 11.9, 2.0) and b.rekey_due(NOW + 12.0, 2.0)
    for _ in range(5):
        b.seal(b"", NOW)
    assert b.rekey_due(NOW, 2.0)  # the message limit applies to both roles

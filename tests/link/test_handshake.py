"""Noise IKpsk2 handshake between two in-memory parties."""

from __future__ import annotations

import hashlib

import pytest

from netmesh.errors import AuthenticationError, HandshakeError, Replayed
from netmesh.link.handshake import (
    INITIATION_LEN,
    MAC_LEN,
    RESPONSE_LEN,
    InitiationReplayGuard,
    Initiator,
    Responder,
    ResponderTemplate,
    SessionKeys,
    encode_timestamp,
    mac1,
    mac1_key,
    mac1_ok,
    public_key_of,
)


def key(label: str) -> bytes:
    return hashlib.blake2s(label.encode()).digest()


SI, SR, EI, ER, PSK = key("si"), key("sr"), key("ei"), key("er"), key("psk")
PROLOGUE = b"netmesh-test"
TS = encode_timestamp(1_700_000_000_123_456_789)


def run(
    psk_i: bytes = PSK, psk_r: bytes = PSK, rs: bytes | None = None, prologue_r: bytes = PROLOGUE
) -> tuple[SessionKeys, SessionKeys]:
    init = Initiator(SI, rs or public_key_of(SR), psk_i, EI, PROLOGUE)
    resp = Responder(SR, psk_r, prologue_r)
    m1 = init.create_initiation(TS)
    assert resp.consume_initiation(m1) == public_key_of(SI)
    assert resp.timestamp == TS
    m2, kr = resp.create_response(ER)
    ki = init.consume_response(m2)
    return ki, kr


def test_parties_derive_matching_keys() -> None:
    ki, kr = run()
    assert ki.send_key == kr.recv_key
    assert ki.recv_key == kr.send_key
    assert ki.send_key != ki.recv_key
    assert ki.handshake_hash == kr.handshake_hash
    assert ki.remote_static == public_key_of(SR)
    assert kr.remote_static == public_key_of(SI)
    assert ki.is_initiator and not kr.is_initiator


def test_message_sizes_and_determinism() -> None:
    a = Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE).create_initiation(TS)
    b = Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE).create_initiation(TS)
    assert a == b and len(a) == INITIATION_LEN
    ki1, _ = run()
    ki2, _ = run()
    assert ki1 == ki2  # fixed inputs -> fixed transcript


@pytest.mark.parametrize("pos", range(INITIATION_LEN))
def test_flipping_any_initiation_byte_fails(pos: int) -> None:
    m1 = bytearray(Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE).create_initiation(TS))
    m1[pos] ^= 0x01
    with pytest.raises((AuthenticationError, HandshakeError)):
        Responder(SR, PSK, PROLOGUE).consume_initiation(bytes(m1))


@pytest.mark.parametrize("pos", range(RESPONSE_LEN))
def test_flipping_any_response_byte_fails(pos: int) -> None:
    init = Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE)
    resp = Responder(SR, PSK, PROLOGUE)
    resp.consume_initiation(init.create_initiation(TS))
    m2, _ = resp.create_response(ER)
    bad = bytearray(m2)
    bad[pos] ^= 0x80
    with pytest.raises((AuthenticationError, HandshakeError)):
        init.consume_response(bytes(bad))
    # a forged response does not spoil the genuine one
    ki = init.consume_response(m2)
    assert ki.remote_static == public_key_of(SR)


def test_wrong_psk_fails_at_initiator() -> None:
    with pytest.raises(AuthenticationError):
        run(psk_r=key("other psk"))


def test_unexpected_responder_key_fails_at_responder() -> None:
    with pytest.raises(AuthenticationError):
        run(rs=public_key_of(key("someone else")))


def test_prologue_mismatch_fails() -> None:
    with pytest.raises(AuthenticationError):
        run(prologue_r=b"other")


def test_wrong_lengths_and_misuse() -> None:
    init = Initiator(SI, public_key_of(SR), PSK, EI)
    with pytest.raises(HandshakeError):
        init.consume_response(b"\x00" * RESPONSE_LEN)  # before initiation
    m1 = init.create_initiation(TS)
    with pytest.raises(HandshakeError):
        init.create_initiation(TS)
    with pytest.raises(HandshakeError):
        Responder(SR, PSK).consume_initiation(m1[:-1])
    with pytest.raises(HandshakeError):
        init.consume_response(b"\x00" * (RESPONSE_LEN + 1))
    with pytest.raises(HandshakeError):
        Responder(SR, PSK).create_response(ER)
    with pytest.raises(HandshakeError):
        Initiator(SI, b"short", PSK, EI)


def test_low_order_ephemeral_is_refused() -> None:
    m1 = Initiator(SI, public_key_of(SR), PSK, EI).create_initiation(TS)
    with pytest.raises(HandshakeError):
        Responder(SR, PSK).consume_initiation(b"\x00" * 32 + m1[32:])


def test_replayed_initiation_is_rejected_by_timestamp() -> None:
    guard = InitiationReplayGuard()
    m1 = Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE).create_initiation(TS)
    for attempt in range(2):
        resp = Responder(SR, PSK, PROLOGUE)
        rs = resp.consume_initiation(m1)
        if attempt == 0:
            guard.check(rs, resp.timestamp)
            guard.record(rs, resp.timestamp)
        else:
            with pytest.raises(Replayed):
                guard.check(rs, resp.timestamp)
    newer = encode_timestamp(1_700_000_000_123_456_790)
    guard.check(public_key_of(SI), newer)
    with pytest.raises(Replayed):
        guard.check(public_key_of(SI), encode_timestamp(1_600_000_000_000_000_000))
    guard.check(public_key_of(SR), TS)  # other initiators are independent


def test_replay_guard_is_bounded() -> None:
    guard = InitiationReplayGuard(max_entries=3)
    for i in range(10):
        guard.record(key(str(i)), TS)
    assert len(guard._latest) == 3


def test_timestamp_bytes_sort_like_time() -> None:
    values = [0, 1, 999_999_999, 1_000_000_000, 1_700_000_000_000_000_000]
    encoded = [encode_timestamp(v) for v in values]
    assert encoded == sorted(encoded)
    assert all(len(e) == 12 for e in encoded)


def test_responder_template_matches_a_fresh_responder_and_is_reusable() -> None:
    tpl = ResponderTemplate(SR, PSK, PROLOGUE)
    assert tpl.static_public == public_key_of(SR)
    for ei in (EI, key("ei2")):
        init = Initiator(SI, public_key_of(SR), PSK, ei, PROLOGUE, static_public=public_key_of(SI))
        m1 = init.create_initiation(TS)
        fresh, cached = Responder(SR, PSK, PROLOGUE), tpl.new()
        assert fresh.consume_initiation(m1) == cached.consume_initiation(m1) == public_key_of(SI)
        assert fresh.timestamp == cached.timestamp == TS
        m2a, ka = fresh.create_response(ER)
        m2b, kb = cached.create_response(ER)
        assert (m2a, ka) == (m2b, kb)
        assert init.consume_response(m2b).send_key == kb.recv_key


def test_mac1_key_needs_psk_and_receiver_key() -> None:
    k = mac1_key(PSK, public_key_of(SR))
    assert len(k) == 32 and len(mac1(k, b"data")) == MAC_LEN == 16
    assert k != mac1_key(key("other psk"), public_key_of(SR))
    assert k != mac1_key(PSK, public_key_of(SI))
    assert mac1_ok(k, b"data" + mac1(k, b"data"))
    assert not mac1_ok(mac1_key(key("other psk"), public_key_of(SR)), b"data" + mac1(k, b"data"))

"""Our IKpsk2 agrees with the independent ``noiseprotocol`` package, both directions."""

from __future__ import annotations

import hashlib
import warnings

import pytest

from netmesh.errors import AuthenticationError
from netmesh.link.handshake import (
    CipherState,
    Initiator,
    Responder,
    encode_timestamp,
    public_key_of,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from noise.connection import Keypair, NoiseConnection

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"


def key(label: str) -> bytes:
    return hashlib.blake2s(label.encode()).digest()


SI, SR, EI, ER, PSK = key("si"), key("sr"), key("ei"), key("er"), key("psk")
PROLOGUE = b"interop"
TS = encode_timestamp(42)


def _theirs(initiator: bool, static: bytes, remote: bytes | None) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    conn.set_psks(PSK)
    conn.set_prologue(PROLOGUE)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.start_handshake()
    return conn


def test_we_initiate_they_respond() -> None:
    ours = Initiator(SI, public_key_of(SR), PSK, EI, PROLOGUE)
    theirs = _theirs(False, SR, None)
    assert bytes(theirs.read_message(ours.create_initiation(TS))) == TS
    keys = ours.consume_response(bytes(theirs.write_message(b"")))
    assert theirs.handshake_finished
    assert keys.handshake_hash == theirs.get_handshake_hash()
    send, recv = CipherState(keys.send_key), CipherState(keys.recv_key)
    for i in range(3):
        msg = f"ours->theirs {i}".encode()
        assert bytes(theirs.decrypt(send.encrypt_with_ad(b"", msg))) == msg
        back = f"theirs->ours {i}".encode()
        assert recv.decrypt_with_ad(b"", bytes(theirs.encrypt(back))) == back


def test_they_initiate_we_respond() -> None:
    theirs = _theirs(True, SI, public_key_of(SR))
    ours = Responder(SR, PSK, PROLOGUE)
    assert ours.consume_initiation(bytes(theirs.write_message(TS))) == public_key_of(SI)
    assert ours.timestamp == TS
    m2, keys = ours.create_response(ER)
    assert bytes(theirs.read_message(m2)) == b""
    assert keys.handshake_hash == theirs.get_handshake_hash()
    send, recv = CipherState(keys.send_key), CipherState(keys.recv_key)
    msg = b"x" * 100
    assert bytes(theirs.decrypt(send.encrypt_with_ad(b"", msg))) == msg
    assert recv.decrypt_with_ad(b"", bytes(theirs.encrypt(msg))) == msg


def test_wrong_psk_is_detected_against_theirs() -> None:
    ours = Initiator(SI, public_key_of(SR), key("wrong"), EI, PROLOGUE)
    theirs = _theirs(False, SR, None)
    theirs.read_message(ours.create_initiation(TS))  # psk2: msg1 does not use the PSK
    with pytest.raises(AuthenticationError):
        ours.consume_response(bytes(theirs.write_message(b"")))

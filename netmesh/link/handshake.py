"""Noise ``IKpsk2_25519_ChaChaPoly_BLAKE2s`` handshake (WireGuard's pattern), pure.

Pattern (Noise spec section 7.5 plus the psk2 modifier, section 9)::

    IKpsk2:
      <- s
      ...
      -> e, es, s, ss          (message 1, initiator -> responder)
      <- e, ee, se, psk        (message 2, responder -> initiator)

The initiator knows the responder's static key in advance; the responder learns the
initiator's static key from message 1 and must decide whether it is acceptable
(:class:`Responder` returns it; the caller checks it against its allow list). The
PSK is mixed at the end of message 2, so a wrong PSK is detected by the *initiator*
when message 2 fails to decrypt. A responder never uses its keys before it has seen
one authenticated transport packet from the initiator (key confirmation).

The vocabulary follows the Noise spec: :class:`CipherState`, :class:`SymmetricState`
and the two role objects (:class:`Initiator`, :class:`Responder`) that play the
HandshakeState for exactly this pattern. Nothing here draws randomness or reads a
clock: ephemeral private keys, the PSK, the prologue and the initiation timestamp
are arguments.

Replay protection of message 1: the initiator's payload is a 12-byte timestamp
(big-endian u64 seconds + u32 nanoseconds, TAI64N-like, so byte order is time
order). :class:`InitiationReplayGuard` remembers the greatest timestamp accepted per
initiator static key and refuses anything not strictly greater (WireGuard's rule).

mac1 (WireGuard's cookie-less first MAC, outside the Noise message): each handshake
datagram ends with ``mac1 = keyed-BLAKE2s-128(key=mac1_key(psk, receiver_static),
everything before mac1)``, where ``mac1_key = BLAKE2s(b"netmesh-mac1" || psk ||
receiver_static)``. Only a holder of the PSK who knows the receiver's static public
key can produce it, it covers the datagram header (sender / receiver indices), and a
receiver checks it with one hash before any Diffie-Hellman (:func:`mac1_ok`), so a
flood of forged initiations costs a hash each, not two X25519 operations. The Noise
messages themselves are unchanged (standard IKpsk2, see the interop tests).

Timestamps are inputs here. The node draws them from a
:class:`netmesh.identity.HandshakeClock`, which never goes backwards and persists its
high-water mark next to the key file, so a node restarted with its wall clock behind
is not refused as a replay (WireGuard has that caveat; we do not, given a key file).

Under load a responder answers with a cookie reply instead of DH work and the
initiator proves its address with a second MAC (mac2): ``netmesh.link.cookie``.

Errors: :class:`~netmesh.errors.AuthenticationError` when an AEAD tag fails (wrong
PSK, wrong responder key, tampering), :class:`~netmesh.errors.HandshakeError` for
malformed messages, bad DH results and misuse of the state objects,
:class:`~netmesh.errors.Replayed` for a stale initiation timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netmesh.errors import AuthenticationError, HandshakeError, Replayed

PROTOCOL_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
KEYLEN = 32
TIMESTAMP_LEN = 12
#: message 1 = e (32) + enc(s) (32 + 16) + enc(timestamp) (12 + 16)
INITIATION_LEN = DHLEN + (DHLEN + TAGLEN) + (TIMESTAMP_LEN + TAGLEN)
#: message 2 = e (32) + enc(empty) (16)
RESPONSE_LEN = DHLEN + TAGLEN
MAX_NONCE = (1 << 64) - 1
MAC_LEN = 16
MAC1_LABEL = b"netmesh-mac1"


def blake2s(data: bytes) -> bytes:
    """HASH() of the Noise spec."""
    return hashlib.blake2s(data).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH() of the Noise spec (RFC 2104 over BLAKE2s, block length 64)."""
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(chaining_key: bytes, ikm: bytes, num_outputs: int) -> tuple[bytes, ...]:
    """HKDF() of the Noise spec: 2 or 3 outputs of HASHLEN bytes."""
    temp_key = hmac_blake2s(chaining_key, ikm)
    out1 = hmac_blake2s(temp_key, b"\x01")
    out2 = hmac_blake2s(temp_key, out1 + b"\x02")
    if num_outputs == 2:
        return out1, out2
    out3 = hmac_blake2s(temp_key, out2 + b"\x03")
    return out1, out2, out3


def mac1_key(psk: bytes, receiver_static: bytes) -> bytes:
    """Key of the mac1 a sender appends to a handshake datagram for ``receiver_static``."""
    return blake2s(MAC1_LABEL + bytes(psk) + bytes(receiver_static))


def mac1(key: bytes, data: bytes) -> bytes:
    """keyed-BLAKE2s-128 of ``data`` (the datagram up to its mac1 field)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def mac1_ok(key: bytes, datagram: bytes) -> bool:
    """Whether the last ``MAC_LEN`` bytes of ``datagram`` are its valid mac1 (constant time)."""
    if len(datagram) < MAC_LEN:
        return False
    body = datagram[:-MAC_LEN]
    return hmac.compare_digest(mac1(key, body), datagram[-MAC_LEN:])


def nonce_bytes(n: int) -> bytes:
    """ChaChaPoly nonce of the Noise spec: 32 zero bits then the 64-bit counter, LE."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def public_key_of(private_key: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def dh(private_key: bytes, public_key: bytes) -> bytes:
    """X25519; raises HandshakeError for a malformed or low-order public key."""
    try:
        return X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(public_key)
        )
    except ValueError as exc:
        raise HandshakeError(f"bad DH public key: {exc}") from None


class CipherState:
    """Noise CipherState: a key ``k`` (or none) and a nonce counter ``n``."""

    __slots__ = ("_aead", "k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k: bytes | None = None
        self.n = 0
        self._aead: ChaCha20Poly1305 | None = None
        if k is not None:
            self.initialize_key(k)

    def initialize_key(self, k: bytes) -> None:
        self.k = k
        self.n = 0
        self._aead = ChaCha20Poly1305(k)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        out = self._aead.encrypt(nonce_bytes(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt; raises AuthenticationError on a bad tag (``n`` is not advanced)."""
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        try:
            out = self._aead.decrypt(nonce_bytes(self.n), ciphertext, ad)
        except InvalidTag:
            raise AuthenticationError("handshake AEAD tag mismatch") from None
        self.n += 1
        return out


class SymmetricState:
    """Noise SymmetricState: chaining key ``ck``, handshake hash ``h``, a CipherState."""

    __slots__ = ("ck", "cs", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = blake2s(protocol_name)
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = blake2s(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys (initiator->responder, responder->initiator)."""
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1, k2


@dataclass(frozen=True)
class SessionKeys:
    """Result of a completed handshake, from one party's point of view.

    send_key / recv_key: ChaCha20-Poly1305 keys for this party's two directions.
    remote_static: the peer's static X25519 public key.
    handshake_hash: Noise ``h`` after the last message (channel binding).
    is_initiator: whether this party sent message 1.
    """

    send_key: bytes
    recv_key: bytes
    remote_static: bytes
    handshake_hash: bytes
    is_initiator: bool


def encode_timestamp(unix_ns: int) -> bytes:
    """12-byte TAI64N-like timestamp: u64 seconds, u32 nanoseconds, big-endian."""
    secs, nanos = divmod(unix_ns, 1_000_000_000)
    return struct.pack(">QI", secs, nanos)


def _check_key(name: str, value: bytes, length: int = 32) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise HandshakeError(f"{name} must be {length} bytes")


def _initial_state(prologue: bytes, responder_static: bytes) -> SymmetricState:
    ss = SymmetricState()
    ss.mix_hash(prologue)
    ss.mix_hash(responder_static)  # pre-message "<- s"
    return ss


class ResponderTemplate:
    """What every :class:`Responder` of one node shares, computed once.

    The static public key, and the symmetric state after the prologue and the
    ``<- s`` pre-message (a pure function of prologue and static key). ``new()``
    returns a fresh Responder without recomputing either.
    """

    __slots__ = ("_ck", "_h", "psk", "static_private", "static_public")

    def __init__(self, static_private: bytes, psk: bytes, prologue: bytes = b"") -> None:
        _check_key("static_private", static_private)
        _check_key("psk", psk)
        self.static_private = bytes(static_private)
        self.static_public = public_key_of(self.static_private)
        self.psk = bytes(psk)
        ss = _initial_state(prologue, self.static_public)
        self._h, self._ck = ss.h, ss.ck

    def new(self) -> Responder:
        r = Responder.__new__(Responder)
        r._s = self.static_private
        r._s_pub = self.static_public
        r._psk = self.psk
        ss = SymmetricState.__new__(SymmetricState)
        ss.h, ss.ck, ss.cs = self._h, self._ck, CipherState()
        r._ss = ss
        r._re = b""
        r.remote_static = b""
        r.timestamp = b""
        r._state = "new"
        return r


class Initiator:
    """The party that sends message 1 (knows the responder's static key).

    Use once: ``msg1 = create_initiation(timestamp)`` then
    ``keys = consume_response(msg2)``. Any failure leaves the object unusable for
    another response only if it was a misuse; a message that fails to authenticate
    raises and the object may still consume a genuine response afterwards (an
    attacker cannot abort the handshake by injecting garbage).
    """

    def __init__(
        self,
        static_private: bytes,
        responder_static: bytes,
        psk: bytes,
        ephemeral_private: bytes,
        prologue: bytes = b"",
        static_public: bytes | None = None,
    ) -> None:
        """``static_public``: the public key of ``static_private`` if the caller has
        it cached (saves one scalar multiplication); not checked."""
        for name, value in (
            ("static_private", static_private),
            ("responder_static", responder_static),
            ("psk", psk),
            ("ephemeral_private", ephemeral_private),
        ):
            _check_key(name, value)
        self._s = bytes(static_private)
        self._s_pub = bytes(static_public) if static_public else public_key_of(self._s)
        self._rs = bytes(responder_static)
        self._psk = bytes(psk)
        self._e = bytes(ephemeral_private)
        self._e_pub = public_key_of(self._e)
        self._ss = _initial_state(prologue, self._rs)
        self._state = "new"

    def create_initiation(self, timestamp: bytes) -> bytes:
        """Message 1 (``INITIATION_LEN`` bytes) carrying the encrypted timestamp."""
        if self._state != "new":
            raise HandshakeError("create_initiation called twice")
        _check_key("timestamp", timestamp, TIMESTAMP_LEN)
        ss = self._ss
        ss.mix_hash(self._e_pub)
        ss.mix_key(self._e_pub)  # psk mode: "e" also mixes the key
        ss.mix_key(dh(self._e, self._rs))  # es
        enc_s = ss.encrypt_and_hash(self._s_pub)  # s
        ss.mix_key(dh(self._s, self._rs))  # ss
        enc_ts = ss.encrypt_and_hash(bytes(timestamp))
        self._state = "sent"
        return self._e_pub + enc_s + enc_ts

    def consume_response(self, message: bytes) -> SessionKeys:
        """Process message 2; raises AuthenticationError (wrong PSK/key, tampering)."""
        if self._state != "sent":
            raise HandshakeError("consume_response before create_initiation or after completion")
        if len(message) != RESPONSE_LEN:
            raise HandshakeError(f"response must be {RESPONSE_LEN} bytes, got {len(message)}")
        saved_h, saved_ck = self._ss.h, self._ss.ck
        saved_k = self._ss.cs.k
        saved_n = self._ss.cs.n
        try:
            ss = self._ss
            re = bytes(message[:DHLEN])
            ss.mix_hash(re)
            ss.mix_key(re)
            ss.mix_key(dh(self._e, re))  # ee
            ss.mix_key(dh(self._s, re))  # se (initiator's s, responder's e)
            ss.mix_key_and_hash(self._psk)  # psk
            ss.decrypt_and_hash(bytes(message[DHLEN:]))
        except (AuthenticationError, HandshakeError):
            # roll back so a forged message cannot spoil a later genuine one
            self._ss.h, self._ss.ck = saved_h, saved_ck
            if saved_k is not None:
                self._ss.cs.initialize_key(saved_k)
                self._ss.cs.n = saved_n
            raise
        self._state = "done"
        k1, k2 = ss.split()
        return SessionKeys(k1, k2, self._rs, ss.h, True)


class Responder:
    """The party that receives message 1.

    ``remote_static = consume_initiation(msg1)`` reveals the initiator's static key
    and timestamp (``self.timestamp``); the caller decides whether to go on. Then
    ``msg2, keys = create_response(ephemeral_private)``. A node answering many
    initiations builds them with :meth:`ResponderTemplate.new` instead.
    """

    def __init__(self, static_private: bytes, psk: bytes, prologue: bytes = b"") -> None:
        _check_key("static_private", static_private)
        _check_key("psk", psk)
        self._s = bytes(static_private)
        self._s_pub = public_key_of(self._s)
        self._psk = bytes(psk)
        self._ss = _initial_state(prologue, self._s_pub)
        self._re = b""
        self.remote_static = b""
        self.timestamp = b""
        self._state = "new"

    def consume_initiation(self, message: bytes) -> bytes:
        """Process message 1; return the initiator's static key. Raises on failure."""
        if self._state != "new":
            raise HandshakeError("consume_initiation called twice")
        if len(message) != INITIATION_LEN:
            raise HandshakeError(f"initiation must be {INITIATION_LEN} bytes, got {len(message)}")
        self._state = "failed"
        ss = self._ss
        re = bytes(message[:DHLEN])
        ss.mix_hash(re)
        ss.mix_key(re)
        ss.mix_key(dh(self._s, re))  # es
        rs = ss.decrypt_and_hash(bytes(message[DHLEN : DHLEN + DHLEN + TAGLEN]))  # s
        ss.mix_key(dh(self._s, rs))  # ss
        ts = ss.decrypt_and_hash(bytes(message[DHLEN + DHLEN + TAGLEN :]))
        self._re = re
        self.remote_static = rs
        self.timestamp = ts
        self._state = "received"
        return rs

    def create_response(self, ephemeral_private: bytes) -> tuple[bytes, SessionKeys]:
        """Message 2 and this side's keys (use them only after key confirmation)."""
        if self._state != "received":
            raise HandshakeError("create_response without a consumed initiation")
        _check_key("ephemeral_private", ephemeral_private)
        e = bytes(ephemeral_private)
        e_pub = public_key_of(e)
        ss = self._ss
        ss.mix_hash(e_pub)
        ss.mix_key(e_pub)
        ss.mix_key(dh(e, self._re))  # ee
        ss.mix_key(dh(e, self.remote_static))  # se
        ss.mix_key_and_hash(self._psk)  # psk
        tag = ss.encrypt_and_hash(b"")
        self._state = "done"
        k1, k2 = ss.split()
        return e_pub + tag, SessionKeys(k2, k1, self.remote_static, ss.h, False)


class InitiationReplayGuard:
    """Greatest accepted initiation timestamp per initiator static key.

    ``check(static, ts)`` raises Replayed unless ``ts`` is strictly greater than the
    last value recorded for ``static``; ``record`` stores it (call it only after the
    initiation was accepted). Memory: one entry per distinct static key accepted,
    bounded by ``max_entries`` (oldest forgotten first).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._latest: dict[bytes, bytes] = {}
        self._max = max_entries

    def check(self, static: bytes, timestamp: bytes) -> None:
        last = self._latest.get(static)
        if last is not None and timestamp <= last:
            raise Replayed("initiation timestamp not newer than the last accepted one")

    def record(self, static: bytes, timestamp: bytes) -> None:
        self._latest.pop(static, None)
        self._latest[static] = timestamp
        while len(self._latest) > self._max:
            del self._latest[next(iter(self._latest))]

"""Handshake admission under load: per-source limits and cookies (mac2), pure.

Source: WireGuard whitepaper section 5.3 ("Denial of Service Mitigation & Cookies")
and section 5.4.7, adapted; read, not copied. The problem it solves: an initiation
with a valid mac1 (one captured from the wire and replayed, or sent by any PSK
holder) costs the responder two Diffie-Hellman operations before it can tell that
the message is stale. A node-wide budget alone turns a flood of such messages into
a denial of service: the flood spends the budget and every legitimate (re)join is
dropped with it.

Theory of operation (responder side, :class:`HandshakeGate`, after mac1 checked out)
    * An initiation whose mac2 is valid for its source address is *proven*: the
      sender received a cookie we sent to that address, so it owns the address. It
      is charged to a per-source-IP bucket of proven traffic only
      (``per_source_rate``/s, one second of burst); over it: ``RATE_LIMITED``.
    * Any other initiation is *unproven*. It is admitted (``ACCEPT``) only if both
      its source IP's unproven bucket and the node-wide bucket (``rate``/s) have a
      token: one source alone can never spend the node-wide budget. Otherwise the
      node is, for that source, *under load*: the answer is ``COOKIE`` - the shell
      sends a cookie reply instead of doing any DH. The sender retries at once with
      mac2 and is then proven.
    * Net effect: a replay flood (which cannot read cookies: they are sealed under
      a key derived from the PSK, and are bound to the source address anyway) costs
      one hash and one AEAD per datagram and never delays a legitimate node by more
      than one extra round trip. A flood by a PSK holder from its own addresses is
      held to ``per_source_rate`` per address.

Cookie
    ``cookie = keyed-BLAKE2s-128(key=secret, source)`` where ``source`` is the
    sender's (ip, port) and ``secret`` is 32 random bytes the shell replaces every
    ``SECRET_LIFETIME`` seconds (the previous secret is still accepted, so a cookie
    never dies at a rotation). ``mac2 = keyed-BLAKE2s-128(key=cookie, datagram up to
    mac2)``, i.e. it covers mac1 too.

Cookie reply (see ``netmesh.link.codec``): the cookie sealed with ChaCha20-Poly1305
under ``cookie_key(psk, responder_static)``, a random 12-byte nonce (the shell draws
it), and the *mac1 of the initiation it answers* as associated data, so only the
holder of that initiation's state accepts it, and only a PSK holder can open it.
The initiator keeps a cookie for ``COOKIE_VALID_FOR`` seconds.

Bucket tables are bounded (``max_sources`` entries per table, oldest forgotten first).
Nothing here reads a clock or draws randomness: ``now`` and secrets are inputs.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netmesh.errors import AuthenticationError
from netmesh.link.handshake import MAC_LEN, blake2s
from netmesh.ratelimit import TokenBucket

Addr = tuple[str, int]

COOKIE_LABEL = b"netmesh-cookie"
COOKIE_LEN = 16
NONCE_LEN = 12
#: cookie + AEAD tag
SEALED_COOKIE_LEN = COOKIE_LEN + 16
SECRET_LEN = 32
#: seconds a responder keeps one cookie secret (WireGuard: two minutes)
SECRET_LIFETIME = 120.0
#: seconds an initiator uses a received cookie (a little under the secret's life)
COOKIE_VALID_FOR = SECRET_LIFETIME - 5.0
_ZERO_MAC = bytes(MAC_LEN)


class Verdict(enum.Enum):
    ACCEPT = "accept"  # go on to the Diffie-Hellman work
    COOKIE = "cookie"  # under load for this sender: answer with a cookie reply
    RATE_LIMITED = "rate_limited"  # a proven source over its own limit: drop


def cookie_key(psk: bytes, responder_static: bytes) -> bytes:
    """Key sealing cookie replies of the responder ``responder_static``."""
    return blake2s(COOKIE_LABEL + bytes(psk) + bytes(responder_static))


def source_bytes(addr: Addr) -> bytes:
    """The canonical bytes of a source address (host text, port big-endian)."""
    return addr[0].encode() + b"|" + int(addr[1]).to_bytes(2, "big")


def make_cookie(secret: bytes, addr: Addr) -> bytes:
    return hashlib.blake2s(source_bytes(addr), digest_size=COOKIE_LEN, key=secret).digest()


def mac2(cookie: bytes, data: bytes) -> bytes:
    """keyed-BLAKE2s-128 of ``data`` (a handshake datagram up to its mac2 field)."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=cookie).digest()


def seal_cookie(key: bytes, nonce: bytes, cookie: bytes, initiation_mac1: bytes) -> bytes:
    """The ``SEALED_COOKIE_LEN``-byte sealed cookie of a cookie reply."""
    return ChaCha20Poly1305(key).encrypt(nonce, cookie, initiation_mac1)


def open_cookie(key: bytes, nonce: bytes, sealed: bytes, initiation_mac1: bytes) -> bytes:
    """The cookie in a cookie reply; AuthenticationError if it is not for us."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed, initiation_mac1)
    except InvalidTag:
        raise AuthenticationError("cookie reply failed authentication") from None


class _Buckets:
    """Token buckets per source IP, bounded (least recently used forgotten first)."""

    def __init__(self, rate: float, max_sources: int) -> None:
        self.rate = rate
        self.max = max_sources
        self._b: dict[str, TokenBucket] = {}

    def available(self, ip: str, now: float) -> bool:
        b = self._b.get(ip)
        if b is None:
            return True
        b.refill(now)
        return b.available >= 1

    def take(self, ip: str, now: float) -> bool:
        b = self._b.pop(ip, None)
        if b is None:
            b = TokenBucket(self.rate, now)
        self._b[ip] = b  # most recently used last
        while len(self._b) > self.max:
            del self._b[next(iter(self._b))]
        return b.try_consume(1, now)

    def __len__(self) -> int:
        return len(self._b)


class HandshakeGate:
    """Responder-side admission of initiations; see the module doc.

    ``rate``: node-wide unproven initiations per second (burst: one second's worth).
    ``per_source_rate``: initiations per second per source IP, for unproven and
    proven traffic separately. ``secret``: the first cookie secret (32 bytes), born at
    ``now``.
    """

    def __init__(
        self,
        rate: float,
        per_source_rate: float,
        now: float,
        secret: bytes,
        max_sources: int = 4096,
    ) -> None:
        self._node = TokenBucket(rate, now)
        self._unproven = _Buckets(per_source_rate, max_sources)
        self._proven = _Buckets(per_source_rate, max_sources)
        self._secret = bytes(secret)
        self._previous: bytes | None = None
        self._born = now

    # ------------------------------------------------------------ cookie secret
    def secret_due(self, now: float) -> bool:
        """Whether the shell should :meth:`rotate` (the secret is SECRET_LIFETIME old)."""
        return now - self._born >= SECRET_LIFETIME

    def rotate(self, now: float, secret: bytes) -> None:
        self._previous, self._secret, self._born = self._secret, bytes(secret), now

    def cookie_for(self, addr: Addr) -> bytes:
        """The cookie a reply to ``addr`` carries (under the current secret)."""
        return make_cookie(self._secret, addr)

    def proven(self, datagram: bytes, addr: Addr) -> bool:
        """Whether ``datagram`` ends with a mac2 valid for ``addr`` (constant time)."""
        tail = datagram[-MAC_LEN:]
        if len(datagram) < 2 * MAC_LEN or tail == _ZERO_MAC:  # no cookie: the common case
            return False
        body = datagram[:-MAC_LEN]
        for secret in (self._secret, self._previous):
            if secret is not None and hmac.compare_digest(
                mac2(make_cookie(secret, addr), body), tail
            ):
                return True
        return False

    # ------------------------------------------------------------ admission
    def admit(self, datagram: bytes, addr: Addr, now: float) -> Verdict:
        """The verdict on an initiation (mac1 already valid) from ``addr`` at ``now``."""
        ip = addr[0]
        if self.proven(datagram, addr):
            return Verdict.ACCEPT if self._proven.take(ip, now) else Verdict.RATE_LIMITED
        node = self._node
        node.refill(now)
        if node.available < 1 or not self._unproven.available(ip, now):
            return Verdict.COOKIE
        self._unproven.take(ip, now)
        node.try_consume(1, now)
        return Verdict.ACCEPT

    def under_load(self, now: float) -> bool:
        """Whether the node-wide budget is spent (unproven initiations get cookies)."""
        self._node.refill(now)
        return self._node.available < 1

    def sources(self) -> int:
        """Source IPs currently tracked (both tables)."""
        return len(self._unproven) + len(self._proven)

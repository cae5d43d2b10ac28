"""One transport session: ChaCha20-Poly1305 with counter nonces, pure.

A session is born from :class:`~netmesh.link.handshake.SessionKeys`. Sending: each
datagram gets the next counter (starting at 0) as its nonce (4 zero bytes + u64 LE,
as in Noise and WireGuard); the 16-byte DATA header, which carries the peer's
receiver index and the counter, is the associated data. Receiving: a read-only test
of the counter against the :class:`~netmesh.link.replay.ReplayWindow` first (a
replayed or too old datagram is refused without decrypting it), then decrypt, then
admit the counter into the window; a failed decrypt never touches the window.

Limits are inputs (WireGuard's constants are the defaults of
:class:`SessionLimits`): after ``rekey_after_messages`` sends or ``rekey_after_time``
seconds the owner should start a new handshake (:meth:`Session.needs_rekey`); after
``reject_after_messages`` / ``reject_after_time`` the session refuses to seal or
open (:meth:`Session.expired`; :class:`SessionExpired`). Only the initiator rekeys on
time at ``rekey_after_time``; :meth:`Session.rekey_due` lets the responder of a
session rekey too after an extra delay the caller picks (with jitter), so a link on
which both ends hold responder-side sessions - crossed handshakes - still rekeys
before ``reject_after_time``. Times are whatever clock
the caller uses, passed in: ``seal(body, now)`` and ``open(datagram, counter, now)``
check the age, ``seal`` also the send counter; the receive counter is bounded by the
replay window (a counter at or past ``reject_after_messages`` is Replayed).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from netmesh.errors import AuthenticationError, LocalProtocolError, Replayed
from netmesh.link.codec import DATA_HEADER, DATA_HEADER_LEN, TYPE_DATA, VERSION
from netmesh.link.handshake import SessionKeys
from netmesh.link.replay import ReplayWindow

_ZERO4 = b"\x00\x00\x00\x00"


@dataclass(frozen=True)
class SessionLimits:
    """Counter and age thresholds of a session (seconds for times)."""

    rekey_after_messages: int = 1 << 60
    reject_after_messages: int = (1 << 64) - (1 << 13) - 1
    rekey_after_time: float = 120.0
    reject_after_time: float = 180.0


class SessionExpired(LocalProtocolError):
    """The session passed a reject limit; a new handshake is needed."""


class Session:
    """Keys, counters and replay window of one direction pair.

    local_index: our receiver index (the peer writes it in its DATA headers).
    remote_index: the peer's receiver index (we write it in ours).
    created: the caller's clock when the handshake completed.
    confirmed: True for the initiator; for the responder, becomes True when the
        first packet authenticates (key confirmation). Do not send before that.
    """

    __slots__ = (
        "_open_aead",
        "_seal_aead",
        "confirmed",
        "created",
        "is_initiator",
        "limits",
        "local_index",
        "recv_counter_max",
        "remote_index",
        "remote_static",
        "replay",
        "send_counter",
    )

    def __init__(
        self,
        keys: SessionKeys,
        local_index: int,
        remote_index: int,
        created: float,
        limits: SessionLimits | None = None,
    ) -> None:
        self.limits = limits or SessionLimits()
        self._seal_aead = ChaCha20Poly1305(keys.send_key)
        self._open_aead = ChaCha20Poly1305(keys.recv_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.is_initiator = keys.is_initiator
        self.remote_static = keys.remote_static
        self.confirmed = keys.is_initiator
        self.send_counter = 0
        self.replay = ReplayWindow(self.limits.reject_after_messages)

    def seal(self, body: bytes, now: float) -> bytes:
        """A whole DATA datagram (header + ciphertext + tag) carrying ``body``.

        Raises SessionExpired past either reject limit (nothing is consumed).
        """
        n = self.send_counter
        if n >= self.limits.reject_after_messages:
            raise SessionExpired("send counter exhausted")
        if now - self.created >= self.limits.reject_after_time:
            raise SessionExpired("session too old to send on")
        self.send_counter = n + 1
        header = DATA_HEADER.pack(VERSION, TYPE_DATA, 0, self.remote_index, n)
        return header + self._seal_aead.encrypt(_ZERO4 + n.to_bytes(8, "little"), body, header)

    def open(self, datagram: bytes, counter: int, now: float) -> bytes:
        """Authenticate and decrypt a DATA datagram already parsed by ``codec.decode``.

        Raises SessionExpired (older than ``reject_after_time``; checked first, the
        datagram is not even decrypted), AuthenticationError (tag mismatch: tampered
        or not ours) or Replayed (counter seen before or older than the window;
        tested before decrypting, so a replay costs no AEAD work).
        Marks the session confirmed. Errors leave the window and confirmation as
        they were.
        """
        if now - self.created >= self.limits.reject_after_time:
            raise SessionExpired("session too old to receive on")
        if not self.replay.check(counter):
            raise Replayed(f"counter {counter} replayed or too old")
        try:
            body = self._open_aead.decrypt(
                _ZERO4 + counter.to_bytes(8, "little"),
                memoryview(datagram)[DATA_HEADER_LEN:],  # not a copy of the ciphertext
                datagram[:DATA_HEADER_LEN],
            )
        except InvalidTag:
            raise AuthenticationError("data packet failed authentication") from None
        if not self.replay.check_and_update(counter):
            raise Replayed(f"counter {counter} replayed or too old")
        self.confirmed = True
        return body

    def needs_rekey(self, now: float) -> bool:
        lim = self.limits
        return (
            self.send_counter >= lim.rekey_after_messages
            or now - self.created >= lim.rekey_after_time
        )

    def rekey_due(self, now: float, responder_delay: float) -> bool:
        """Whether this side should start a new handshake now.

        The initiator: :meth:`needs_rekey`. The responder: its send counter passed
        ``rekey_after_messages``, or the session is ``rekey_after_time +
        responder_delay`` old (the initiator normally rekeys first; this is the
        fallback when it does not, e.g. when both ends hold responder sessions).
        """
        if self.is_initiator:
            return self.needs_rekey(now)
        lim = self.limits
        return (
            self.send_counter >= lim.rekey_after_messages
            or now - self.created >= lim.rekey_after_time + responder_delay
        )

    def expired(self, now: float) -> bool:
        lim = self.limits
        return (
            self.send_counter >= lim.reject_after_messages
            or now - self.created >= lim.reject_after_time
        )

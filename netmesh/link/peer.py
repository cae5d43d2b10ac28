"""Per-peer link shell: executes what the pure parts decide, for one remote node.

The decisions live in pure modules: deadlines in ``netmesh.link.timers``
(:class:`PeerTimers`), the ``current``/``previous``/``next`` session slots, the
crossed-handshake tie-break and the rekey rule in ``netmesh.link.peerstate``
(:class:`SessionSlots`), the Noise messages in ``netmesh.link.handshake``. A
:class:`Peer` feeds them real events and does what they return: it draws ephemeral
keys and jitter, sends through its :class:`PeerHost`, and keeps the
:class:`~netmesh.link.index.PeerIndex` (indices, sessions, addresses) in step.

A Peer knows nothing of the node that owns it beyond :class:`PeerHost` (five
callbacks) and :class:`LinkContext` (immutable settings); the node implements the
host. No import cycle: ``node`` imports ``peer``, never the reverse.

Handshake attempts are retried by the timers; a ``connect`` waiter is failed with
:class:`~netmesh.errors.HandshakeError` once the attempts are spent. Blocked peers are
never rekeyed. ``addr`` changes only on authenticated input (a packet that decrypts
on one of our sessions, or a handshake response that authenticates); an initiation
is answered at its source address without moving the peer there.

Fragments are reassembled per receiving session (``Reassembler`` session key = our
session index; a forgotten session drops its incomplete messages), and the fragment
ids we send start at a random value, so fragments of two incarnations of a sender
never combine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netmesh.errors import AuthenticationError, HandshakeError
from netmesh.link import codec
from netmesh.link.codec import MIN_FRAGMENT_CHUNK, Reassembler
from netmesh.link.cookie import COOKIE_VALID_FOR, cookie_key, open_cookie
from netmesh.link.handshake import Initiator, SessionKeys, mac1_key
from netmesh.link.index import PeerIndex
from netmesh.link.peerstate import SessionSlots, SlotChange, rekey_wanted
from netmesh.link.session import Session, SessionLimits
from netmesh.link.timers import Action, PeerTimers, TimerConfig

log = logging.getLogger(__name__)

Addr = tuple[str, int]
KEEPALIVE = b"\x90"  # an empty msgpack array: a body with no entries


class PeerHost(Protocol):
    """What a :class:`Peer` needs from the node that owns it."""

    def transmit(self, peer: Peer, datagram: bytes, addr: Addr | None = None) -> None:
        """Send ``datagram`` to ``addr`` or the peer's address (drops if blocked)."""

    def peer_event(self, node_id: int, up: bool) -> None:
        """The link to ``node_id`` came up (first authenticated packet) or went down."""

    def count(self, name: str) -> None:
        """Add one to the node counter ``name``."""

    def handshake_timestamp(self) -> bytes:
        """A 12-byte initiation timestamp, strictly greater than every earlier one."""

    def is_blocked(self, node_id: int) -> bool: ...


@dataclass(frozen=True)
class LinkContext:
    """Immutable settings every Peer of one node shares.

    ``prologue(responder_id)``: the Noise prologue of a handshake with that responder.
    """

    node_id: int
    static_private: bytes
    static_public: bytes
    psk: bytes
    prologue: Callable[[int], bytes]
    timers: TimerConfig
    limits: SessionLimits
    handshake_retries: int
    max_message: int
    reassembly_bytes: int
    max_datagram: int


class Peer:
    """State of the link to one remote node (owned by a node through :class:`PeerHost`)."""

    def __init__(
        self,
        ctx: LinkContext,
        host: PeerHost,
        index: PeerIndex[Peer, Session],
        node_id: int,
        public_key: bytes,
        addr: Addr | None,
        now: float,
    ) -> None:
        self.ctx = ctx
        self.host = host
        self.index = index
        self.node_id = node_id
        self.public_key = public_key
        self._addr = addr
        self.timers = PeerTimers(ctx.timers, now)
        self.slots: SessionSlots[Session] = SessionSlots()
        self.pending_index: int | None = None
        self.pending: Initiator | None = None
        #: node clock when the pending initiation was sent
        self.pending_sent = 0.0
        #: mac1 key of handshake messages we send to this peer
        self.mac_key = mac1_key(ctx.psk, public_key)
        #: key of the cookie replies this peer sends us, the latest cookie and when
        #: it arrived (node clock); see netmesh.link.cookie
        self.cookie_key = cookie_key(ctx.psk, public_key)
        self.cookie: bytes | None = None
        self.cookie_at = 0.0
        #: mac1 of the pending initiation (a cookie reply must bind to it), and
        #: whether that initiation already carried a cookie (mac2)
        self.pending_mac1 = b""
        self.pending_with_cookie = False
        #: extra delay before the responder side of ``current`` rekeys (jittered)
        self.responder_rekey_delay = self._draw_responder_delay()
        self.connect_waiter: asyncio.Future[int] | None = None
        self.ever_up = False
        #: handshake responses that failed to authenticate (the peer answered with
        #: another PSK, or is not the key we expect there)
        self.rejected_responses = 0
        self.outbox: list[tuple[str, list[bytes]]] = []
        # random start: a restarted sender does not reuse the ids of its previous life
        self.frag_id = secrets.randbits(62)
        budget = ctx.max_datagram - codec.DATA_OVERHEAD
        min_chunk = max(64, budget - codec.BODY_OVERHEAD - 26 - 258)
        self.reassembler = Reassembler(
            ctx.max_message,
            ctx.reassembly_bytes,
            min_chunk=min_chunk,
            min_part=min(MIN_FRAGMENT_CHUNK, min_chunk),
        )
        index.add_peer(node_id, self, addr)

    # ------------------------------------------------------------ slots (read-only views)
    @property
    def addr(self) -> Addr | None:
        return self._addr

    def move_to(self, addr: Addr) -> None:
        """Adopt ``addr`` (authenticated input only; see the module doc)."""
        if addr != self._addr:
            self.index.rebind(self.node_id, self._addr, addr)
            self._addr = addr

    @property
    def current(self) -> Session | None:
        return self.slots.current

    @property
    def previous(self) -> Session | None:
        return self.slots.previous

    @property
    def next(self) -> Session | None:
        return self.slots.next

    def _draw_responder_delay(self) -> float:
        return self.ctx.limits.rekey_after_time * (0.10 + 0.15 * random.random())

    def _apply(self, change: SlotChange[Session]) -> None:
        for s in change.dropped:
            self.forget(s)
        if change.promoted:
            self.responder_rekey_delay = self._draw_responder_delay()
        if change.completed:
            self.host.count("handshakes_completed")

    def forget(self, session: Session) -> None:
        """Remove ``session`` from the index and drop its partial fragments."""
        if self.index.remove_session(session.local_index, session):
            self.reassembler.drop_session(session.local_index)

    # ------------------------------------------------------------ handshake
    def begin_handshake(self, now: float, attempts: int | None = None) -> None:
        """Send a fresh initiation (new ephemeral key and timestamp)."""
        self.timers.on_handshake_started(now, attempts)
        self._send_initiation(now)

    def _send_initiation(self, now: float) -> None:
        ctx = self.ctx
        self.drop_pending()
        if self._addr is None:
            return
        index = self.index.alloc()
        eph = X25519PrivateKey.generate().private_bytes_raw()
        init = Initiator(
            ctx.static_private,
            self.public_key,
            ctx.psk,
            eph,
            ctx.prologue(self.node_id),
            static_public=ctx.static_public,
        )
        noise = init.create_initiation(self.host.handshake_timestamp())
        cookie = self.cookie if now - self.cookie_at < COOKIE_VALID_FOR else None
        msg = codec.encode_initiation(index, noise, self.mac_key, cookie)
        self.pending_mac1 = codec.mac1_of(msg)
        self.pending_with_cookie = cookie is not None
        self.pending_index = index
        self.pending = init
        self.pending_sent = now
        self.index.add_pending(index, self)
        self.host.count("handshakes_initiated")
        self.host.transmit(self, msg)

    def drop_pending(self) -> None:
        if self.pending_index is not None:
            self.index.remove_pending(self.pending_index)
        self.pending_index = None
        self.pending = None

    def on_cookie(self, nonce: bytes, sealed_cookie: bytes, now: float) -> bool:
        """A cookie reply to our pending initiation: the responder is under load.

        Returns False if it does not open (not for our pending initiation, or not
        from a PSK holder). Otherwise keeps the cookie and, if the pending initiation
        carried none, sends a fresh one with mac2 at once (at most once per attempt:
        an initiation that already carried a cookie waits for the retry timer).
        """
        if self.pending is None:
            return False
        try:
            cookie = open_cookie(self.cookie_key, nonce, sealed_cookie, self.pending_mac1)
        except AuthenticationError:
            return False
        self.cookie, self.cookie_at = cookie, now
        if not self.pending_with_cookie:
            log.debug("%x is under load; retrying with its cookie", self.node_id)
            self._send_initiation(now)
        return True

    def complete_as_initiator(
        self, keys: SessionKeys, remote_index: int, addr: Addr, now: float
    ) -> None:
        index = self.pending_index
        assert index is not None
        self.index.remove_pending(index, release=False)
        self.pending_index = None
        self.pending = None
        self.move_to(addr)
        session = Session(keys, index, remote_index, now, self.ctx.limits)
        self.index.add_session(index, self, session)
        self._apply(
            self.slots.initiator_done(session, self.pending_sent, self.ctx.node_id, self.node_id)
        )
        self.timers.on_handshake_done(now)
        # key confirmation for the responder, and our first sign of life
        self.send_keepalive(now)
        self.mark_alive(now)
        w = self.connect_waiter
        if w is not None and not w.done():
            w.set_result(self.node_id)
        self.connect_waiter = None

    def offer_as_responder(self, session: Session) -> None:
        """Install a responder-side session that awaits key confirmation.

        The initiation's source address is not adopted until a packet on the session
        authenticates (:meth:`on_authenticated`).
        """
        self.index.add_session(session.local_index, self, session)
        self._apply(self.slots.offer(session))

    def on_authenticated(self, session: Session, addr: Addr, now: float) -> None:
        """A packet on ``session`` authenticated: liveness, confirmation, roaming."""
        if session is self.slots.next:
            self._apply(self.slots.authenticated(session, self.ctx.node_id, self.node_id))
        self.move_to(addr)
        self.mark_alive(now)

    def mark_alive(self, now: float) -> None:
        t = self.timers
        t.last_received = now
        if not t.up:
            t.on_up(now)
            self.ever_up = True
            self.host.peer_event(self.node_id, True)

    # ------------------------------------------------------------ sending
    def usable_session(self) -> Session | None:
        return self.slots.usable()

    def send_keepalive(self, now: float) -> None:
        s = self.slots.usable()
        if s is None or s.expired(now):
            return
        self.host.transmit(self, s.seal(KEEPALIVE, now))

    # ------------------------------------------------------------ time
    def tick(self, now: float) -> None:
        host = self.host
        for action in self.timers.poll(now):
            if action is Action.SEND_KEEPALIVE:
                self.send_keepalive(now)
            elif action is Action.PEER_DOWN:
                self.reassembler.clear()
                host.peer_event(self.node_id, False)
            elif action is Action.RETRY_HANDSHAKE:
                log.debug("handshake to %x timed out; retrying", self.node_id)
                self._send_initiation(now)
            elif action is Action.HANDSHAKE_FAILED:
                self.drop_pending()
                w = self.connect_waiter
                self.connect_waiter = None
                if w is not None and not w.done():
                    hint = (
                        f"; {self.rejected_responses} response(s) failed to authenticate:"
                        " the peer has a different psk"
                        if self.rejected_responses
                        else ": the host is down or drops our initiations (a different psk,"
                        " or not the public key it has; its log says which)"
                    )
                    self.rejected_responses = 0
                    w.set_exception(
                        HandshakeError(
                            f"no valid handshake response from {self.node_id:#x} after "
                            f"{self.ctx.handshake_retries} attempts{hint}"
                        )
                    )
            elif (
                action is Action.RECONNECT
                and self.ever_up
                and self._addr is not None
                and not host.is_blocked(self.node_id)
            ):
                log.debug("probing down peer %x", self.node_id)
                self.begin_handshake(now, attempts=1)
        self._apply(self.slots.expire(now))
        if rekey_wanted(
            self.slots.current,
            now,
            handshake_pending=self.pending is not None,
            up=self.timers.up,
            blocked=host.is_blocked(self.node_id),
            responder_delay=self.responder_rekey_delay,
        ):
            log.debug("rekeying session with %x", self.node_id)
            self.begin_handshake(now)

    def close(self) -> None:
        """Forget every session and the pending initiation; leave the index."""
        self.drop_pending()
        for s in self.slots.clear().dropped:
            self.forget(s)
        self.index.remove_peer(self.node_id, self, self._addr)

"""Per-peer link shell: real time into ``core.timers``, ``core.handshake`` driven here.

A :class:`Peer` holds up to three sessions with one remote node:

* ``current``  - the session we send on (confirmed);
* ``previous`` - the one it replaced, still accepted on receive until the next switch;
* ``next``     - a responder-side session waiting for key confirmation (its first
  authenticated packet promotes it to ``current``).

Handshake attempts are retried by the timers; a ``connect`` waiter is failed with
:class:`~netmesh.errors.HandshakeError` once the attempts are spent.

Rekeying: the initiator of ``current`` rekeys after ``rekey_after_time``; the
responder rekeys too, after an extra random delay of 10-25% of ``rekey_after_time``
(see ``Session.rekey_due``), so a link never stalls when both ends hold
responder-side sessions. Crossed handshakes (both ends initiate at once, e.g. a
simultaneous ``connect`` or both probing after a partition heals) are settled
deterministically: both ends keep the session initiated by the lower node id, the
other one is kept for receiving only. Blocked peers are never rekeyed.

``addr`` changes only on authenticated input (a packet that decrypts on one of our
sessions, or a handshake response that authenticates); an initiation is answered
at its source address without moving the peer there.

Fragments are reassembled per receiving session (``Reassembler`` stream = our
session index; a forgotten session drops its incomplete messages), and the
fragment ids we send start at a random value, so fragments of two incarnations of a
sender never combine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netmesh.errors import HandshakeError
from netmesh.link import codec
from netmesh.link.codec import MIN_FRAGMENT_CHUNK, Reassembler
from netmesh.link.handshake import Initiator, SessionKeys, mac1_key
from netmesh.link.session import Session
from netmesh.link.timers import Action, PeerTimers

if TYPE_CHECKING:
    from netmesh.link.node import MeshNode

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class Peer:
    """State of the link to one remote node (owned by a :class:`MeshNode`)."""

    def __init__(
        self, node: MeshNode, node_id: int, public_key: bytes, addr: Addr | None, now: float
    ) -> None:
        self.node = node
        self.node_id = node_id
        self.public_key = public_key
        self.addr = addr
        self.timers = PeerTimers(node.timer_config, now)
        self.current: Session | None = None
        self.previous: Session | None = None
        self.next: Session | None = None
        self.pending_index: int | None = None
        self.pending: Initiator | None = None
        #: node clock when the pending initiation was sent
        self.pending_sent = 0.0
        #: mac1 key of handshake messages we send to this peer
        self.mac_key = mac1_key(node.config.psk, public_key)
        #: extra delay before the responder side of ``current`` rekeys (jittered)
        self.responder_rekey_delay = self._draw_responder_delay()
        self.connect_waiter: asyncio.Future[int] | None = None
        self.ever_up = False
        self.outbox: list[tuple[str, list[bytes]]] = []
        # random start: a restarted sender does not reuse the ids of its previous life
        self.frag_id = secrets.randbits(62)
        cfg = node.config
        budget = cfg.max_datagram - codec.DATA_OVERHEAD
        min_chunk = max(64, budget - codec.BODY_OVERHEAD - 26 - 258)
        self.reassembler = Reassembler(
            cfg.max_message,
            cfg.reassembly_bytes,
            min_chunk=min_chunk,
            min_part=min(MIN_FRAGMENT_CHUNK, min_chunk),
        )

    def _draw_responder_delay(self) -> float:
        return self.node.config.rekey_after_time * (0.10 + 0.15 * random.random())

    # ------------------------------------------------------------ handshake
    def begin_handshake(self, now: float, attempts: int | None = None) -> None:
        """Send a fresh initiation (new ephemeral key and timestamp)."""
        self.timers.on_handshake_started(now, attempts)
        self._send_initiation()

    def _send_initiation(self) -> None:
        node = self.node
        self.drop_pending()
        if self.addr is None:
            return
        index = node.alloc_index()
        eph = X25519PrivateKey.generate().private_bytes_raw()
        init = Initiator(
            node.keypair.private_key,
            self.public_key,
            node.config.psk,
            eph,
            node.prologue(self.node_id),
            static_public=node.keypair.public_key,
        )
        noise = init.create_initiation(node.timestamp())
        msg = codec.encode_initiation(index, noise, self.mac_key)
        self.pending_index = index
        self.pending = init
        self.pending_sent = node.now()
        node.pending_initiations[index] = self
        node.metrics_inc("handshakes_initiated")
        node.send_raw(self, msg)

    def drop_pending(self) -> None:
        if self.pending_index is not None:
            self.node.pending_initiations.pop(self.pending_index, None)
            self.node.release_index(self.pending_index)
        self.pending_index = None
        self.pending = None

    def complete_as_initiator(
        self, keys: SessionKeys, remote_index: int, addr: Addr, now: float
    ) -> None:
        index = self.pending_index
        assert index is not None
        self.node.pending_initiations.pop(index, None)
        self.pending_index = None
        self.pending = None
        self.addr = addr
        session = Session(keys, index, remote_index, now, self.node.session_limits)
        self.node.sessions[index] = (self, session)
        cur = self.current
        if (
            cur is not None
            and not cur.is_initiator
            and cur.created >= self.pending_sent
            and self.node_id < self.node.node_id
        ):
            # crossed: the peer's initiation reached us while ours was in flight and
            # its session is already confirmed; the lower id's session wins
            self._retain(session)
        else:
            self._promote(session)
        self.timers.on_handshake_done(now)
        self.node.metrics_inc("handshakes_completed")
        # key confirmation for the responder, and our first sign of life
        self.send_keepalive(now)
        self.mark_alive(now)
        w = self.connect_waiter
        if w is not None and not w.done():
            w.set_result(self.node_id)
        self.connect_waiter = None

    def offer_as_responder(self, session: Session, addr: Addr) -> None:
        """Install a responder-side session that awaits key confirmation.

        ``addr`` (the initiation's source) is not adopted until a packet on the
        session authenticates (:meth:`on_authenticated`).
        """
        if self.next is not None:
            self.node.forget_session(self.next)
        self.next = session
        self.node.sessions[session.local_index] = (self, session)

    def _promote(self, session: Session) -> None:
        if self.previous is not None and self.previous is not session:
            self.node.forget_session(self.previous)
        self.previous = self.current if self.current is not session else self.previous
        self.current = session
        if self.next is session:
            self.next = None
        self.responder_rekey_delay = self._draw_responder_delay()

    def _retain(self, session: Session) -> None:
        """Keep ``session`` for receiving only (it lost a crossed-handshake tie-break)."""
        if self.next is session:
            self.next = None
        if self.previous is not None and self.previous is not session:
            self.node.forget_session(self.previous)
        self.previous = session

    def _crossed_loser(self, responder_session: Session) -> bool:
        """Whether ``responder_session`` (awaiting promotion) lost to ``current``.

        Crossed handshakes: ``current`` is our own initiator session completed after
        ``responder_session`` was offered. Both ends then keep the session initiated
        by the lower node id; here that is ours if our id is lower.
        """
        cur = self.current
        return (
            cur is not None
            and cur.is_initiator
            and cur.created >= responder_session.created
            and self.node.node_id < self.node_id
        )

    def on_authenticated(self, session: Session, addr: Addr, now: float) -> None:
        """A packet on ``session`` authenticated: liveness, confirmation, roaming."""
        if session is self.next:
            if self._crossed_loser(session):
                self._retain(session)
            else:
                self._promote(session)
            self.node.metrics_inc("handshakes_completed")
        self.addr = addr
        self.mark_alive(now)

    def mark_alive(self, now: float) -> None:
        t = self.timers
        t.last_received = now
        if not t.up:
            t.on_up(now)
            self.ever_up = True
            self.node.peer_event(self.node_id, True)

    # ------------------------------------------------------------ sending
    def usable_session(self) -> Session | None:
        s = self.current
        if s is not None and s.confirmed:
            return s
        return None

    def send_keepalive(self, now: float) -> None:
        s = self.usable_session()
        if s is None or s.expired(now):
            return
        self.node.send_raw(self, s.seal(b"\x90", now))

    # ------------------------------------------------------------ time
    def tick(self, now: float) -> None:
        node = self.node
        for action in self.timers.poll(now):
            if action is Action.SEND_KEEPALIVE:
                self.send_keepalive(now)
            elif action is Action.PEER_DOWN:
                self.reassembler.clear()
                node.peer_event(self.node_id, False)
            elif action is Action.RETRY_HANDSHAKE:
                log.debug("handshake to %x timed out; retrying", self.node_id)
                self._send_initiation()
            elif action is Action.HANDSHAKE_FAILED:
                self.drop_pending()
                w = self.connect_waiter
                self.connect_waiter = None
                if w is not None and not w.done():
                    w.set_exception(
                        HandshakeError(
                            f"no valid handshake response from {self.node_id:#x} after "
                            f"{node.config.handshake_retries} attempts"
                        )
                    )
            elif (
                action is Action.RECONNECT
                and self.ever_up
                and self.addr is not None
                and not node.is_blocked(self.node_id)
            ):
                log.debug("probing down peer %x", self.node_id)
                self.begin_handshake(now, attempts=1)
        s = self.current
        if s is not None:
            if s.expired(now):
                node.forget_session(s)
                self.current = None
            elif (
                self.pending is None
                and self.timers.up
                and s.rekey_due(now, self.responder_rekey_delay)
                and not node.is_blocked(self.node_id)
            ):
                log.debug("rekeying session with %x", self.node_id)
                self.begin_handshake(now)
        if self.previous is not None and self.previous.expired(now):
            node.forget_session(self.previous)
            self.previous = None
        if self.next is not None and self.next.expired(now):  # never confirmed
            node.forget_session(self.next)
            self.next = None

    def close(self) -> None:
        self.drop_pending()
        for s in (self.current, self.previous, self.next):
            if s is not None:
                self.node.forget_session(s)
        self.current = self.previous = self.next = None

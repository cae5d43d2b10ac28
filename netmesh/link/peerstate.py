"""The session slots of one peer link and the decisions about them, pure.

A link to one remote node holds up to three sessions (wireguard-go keypairs.go:
``current``, ``previous``, ``next``):

* ``current``  - the session we send on (confirmed);
* ``previous`` - the one it replaced, still accepted on receive until the next switch;
* ``next``     - a responder-side session waiting for key confirmation (its first
  authenticated packet promotes it to ``current``).

:class:`SessionSlots` is the state machine over those three slots. Every transition
returns a :class:`SlotChange`: whether a handshake completed, whether ``current``
changed, and the sessions that left every slot (``dropped``), which the shell must
forget (index table, reassembly). Nothing here sends, reads a clock or draws
randomness; ``now`` and the tie-break inputs are arguments.

Rules
    1. A session that leaves every slot is reported in ``dropped`` exactly once.
    2. Promote ``s``: the old ``previous`` is dropped, ``current`` becomes
       ``previous``, ``s`` becomes ``current`` (and leaves ``next``).
    3. Retain ``s`` (receive only): it replaces ``previous``; ``current`` stays.
    4. Crossed handshakes (both ends initiate at once) are settled by node id: both
       ends keep, as ``current``, the session *initiated by the lower node id*; the
       other one is retained for receiving (:func:`initiator_session_loses`,
       :func:`responder_session_loses`). Without this, each end would keep the
       session the other initiated and nobody would rekey on time.
    5. Expired sessions (``Session.expired(now)``) leave their slot (:meth:`expire`).

Rekeying (:func:`rekey_wanted`): the initiator of ``current`` rekeys after
``rekey_after_time``; its responder too, after an extra jittered delay the shell draws
(``Session.rekey_due``), so a link never stalls when both ends hold responder-side
sessions. Never while a handshake is pending, while the peer is down or blocked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class SlotSession(Protocol):
    """What the slots need of a session (``netmesh.link.session.Session`` has it)."""

    @property
    def is_initiator(self) -> bool: ...

    @property
    def created(self) -> float: ...

    @property
    def confirmed(self) -> bool: ...

    def expired(self, now: float) -> bool: ...

    def rekey_due(self, now: float, responder_delay: float) -> bool: ...


S = TypeVar("S", bound=SlotSession)


@dataclass
class SlotChange(Generic[S]):
    """Outcome of one transition. ``dropped``: sessions to forget (rule 1)."""

    completed: bool = False
    promoted: bool = False
    dropped: list[S] = field(default_factory=list)


def initiator_session_loses(
    current: SlotSession | None, pending_sent: float, my_id: int, peer_id: int
) -> bool:
    """Whether our just-completed initiator session must yield to ``current`` (rule 4).

    It loses when ``current`` is a responder session created after our initiation was
    sent (the peer's initiation crossed ours and is already confirmed) and the peer
    has the lower node id.
    """
    return (
        current is not None
        and not current.is_initiator
        and current.created >= pending_sent
        and peer_id < my_id
    )


def responder_session_loses(
    current: SlotSession | None, offered: SlotSession, my_id: int, peer_id: int
) -> bool:
    """Whether a confirmed responder session (from ``next``) must yield to ``current``.

    It loses when ``current`` is our own initiator session completed after ``offered``
    was created (crossed) and our node id is the lower one (rule 4).
    """
    return (
        current is not None
        and current.is_initiator
        and current.created >= offered.created
        and my_id < peer_id
    )


def rekey_wanted(
    current: SlotSession | None,
    now: float,
    *,
    handshake_pending: bool,
    up: bool,
    blocked: bool,
    responder_delay: float,
) -> bool:
    """Whether to start a rekey handshake now (see the module doc)."""
    return (
        current is not None
        and not handshake_pending
        and up
        and not blocked
        and not current.expired(now)
        and current.rekey_due(now, responder_delay)
    )


class SessionSlots(Generic[S]):
    """``current`` / ``previous`` / ``next`` of one link; see the module doc."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.current: S | None = None
        self.previous: S | None = None
        self.next: S | None = None

    def usable(self) -> S | None:
        """The session to send on: ``current`` if confirmed."""
        s = self.current
        return s if s is not None and s.confirmed else None

    def sessions(self) -> list[S]:
        return [s for s in (self.current, self.previous, self.next) if s is not None]

    # ------------------------------------------------------------ transitions
    def _promote(self, s: S, change: SlotChange[S]) -> None:
        if self.previous is not None and self.previous is not s:
            change.dropped.append(self.previous)
        if self.current is not s:
            self.previous = self.current
        self.current = s
        if self.next is s:
            self.next = None
        change.promoted = True

    def _retain(self, s: S, change: SlotChange[S]) -> None:
        if self.next is s:
            self.next = None
        if self.previous is not None and self.previous is not s:
            change.dropped.append(self.previous)
        self.previous = s

    def initiator_done(self, s: S, pending_sent: float, my_id: int, peer_id: int) -> SlotChange[S]:
        """Our initiation (sent at ``pending_sent``) completed with session ``s``."""
        change: SlotChange[S] = SlotChange(completed=True)
        if initiator_session_loses(self.current, pending_sent, my_id, peer_id):
            self._retain(s, change)
        else:
            self._promote(s, change)
        return change

    def offer(self, s: S) -> SlotChange[S]:
        """A responder session ``s`` awaits key confirmation (replaces an older one)."""
        change: SlotChange[S] = SlotChange()
        if self.next is not None and self.next is not s:
            change.dropped.append(self.next)
        self.next = s
        return change

    def authenticated(self, s: S, my_id: int, peer_id: int) -> SlotChange[S]:
        """A packet on ``s`` authenticated; confirms ``s`` if it is ``next``."""
        change: SlotChange[S] = SlotChange()
        if s is self.next:
            change.completed = True
            if responder_session_loses(self.current, s, my_id, peer_id):
                self._retain(s, change)
            else:
                self._promote(s, change)
        return change

    def expire(self, now: float) -> SlotChange[S]:
        """Drop every session past its reject limits (rule 5)."""
        change: SlotChange[S] = SlotChange()
        if self.current is not None and self.current.expired(now):
            change.dropped.append(self.current)
            self.current = None
        if self.previous is not None and self.previous.expired(now):
            change.dropped.append(self.previous)
            self.previous = None
        if self.next is not None and self.next.expired(now):  # never confirmed
            change.dropped.append(self.next)
            self.next = None
        return change

    def clear(self) -> SlotChange[S]:
        """Drop everything (the link closes)."""
        change: SlotChange[S] = SlotChange(dropped=self.sessions())
        self.current = self.previous = self.next = None
        return change

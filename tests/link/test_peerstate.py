"""Session slots and link decisions, pure: explicit sessions and clocks, no sockets."""

from __future__ import annotations

from dataclasses import dataclass

from netmesh.link.peerstate import (
    SessionSlots,
    initiator_session_loses,
    rekey_wanted,
    responder_session_loses,
)

LOW, HIGH = 1, 2


@dataclass(eq=False)
class S:
    name: str
    is_initiator: bool
    created: float
    confirmed: bool = True
    dies_at: float = 100.0
    rekey_at: float = 50.0

    def expired(self, now: float) -> bool:
        return now >= self.dies_at

    def rekey_due(self, now: float, responder_delay: float) -> bool:
        extra = 0.0 if self.is_initiator else responder_delay
        return now >= self.rekey_at + extra


def test_initiator_session_promotes_and_old_current_becomes_previous() -> None:
    slots: SessionSlots[S] = SessionSlots()
    a, b, c = S("a", True, 0), S("b", True, 1), S("c", True, 2)
    assert slots.initiator_done(a, 0, LOW, HIGH).dropped == []
    ch = slots.initiator_done(b, 1, LOW, HIGH)
    assert ch.completed and ch.promoted and ch.dropped == []
    assert (slots.current, slots.previous) == (b, a)
    ch = slots.initiator_done(c, 2, LOW, HIGH)
    assert ch.dropped == [a] and (slots.current, slots.previous) == (c, b)


def test_responder_session_waits_in_next_until_a_packet_confirms_it() -> None:
    slots: SessionSlots[S] = SessionSlots()
    r1, r2 = S("r1", False, 0, confirmed=False), S("r2", False, 1, confirmed=False)
    assert slots.offer(r1).dropped == []
    assert slots.usable() is None
    assert slots.offer(r2).dropped == [r1]  # a newer initiation replaces it
    assert slots.authenticated(r1, HIGH, LOW).completed is False  # not ours any more
    r2.confirmed = True
    ch = slots.authenticated(r2, HIGH, LOW)
    assert ch.completed and ch.promoted and slots.current is r2 and slots.next is None
    assert slots.usable() is r2
    assert slots.authenticated(r2, HIGH, LOW).completed is False  # only once


def test_crossed_handshakes_keep_the_lower_ids_session_on_both_ends() -> None:
    # LOW and HIGH initiate at t=0; each answers the other's initiation at t=1
    low: SessionSlots[S] = SessionSlots()
    high: SessionSlots[S] = SessionSlots()
    low_init, high_resp = S("low->high", True, 2), S("low->high", False, 1)
    high_init, low_resp = S("high->low", True, 2), S("high->low", False, 1)
    # on LOW: the responder session of HIGH's initiation is confirmed first...
    low.offer(low_resp)
    low.authenticated(low_resp, LOW, HIGH)
    assert low.current is low_resp
    # ...then LOW's own initiation completes: LOW initiated it, so it wins
    assert not initiator_session_loses(low.current, 0, LOW, HIGH)
    low.initiator_done(low_init, 0, LOW, HIGH)
    assert (low.current, low.previous) == (low_init, low_resp)
    # on HIGH: its own initiation completes first, then LOW's session is confirmed
    high.initiator_done(high_init, 0, HIGH, LOW)
    high.offer(high_resp)
    assert responder_session_loses(high.current, high_resp, HIGH, LOW) is False
    high.authenticated(high_resp, HIGH, LOW)
    assert (high.current, high.previous) == (high_resp, high_init)
    # the mirror case on LOW: a responder session confirmed after LOW's own
    # initiator session completed loses (LOW's own one is the lower id's)
    assert responder_session_loses(low_init, S("x", False, 1), LOW, HIGH) is True
    assert initiator_session_loses(S("r", False, 1), 0, HIGH, LOW) is True


def test_expire_and_clear_report_each_session_once() -> None:
    slots: SessionSlots[S] = SessionSlots()
    a, b = S("a", True, 0, dies_at=10), S("b", True, 5, dies_at=20)
    n = S("n", False, 6, confirmed=False, dies_at=12)
    slots.initiator_done(a, 0, LOW, HIGH)
    slots.initiator_done(b, 5, LOW, HIGH)
    slots.offer(n)
    assert slots.expire(9).dropped == []
    assert slots.expire(12).dropped == [a, n]
    assert (slots.current, slots.previous, slots.next) == (b, None, None)
    assert slots.clear().dropped == [b] and slots.sessions() == []


def test_rekey_wanted_only_when_due_up_unblocked_and_idle() -> None:
    init = S("i", True, 0, rekey_at=50)
    resp = S("r", False, 0, rekey_at=50)
    ok = dict(handshake_pending=False, up=True, blocked=False, responder_delay=10.0)
    assert not rekey_wanted(init, 49, **ok)  # type: ignore[arg-type]
    assert rekey_wanted(init, 50, **ok)  # type: ignore[arg-type]
    assert not rekey_wanted(resp, 55, **ok)  # type: ignore[arg-type]
    assert rekey_wanted(resp, 60, **ok)  # responder falls back after its delay  # type: ignore[arg-type]
    for k in ("handshake_pending", "blocked"):
        assert not rekey_wanted(init, 60, **{**ok, k: True})  # type: ignore[arg-type]
    assert not rekey_wanted(init, 60, **{**ok, "up": False})  # type: ignore[arg-type]
    assert not rekey_wanted(init, 100, **ok)  # expired: nothing to rekey  # type: ignore[arg-type]
    assert not rekey_wanted(None, 60, **ok)  # type: ignore[arg-type]

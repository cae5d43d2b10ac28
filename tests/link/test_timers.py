"""Peer timers driven by explicit `now` values."""

from __future__ import annotations

from netmesh.link.timers import Action, PeerTimers, TimerConfig

CFG = TimerConfig(
    heartbeat_interval=1.0,
    session_timeout=5.0,
    handshake_timeout=2.0,
    handshake_retries=3,
    reconnect_interval=2.0,
)


def test_keepalive_after_heartbeat_interval_of_silence() -> None:
    t = PeerTimers(CFG, 0.0)
    t.on_up(0.0)
    assert t.poll(0.5) == []
    t.on_sent(0.5)
    assert t.poll(1.4) == []
    assert t.poll(1.5) == [Action.SEND_KEEPALIVE]
    t.on_sent(1.5)
    assert t.poll(1.6) == []


def test_peer_down_once_after_session_timeout_then_reconnect_probes() -> None:
    t = PeerTimers(CFG, 0.0)
    t.on_up(0.0)
    t.on_received(3.0)
    t.on_sent(7.0)
    assert t.poll(7.9) == []
    assert t.poll(8.0) == [Action.PEER_DOWN]
    assert not t.up
    assert t.poll(9.0) == []
    assert t.poll(10.0) == [Action.RECONNECT]
    assert t.poll(11.0) == []
    assert t.poll(12.0) == [Action.RECONNECT]
    t.on_up(12.5)
    t.on_sent(12.5)
    assert t.poll(13.0) == []


def test_handshake_retries_then_fails() -> None:
    t = PeerTimers(CFG, 0.0)
    t.on_handshake_started(0.0)
    assert t.handshake_deadline() == 2.0
    assert t.poll(1.9) == []
    assert t.poll(2.0) == [Action.RETRY_HANDSHAKE]  # never up: no RECONNECT either
    assert t.attempts == 2
    assert t.poll(4.0) == [Action.RETRY_HANDSHAKE]
    assert t.poll(5.9) == []
    assert t.poll(6.0) == [Action.HANDSHAKE_FAILED]
    assert t.handshake_deadline() is None
    assert Action.HANDSHAKE_FAILED not in t.poll(100.0)


def test_single_attempt_probe_and_success_stops_retries() -> None:
    t = PeerTimers(CFG, 0.0)
    t.on_handshake_started(0.0, max_attempts=1)
    assert t.poll(2.0) == [Action.HANDSHAKE_FAILED]
    t.on_handshake_started(3.0)
    t.on_handshake_done(3.5)
    t.on_up(3.5)
    assert t.poll(5.0) == [Action.SEND_KEEPALIVE]

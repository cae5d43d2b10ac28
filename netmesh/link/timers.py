"""Per-peer deadlines as pure functions of ``now`` (wireguard-go timers.go, made pure).

:class:`PeerTimers` records what happened (``on_sent``, ``on_received``,
``on_handshake_started``, ``on_handshake_done``) and :meth:`PeerTimers.poll` says what
is due at ``now``. The shell calls ``poll`` periodically with a real clock; tests call
it with explicit values. ``poll`` is idempotent between events except for
``PEER_DOWN``, which is reported once per silence, and the handshake actions, whose
firing updates the attempt bookkeeping.

:class:`TokenBucket` is the node-wide limit on handshake messages that get as far as
Diffie-Hellman work (after their mac1 checked out).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    SEND_KEEPALIVE = "send_keepalive"  # nothing sent for heartbeat_interval
    PEER_DOWN = "peer_down"  # nothing received for session_timeout
    RETRY_HANDSHAKE = "retry_handshake"  # an attempt timed out and attempts remain
    HANDSHAKE_FAILED = "handshake_failed"  # the last attempt timed out
    RECONNECT = "reconnect"  # a peer that was up and is down: probe it


@dataclass(frozen=True)
class TimerConfig:
    heartbeat_interval: float
    session_timeout: float
    handshake_timeout: float
    handshake_retries: int
    #: seconds between handshake probes to a peer that is down
    reconnect_interval: float


class PeerTimers:
    """Timing state of one peer link. All times are caller-supplied floats."""

    def __init__(self, config: TimerConfig, now: float) -> None:
        self.config = config
        self.last_sent = now
        self.last_received = now
        self.up = False
        self.was_up = False
        self.handshake_started: float | None = None
        self.attempts = 0
        self.max_attempts = config.handshake_retries
        self.last_probe = now

    def on_sent(self, now: float) -> None:
        self.last_sent = now

    def on_received(self, now: float) -> None:
        self.last_received = now

    def on_up(self, now: float) -> None:
        self.up = True
        self.was_up = True
        self.last_received = now

    def on_handshake_started(self, now: float, max_attempts: int | None = None) -> None:
        """A new handshake sequence begins (attempt 1)."""
        self.handshake_started = now
        self.last_probe = now
        self.attempts = 1
        self.max_attempts = (
            max_attempts if max_attempts is not None else self.config.handshake_retries
        )

    def on_handshake_done(self, now: float) -> None:
        self.handshake_started = None
        self.attempts = 0

    def handshake_deadline(self) -> float | None:
        if self.handshake_started is None:
            return None
        return self.handshake_started + self.config.handshake_timeout

    def poll(self, now: float) -> list[Action]:
        cfg = self.config
        actions: list[Action] = []
        if (
            self.handshake_started is not None
            and now - self.handshake_started >= cfg.handshake_timeout
        ):
            if self.attempts < self.max_attempts:
                self.attempts += 1
                self.handshake_started = now
                actions.append(Action.RETRY_HANDSHAKE)
            else:
                self.handshake_started = None
                self.attempts = 0
                self.last_probe = now
                actions.append(Action.HANDSHAKE_FAILED)
        if self.up:
            if now - self.last_received >= cfg.session_timeout:
                self.up = False
                self.last_probe = now
                actions.append(Action.PEER_DOWN)
            elif now - self.last_sent >= cfg.heartbeat_interval:
                actions.append(Action.SEND_KEEPALIVE)
        elif (
            self.was_up
            and self.handshake_started is None
            and now - self.last_probe >= cfg.reconnect_interval
        ):
            self.last_probe = now
            actions.append(Action.RECONNECT)
        return actions

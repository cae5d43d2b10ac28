"""Token bucket (pure): the one rate limiter of netmesh.

Used in bytes for the leader's replication budget (``netmesh.replication.budget``) and
in handshakes for the node-wide handshake rate (``netmesh.link.node``).

Theory of operation
-------------------
``capacity`` defaults to ``rate`` (one second of burst). The bucket starts full and
refills continuously from the ``now`` values it is given (seconds, any monotonic
origin; a ``now`` earlier than the last one refills nothing). ``try_consume(cost)``
admits when ``available >= cost`` and subtracts. A cost larger than the whole
capacity is admitted only when the bucket is full, draining it to 0 (so one huge
response can never be starved forever). A cost of 0 is always admitted.
"""

from __future__ import annotations

from netmesh.errors import LocalProtocolError


class TokenBucket:
    """``rate`` tokens per second, ``capacity`` banked; see the module docstring."""

    def __init__(self, rate: float, now: float, capacity: float | None = None) -> None:
        if not rate > 0:
            raise LocalProtocolError(f"token bucket rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else rate)
        self.available = self.capacity
        self._last = now

    def refill(self, now: float) -> None:
        """Add ``rate x elapsed`` tokens, capped at capacity."""
        if now > self._last:
            self.available = min(self.capacity, self.available + (now - self._last) * self.rate)
            self._last = now

    def try_consume(self, cost: int, now: float) -> bool:
        """Admit (and charge) ``cost`` bytes at ``now``; False means over budget."""
        self.refill(now)
        if cost <= 0:
            return True
        if cost > self.capacity:
            if self.available >= self.capacity:
                self.available = 0.0
                return True
            return False
        if self.available >= cost:
            self.available -= cost
            return True
        return False

    def refund(self, cost: int) -> None:
        """Give back ``cost`` bytes (e.g. the send failed), capped at capacity."""
        self.available = min(self.capacity, self.available + max(0, cost))

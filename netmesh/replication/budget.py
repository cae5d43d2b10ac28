"""Leader-side replication bandwidth budget: a token bucket in bytes (pure).

``rate = capacity = fraction x nic_peak_bytes_per_s`` (``ReplicationConfig``), so the
**burst is one second of budget** (the bucket starts full): a leader may send
``fraction x nic_peak`` bytes of SyncResponses at once, then that many per second.
Over budget the leader answers a SyncRequest with a Backpressure NACK and counts
``under_capacity_total`` (DESIGN.md, "Protocol decisions").

Which NIC peak applies (issue 17 §2: the budget throttles catch-up, not steady state
on fast links):

* an explicit number of bytes/s: that number;
* ``None``: **unlimited**, no budget at all (:class:`UnlimitedBudget`);
* ``"auto"`` (the default): the node resolves it before the channel's coordinator is
  built (:func:`netmesh.replication.nic.resolve_nic_peak`): unlimited when bound to
  loopback, else the link speed the OS reports for the bound interface, else
  ``DEFAULT_NIC_PEAK_BYTES_PER_S``. Pure code cannot ask the OS, so an ``"auto"``
  that reaches :func:`replication_budget` unresolved (a ``Redex`` used in-process
  without the node worker) gets that documented default, 125 MB/s (1 Gbit/s, the
  reference's placeholder).
"""

from __future__ import annotations

import math
from typing import Literal

from netmesh.config import DEFAULT_NIC_PEAK_BYTES_PER_S
from netmesh.ratelimit import TokenBucket

NicPeak = int | Literal["auto"] | None


class UnlimitedBudget(TokenBucket):
    """A budget that admits everything (``nic_peak_bytes_per_s=None``); the same
    interface as :class:`TokenBucket`, with ``rate = capacity = available = inf``."""

    def __init__(self, now: float) -> None:
        super().__init__(math.inf, now)

    def refill(self, now: float) -> None:
        """Nothing to refill."""

    def try_consume(self, cost: int, now: float) -> bool:
        """Always admits."""
        return True

    def refund(self, cost: int) -> None:
        """Nothing to give back."""


def budget_rate(fraction: float, nic_peak_bytes_per_s: NicPeak) -> float | None:
    """Bytes/s the budget allows (also its burst, in bytes); None when unlimited.

    ``"auto"`` unresolved counts as ``DEFAULT_NIC_PEAK_BYTES_PER_S`` (module doc).
    """
    if nic_peak_bytes_per_s is None:
        return None
    if nic_peak_bytes_per_s == "auto":
        return fraction * DEFAULT_NIC_PEAK_BYTES_PER_S
    return fraction * nic_peak_bytes_per_s


def replication_budget(fraction: float, nic_peak_bytes_per_s: NicPeak, now: float) -> TokenBucket:
    """The byte budget of ``ReplicationConfig``: ``fraction x nic_peak_bytes_per_s`` per s
    with a burst of one second of it; :class:`UnlimitedBudget` for ``None``."""
    rate = budget_rate(fraction, nic_peak_bytes_per_s)
    if rate is None:
        return UnlimitedBudget(now)
    return TokenBucket(rate, now)

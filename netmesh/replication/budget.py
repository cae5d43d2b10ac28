"""Leader-side replication bandwidth budget: a token bucket in bytes (pure).

``rate = capacity = fraction x nic_peak_bytes_per_s`` (``ReplicationConfig``), so the
burst is one second of budget. Over budget the leader answers a SyncRequest with a
Backpressure NACK and counts ``under_capacity_total`` (DESIGN.md, "Protocol decisions").
"""

from __future__ import annotations

from netmesh.ratelimit import TokenBucket


def replication_budget(fraction: float, nic_peak_bytes_per_s: int, now: float) -> TokenBucket:
    """The byte budget of ``ReplicationConfig``: ``fraction x nic_peak_bytes_per_s`` per s."""
    return TokenBucket(fraction * nic_peak_bytes_per_s, now)

"""Issue 10 §6 at scale, on real nodes: 3 nodes, 600 idle replicated channels at a
150 ms heartbeat. Before the node-wide tick and the heartbeat bundles this gave
1,486 leader changes in 5 idle seconds and only 266 channels with a leader; the right
value is one stable leader per channel."""

from __future__ import annotations

import time
from typing import Any

import pytest

from netmesh import Cluster, ReplicationConfig

pytestmark = pytest.mark.system

CHANNELS = 600


def _census(c: Cluster) -> tuple[int, int]:
    """(channels with exactly one leader, leader changes so far) over every node."""
    leaders: dict[str, int] = {}
    changes = 0
    for node in c.metrics(fresh=True)["nodes"]:
        chans: dict[str, Any] = node.get("channels") or {}
        for name, ch in chans.items():
            changes += int(ch.get("leader_changes_total", 0))
            role = ch.get("role")
            if getattr(role, "name", role) == "LEADER":
                leaders[name] = leaders.get(name, 0) + 1
    return sum(1 for n in leaders.values() if n == 1), changes


def test_hundreds_of_idle_channels_keep_one_stable_leader_each() -> None:
    with Cluster(nodes=3, heartbeat_ms=150) as c:
        for i in range(CHANNELS):
            c.open_channel(f"idle/{i}", ReplicationConfig(factor=3))
        c.wait_until(
            lambda: _census(c)[0] == CHANNELS, timeout=60, message="one leader per channel"
        )
        _, changes0 = _census(c)
        end = time.monotonic() + 5.0  # five idle seconds, observed every half second
        while time.monotonic() < end:
            one, changes = _census(c)
            assert one == CHANNELS and changes == changes0, (one, changes - changes0)
            nxt = min(end, time.monotonic() + 0.5)
            c.wait_until(lambda: time.monotonic() >= nxt, timeout=1.0)  # noqa: B023
        assert _census(c) == (CHANNELS, changes0)

"""Cluster snapshots (pure): one entry per node, and totals over them.

``Cluster.metrics()`` and ``netmesh status`` build ``{"nodes": [...], "totals": {...}}``
from each node's metrics page and its process figures (psutil) with these functions.
A channel's ``role`` is a :class:`~netmesh.replication.roles.ReplicaRole` here (the
page carries its name), the same type ``Cluster.role()`` returns.
"""

from __future__ import annotations

from typing import Any

from netmesh.replication.roles import ReplicaRole


def node_entry(
    index: int,
    node_id: int,
    pid: int | None,
    alive: bool,
    exit_code: int | None,
    page: dict[str, Any] | None,
    proc: dict[str, Any],
) -> dict[str, Any]:
    """One node's entry of a cluster snapshot (metrics page + process figures)."""
    page = page or {}
    return {
        "node": index,
        "node_id": node_id,
        "pid": pid,
        "alive": alive,
        "exit_code": exit_code,
        **proc,
        "channels": {name: _with_role(ch) for name, ch in dict(page.get("channels", {})).items()},
        "sampled_at": page.get("sampled_at"),  # node's time.monotonic() of the page
        "mesh": page.get("mesh", {}),
        "counters": page.get("counters", {}),
    }


def _with_role(channel: dict[str, Any]) -> dict[str, Any]:
    """``channel`` with its ``role`` (a ReplicaRole name, if any) as a ReplicaRole."""
    role = channel.get("role")
    if isinstance(role, str) and role in ReplicaRole.__members__:
        return {**channel, "role": ReplicaRole[role]}
    return channel


def with_totals(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"nodes": nodes, "totals": ...}``: sums of process figures and ``*_total`` counters."""
    totals: dict[str, float] = {"cpu_percent": 0.0, "rss_bytes": 0, "alive": 0}
    for n in nodes:
        totals["cpu_percent"] += n.get("cpu_percent", 0.0)
        totals["rss_bytes"] += n.get("rss_bytes", 0)
        totals["alive"] += int(n["alive"])
        for ch in n["channels"].values():
            for k, v in ch.items():
                if k.endswith("_total") and isinstance(v, int | float):
                    totals[k] = totals.get(k, 0) + v
    return {"nodes": nodes, "totals": totals}

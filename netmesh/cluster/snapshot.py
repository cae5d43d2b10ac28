"""Cluster snapshots (pure): one entry per node, and totals over them.

``Cluster.metrics()`` and ``netmesh status`` build ``{"nodes": [...], "totals": {...}}``
from each node's metrics page and its process figures (psutil) with these functions.
A channel's ``role`` is a :class:`~netmesh.replication.roles.ReplicaRole` here (the
page carries its name), the same type ``Cluster.role()`` returns.

Staleness: a node's page carries the writer's heartbeat (``heartbeat_at``,
``time.monotonic()`` of the node, a system-wide clock) and its period; an entry built
with ``now`` says ``stale`` (and ``age_s``) instead of passing an old snapshot off as
current: stale when the heartbeat is older than ``STALE_PERIODS`` periods and
``STALE_MIN_S`` seconds (the node is frozen, stuck or dead), when there is no page, or
when the node is not alive.
"""

from __future__ import annotations

from typing import Any

from netmesh.replication.roles import ReplicaRole

#: a page whose heartbeat is older than this many periods and ``STALE_MIN_S`` is stale
STALE_PERIODS = 10
STALE_MIN_S = 1.0


def is_stale(heartbeat: float | None, period: float | None, now: float) -> bool:
    """Whether a page last current at ``heartbeat`` (monotonic s; None: never) is stale
    at ``now``: older than ``STALE_PERIODS`` periods (default period 0.1 s) and
    ``STALE_MIN_S``."""
    if heartbeat is None:
        return True
    return now - heartbeat > max(STALE_MIN_S, STALE_PERIODS * (period or 0.1))


def node_entry(
    index: int,
    node_id: int,
    pid: int | None,
    alive: bool,
    exit_code: int | None,
    page: dict[str, Any] | None,
    proc: dict[str, Any],
    now: float | None = None,
) -> dict[str, Any]:
    """One node's entry of a cluster snapshot (metrics page + process figures).

    With ``now`` (the reader's time.monotonic()), ``age_s`` is the page's age and
    ``stale`` whether it is stale (module doc); without, both are None (unknown).
    """
    # a page read from shared memory carries its heartbeat; an answer of the node
    # (fresh=True) was current at its sampling time
    heartbeat = None if page is None else page.get("heartbeat_at")
    stale: bool | None = None
    age: float | None = None
    if now is not None:
        at = heartbeat if heartbeat is not None or page is None else page.get("sampled_at")
        age = None if at is None else now - at
        stale = not alive or page is None or is_stale(at, page.get("period"), now)
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
        "heartbeat_at": heartbeat,  # when the page was last current (node's monotonic)
        "period": page.get("period"),
        "age_s": age,
        "stale": stale,
        # every channel entry is at least this fresh (None: a whole pass not done yet)
        "channels_sampled_since": page.get("channels_sampled_since"),
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
    totals: dict[str, float] = {"cpu_percent": 0.0, "rss_bytes": 0, "alive": 0, "stale": 0}
    for n in nodes:
        totals["stale"] += int(bool(n.get("stale")))
        totals["cpu_percent"] += n.get("cpu_percent", 0.0)
        totals["rss_bytes"] += n.get("rss_bytes", 0)
        totals["alive"] += int(n["alive"])
        for ch in n["channels"].values():
            for k, v in ch.items():
                if k.endswith("_total") and isinstance(v, int | float):
                    totals[k] = totals.get(k, 0) + v
    return {"nodes": nodes, "totals": totals}

"""Rendering of cluster metrics: rows, a rich table, Prometheus text, and the run file.

``Cluster.metrics()`` returns ``{"nodes": [...], "totals": {...}}``; this module turns
two successive snapshots into per-node rows (role, next_seq, lag, events/s, cpu) and
renders them. ``netmesh up`` writes a run file (``netmesh-up-<pid>.json``) naming its
metrics pages in the run directory (:func:`netmesh.cluster.rundir.run_dir`, the same
one its client socket is in), so that ``netmesh status`` (another process) reads the
same pages without asking the nodes.

Terms: ``next_seq`` is the seq the next appended event gets, i.e. the number of
events a node holds (seqs start at 0); ``commit`` the seq below which a majority holds
every event (exclusive, like next_seq);
``term`` the election round (every campaign raises it by one, so a fresh channel
usually starts at term 1 to 3); ``lag`` a replica's distance behind its leader, in
events and in seconds since the leader's last heartbeat ("-" on a leader or before a
heartbeat arrived). A node whose metrics page stopped being refreshed (frozen, stuck)
is shown as stale, with the page's age, never as if its figures were current.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from rich.table import Table

from netmesh.cluster import rundir
from netmesh.cluster.nodeconfig import describe_node, format_node_id
from netmesh.cluster.snapshot import is_stale
from netmesh.replication.roles import ReplicaRole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One (node, channel) line of the status table."""

    node: int
    alive: bool
    pid: int | None
    channel: str
    role: ReplicaRole | None  # None: not replicated
    term: int
    next_seq: int
    commit_seq: int
    lag_events: int | None  # None: not a replica, or no heartbeat yet
    lag_s: float | None
    events_per_s: float | None  # None: a single sample
    cpu_percent: float
    rss_mb: float
    stale_s: float | None = None  # age of a stale page (None: current)
    node_id: int | None = None

    @property
    def role_text(self) -> str:
        if not self.alive:
            return "DOWN"
        role = "-" if self.role is None else self.role.name
        return role if self.stale_s is None else f"{role} (stale {self.stale_s:.1f}s)"


def staleness(node: dict[str, Any], now: float | None = None) -> float | None:
    """Age in s of a live node's page if it is stale, else None (current, or unknown).

    Uses the entry's ``stale``/``age_s`` (``node_entry`` built with ``now``); else judges
    the page's ``heartbeat_at`` (set by ``MetricsPage.read``) against ``now`` (default
    time.monotonic()); an entry with neither is not judged."""
    if not node.get("alive"):
        return None
    heartbeat = node.get("heartbeat_at")
    stale = node.get("stale")
    t = time.monotonic() if now is None else now
    if stale is None:
        if heartbeat is None:
            return None
        stale = is_stale(heartbeat, node.get("period"), t)
    if not stale:
        return None
    age = node.get("age_s")
    if age is None:
        age = float("inf") if heartbeat is None else t - heartbeat
    return float(age)


def rows(now: dict[str, Any], before: dict[str, Any] | None) -> list[Row]:
    """One row per (node, channel) of snapshot ``now``.

    events/s is the change of ``next_seq`` between ``before`` and ``now`` over the
    time between the two pages (each page carries its node's sampling time); None
    without ``before``.
    """
    prev: dict[tuple[int, str], tuple[int, float | None]] = {}
    if before is not None:
        for n in before["nodes"]:
            for ch, m in n["channels"].items():
                prev[(n["node"], ch)] = (int(m.get("next_seq", 0)), n.get("sampled_at"))
    out: list[Row] = []
    for n in now["nodes"]:
        stale_s = staleness(n)
        chans = n["channels"] or {"-": {}}
        for ch, m in sorted(chans.items()):
            nxt = int(m.get("next_seq", 0))
            role = m.get("role")
            replica = role is ReplicaRole.REPLICA and m.get("replica_lag_seconds") is not None
            out.append(
                Row(
                    node=n["node"],
                    alive=n["alive"],
                    pid=n.get("pid"),
                    channel=ch,
                    role=role if isinstance(role, ReplicaRole) else None,
                    term=int(m.get("term", 0)),
                    next_seq=nxt,
                    commit_seq=int(m.get("commit_seq", 0)),
                    lag_events=int(m.get("replica_lag_events", 0)) if replica else None,
                    lag_s=m.get("replica_lag_seconds") if replica else None,
                    events_per_s=_rate(prev.get((n["node"], ch)), nxt, n.get("sampled_at")),
                    cpu_percent=float(n.get("cpu_percent", 0.0)),
                    rss_mb=n.get("rss_bytes", 0) / 1e6,
                    stale_s=stale_s,
                    node_id=n.get("node_id"),
                )
            )
    return out


def _rate(before: tuple[int, float | None] | None, now: int, t_now: float | None) -> float | None:
    if before is None or before[1] is None or t_now is None or t_now <= before[1]:
        return None
    return max(0.0, (now - before[0]) / (t_now - before[1]))


# header -> (justify, cell text of a row); OPTIONAL columns are dropped when narrow
_COLUMNS: dict[str, tuple[Literal["left", "right"], Callable[[Row], str]]] = {
    "node": ("right", lambda r: str(r.node)),
    "pid": ("right", lambda r: str(r.pid or "-")),
    "channel": ("left", lambda r: r.channel),
    "role": ("left", lambda r: r.role_text),
    "term": ("right", lambda r: str(r.term)),
    "next_seq": ("right", lambda r: f"{r.next_seq:,}"),
    "commit": ("right", lambda r: f"{r.commit_seq:,}"),
    "lag ev": ("right", lambda r: "-" if r.lag_events is None else f"{r.lag_events:,}"),
    "lag s": ("right", lambda r: "-" if r.lag_s is None else f"{r.lag_s:.3f}"),
    "events/s": ("right", lambda r: "-" if r.events_per_s is None else f"{r.events_per_s:,.0f}"),
    "cpu %": ("right", lambda r: f"{r.cpu_percent:.0f}"),
    "rss MB": ("right", lambda r: f"{r.rss_mb:.0f}"),
}
_OPTIONAL = ["rss MB", "pid", "lag ev", "commit", "channel"]  # dropped first to last


def columns_for(rs: list[Row], width: int) -> list[str]:
    """The columns that fit ``width`` characters (borders and padding counted); the
    channel column goes first when every row has the same channel (then in the title)."""
    cols = list(_COLUMNS)
    if len({r.channel for r in rs}) <= 1:
        cols.remove("channel")
    drop = [c for c in _OPTIONAL if c in cols]
    while _width(rs, cols) > width and drop:
        cols.remove(drop.pop(0))
    return cols


def _width(rs: list[Row], cols: list[str]) -> int:
    widths = [max([len(c)] + [len(_COLUMNS[c][1](r)) for r in rs]) for c in cols]
    return sum(widths) + 3 * len(cols) + 1  # "│ cell " per column and the last "│"


def table(rs: list[Row], title: str = "netmesh", width: int = 80) -> Table:
    """A rich table of ``rs`` that fits ``width`` columns (see :func:`columns_for`)."""
    cols = columns_for(rs, width)
    channels = sorted({r.channel for r in rs})
    if "channel" not in cols and len(channels) == 1:
        title = f"{title}  channel {channels[0]!r}"
    stale = sorted({r.node for r in rs if r.stale_s is not None})
    if stale:
        title = f"{title}  STALE metrics: node {', '.join(map(str, stale))}"
    t = Table(title=title, caption=leaders_caption(rs) or None, caption_justify="left")
    for col in cols:
        t.add_column(col, justify=_COLUMNS[col][0], no_wrap=True)
    for r in rs:
        style = (
            "bold green"
            if r.role is ReplicaRole.LEADER and r.alive
            else ("red" if not r.alive else "")
        )
        t.add_row(*(_COLUMNS[c][1](r) for c in cols), style=style)
    return t


def leaders_caption(rs: list[Row]) -> str:
    """Who leads each replicated channel, in the one user-facing form of a node
    (:func:`netmesh.cluster.nodeconfig.describe_node`: ``0x… (node 2)``): ``leader
    0x… (node 2)`` for one channel (``no leader`` while it has no live leader), ``leader
    of 'a': …; leader of 'b': …`` for several (``none``). Unreplicated channels and
    nodes whose role is not known yet are left out ("" when nothing is known)."""
    channels = sorted({r.channel for r in rs if r.role is not None})
    parts = []
    for ch in channels:
        leads = [r for r in rs if r.channel == ch and r.alive and r.role is ReplicaRole.LEADER]
        who = (
            describe_node(leads[0].node_id, index=leads[0].node)
            if len(leads) == 1 and leads[0].node_id is not None
            else (f"node {leads[0].node}" if len(leads) == 1 else None)
        )
        if len(channels) == 1:
            parts.append("no leader" if who is None else f"leader {who}")
        else:
            parts.append(f"leader of {ch!r}: {who or 'none'}")
    return "; ".join(parts)


# HELP text of the metrics a node publishes (the rest get a generic line)
_HELP = {
    "next_seq": "seq the next appended event gets (events held, seqs start at 0)",
    "first_retained_seq": "oldest seq still held (retention)",
    "torn_tail_truncations": "torn records truncated when the event file was opened",
    "term": "election round of the channel as this node knows it",
    "tail_seq": "replication's name for next_seq: seq after the last event held",
    "commit_seq": "every event below this seq is held by a majority (exclusive)",
    "sync_bytes_total": "bytes of SyncResponses shipped",
    "sync_requests_total": "SyncRequests sent",
    "leader_changes_total": "times the known leader changed",
    "elections_total": "elections this node took part in as a candidate",
    "under_capacity_total": "SyncRequests answered with a backpressure NACK",
    "heartbeats_sent_total": "leader heartbeats sent",
    "heartbeats_received_total": "leader heartbeats received",
    "replica_lag_seconds": "seconds since the last leader heartbeat (replicas)",
    "replica_lag_events": "events this replica is behind its leader",
    "truncated_events_total": "divergent events truncated by replication",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition (format 0.0.4) of a ``Cluster.metrics()`` snapshot.

    Every metric has its HELP and TYPE line once, followed by all its samples;
    ``netmesh_channel_role`` is a state set (one sample per role, 1 for the current
    one); every sample is labelled ``node`` (index) and ``node_id`` (``0x<16 hex>``,
    as the node daemons' metrics); ``*_total`` metrics are counters, the rest gauges; unknown values
    (``replica_lag_seconds`` before a heartbeat) are left out.
    """
    families: dict[str, tuple[str, str, list[str]]] = {}

    def sample(name: str, kind: str, help_text: str, labels: dict[str, str], value: float) -> None:
        fam = families.setdefault(name, (kind, help_text, []))
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{text}}} {float(value)!r}")

    for n in snapshot["nodes"]:
        node = {"node": str(n["node"])}
        if n.get("node_id") is not None:  # the user-facing form (nodeconfig.format_node_id)
            node["node_id"] = format_node_id(n["node_id"])
        sample("netmesh_node_up", "gauge", "1 if the node process runs", node, n.get("alive", 0))
        sample(
            "netmesh_node_cpu_percent",
            "gauge",
            "cpu percent of the node process",
            node,
            n.get("cpu_percent", 0.0),
        )
        sample(
            "netmesh_node_rss_bytes",
            "gauge",
            "resident memory of the node process in bytes",
            node,
            n.get("rss_bytes", 0),
        )
        stale_s = staleness(n)
        sample(
            "netmesh_node_metrics_stale",
            "gauge",
            "1 if the node's metrics page stopped being refreshed (figures are old)",
            node,
            int(stale_s is not None),
        )
        for k, v in sorted(n.get("counters", {}).items()):
            if isinstance(v, int | float) and not isinstance(v, bool):
                sample(
                    f"netmesh_node_{k}_total",
                    "counter",
                    f"node counter {k.replace('_', ' ')}",
                    node,
                    v,
                )
        for ch, m in sorted(n["channels"].items()):
            labels = {**node, "channel": ch}
            role = m.get("role")
            if isinstance(role, ReplicaRole):
                for r in ReplicaRole:
                    sample(
                        "netmesh_channel_role",
                        "gauge",
                        "1 for the role this node has for the channel (state set)",
                        {**labels, "role": r.name},
                        int(r is role),
                    )
            for k, v in sorted(m.items()):
                if k == "role" or isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                kind = "counter" if k.endswith("_total") else "gauge"
                help_text = _HELP.get(k, f"channel metric {k.replace('_', ' ')}")
                sample(f"netmesh_channel_{k}", kind, help_text, labels, v)
    lines: list[str] = []
    for name, (kind, help_text, samples) in families.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"


def run_file(pid: int) -> str:
    """Path of the run file of the ``netmesh up`` with process id ``pid`` (in the run
    directory, :func:`netmesh.cluster.rundir.run_dir`)."""
    return os.path.join(rundir.run_dir(create=False), f"netmesh-up-{pid}.json")


def write_run_file(pid: int, info: dict[str, Any]) -> str:
    """Write ``info`` (pages, pids, node_ids, channel) atomically; returns the path."""
    rundir.run_dir(create=True)
    path = run_file(pid)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)
    return path


def find_run_files() -> list[str]:
    """Run files of ``netmesh up`` processes that are still alive, newest first
    (stale files of dead runs are removed, one WARNING line each)."""
    found = []
    directory = rundir.run_dir(create=False)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith("netmesh-up-") and name.endswith(".json"):
            try:
                pid = int(name[len("netmesh-up-") : -len(".json")])
            except ValueError:
                continue
            path = os.path.join(directory, name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its `up` died without cleaning up
                    log.warning("stale run file %s of pid %d (not running) removed", path, pid)
                continue
            except PermissionError:
                pass
            found.append(path)
    return sorted(found, key=os.path.getmtime, reverse=True)

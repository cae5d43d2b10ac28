"""Rendering of cluster metrics: rows, a rich table, Prometheus text, and the run file.

``Cluster.metrics()`` returns ``{"nodes": [...], "totals": {...}}``; this module turns
two successive snapshots into per-node rows (role, tail, lag, events/s, cpu) and
renders them. ``netmesh up`` writes a run file naming its metrics pages so that
``netmesh status`` (another process) can read the same pages without asking.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from rich.table import Table

RUN_DIR = os.environ.get("NETMESH_RUN_DIR", tempfile.gettempdir())


@dataclass(frozen=True)
class Row:
    node: int
    alive: bool
    pid: int | None
    channel: str
    role: str
    term: int
    tail_seq: int
    commit_seq: int
    lag_events: int
    lag_s: float | None
    events_per_s: float
    cpu_percent: float
    rss_mb: float


def rows(now: dict[str, Any], before: dict[str, Any] | None, dt: float) -> list[Row]:
    """One row per (node, channel); events/s from the tail difference over ``dt`` s."""
    prev: dict[tuple[int, str], int] = {}
    if before is not None:
        for n in before["nodes"]:
            for ch, m in n["channels"].items():
                prev[(n["node"], ch)] = m.get("next_seq", 0)
    out: list[Row] = []
    for n in now["nodes"]:
        chans = n["channels"] or {"-": {}}
        for ch, m in sorted(chans.items()):
            tail = int(m.get("next_seq", 0))
            rate = (tail - prev.get((n["node"], ch), tail)) / dt if dt > 0 else 0.0
            out.append(
                Row(
                    node=n["node"],
                    alive=n["alive"],
                    pid=n.get("pid"),
                    channel=ch,
                    role=_role_text(m.get("role")) if n["alive"] else "DOWN",
                    term=int(m.get("term", 0)),
                    tail_seq=tail,
                    commit_seq=int(m.get("commit_seq", 0)),
                    lag_events=int(m.get("replica_lag_events", 0)),
                    lag_s=m.get("replica_lag_seconds"),
                    events_per_s=max(rate, 0.0),
                    cpu_percent=float(n.get("cpu_percent", 0.0)),
                    rss_mb=n.get("rss_bytes", 0) / 1e6,
                )
            )
    return out


def _role_text(role: Any) -> str:
    return "-" if role is None else getattr(role, "name", str(role))


def table(rs: list[Row], title: str = "netmesh") -> Table:
    t = Table(title=title)
    for col in (
        "node",
        "pid",
        "channel",
        "role",
        "term",
        "tail",
        "commit",
        "lag ev",
        "lag s",
        "events/s",
        "cpu %",
        "rss MB",
    ):
        t.add_column(col, justify="right" if col not in ("channel", "role") else "left")
    for r in rs:
        lag = "-" if r.lag_s is None else f"{r.lag_s:.3f}"
        style = "bold green" if r.role == "LEADER" else ("red" if not r.alive else "")
        t.add_row(
            str(r.node),
            str(r.pid or "-"),
            r.channel,
            r.role,
            str(r.term),
            f"{r.tail_seq:,}",
            f"{r.commit_seq:,}",
            f"{r.lag_events:,}",
            lag,
            f"{r.events_per_s:,.0f}",
            f"{r.cpu_percent:.0f}",
            f"{r.rss_mb:.0f}",
            style=style,
        )
    return t


def prometheus(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition of a ``Cluster.metrics()`` snapshot."""
    lines: list[str] = []
    gauges = {
        "netmesh_node_up": "1 if the node process runs",
        "netmesh_node_cpu_percent": "cpu percent of the node process",
        "netmesh_node_rss_bytes": "resident memory of the node process",
    }
    for name, help_text in gauges.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        key = {
            "netmesh_node_up": "alive",
            "netmesh_node_cpu_percent": "cpu_percent",
            "netmesh_node_rss_bytes": "rss_bytes",
        }[name]
        for n in snapshot["nodes"]:
            lines.append(f'{name}{{node="{n["node"]}"}} {float(n.get(key, 0))}')
    seen: set[str] = set()
    for n in snapshot["nodes"]:
        for ch, m in n["channels"].items():
            for k, v in sorted(m.items()):
                if not isinstance(v, int | float) or isinstance(v, bool):
                    continue
                metric = f"netmesh_channel_{k}"
                if metric not in seen:
                    seen.add(metric)
                    kind = "counter" if k.endswith("_total") else "gauge"
                    lines.append(f"# TYPE {metric} {kind}")
                label = ch.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{metric}{{node="{n["node"]}",channel="{label}"}} {v}')
    return "\n".join(lines) + "\n"


def run_file(pid: int) -> str:
    return os.path.join(RUN_DIR, f"netmesh-up-{pid}.json")


def write_run_file(pid: int, info: dict[str, Any]) -> str:
    path = run_file(pid)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)
    return path


def find_run_files() -> list[str]:
    """Run files of ``netmesh up`` processes that are still alive, newest first."""
    found = []
    for name in os.listdir(RUN_DIR):
        if name.startswith("netmesh-up-") and name.endswith(".json"):
            pid = int(name[len("netmesh-up-") : -len(".json")])
            path = os.path.join(RUN_DIR, name)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.unlink(path)  # stale: its `up` died without cleaning up
                continue
            except PermissionError:
                pass
            found.append(path)
    return sorted(found, key=os.path.getmtime, reverse=True)

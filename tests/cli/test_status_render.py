"""Status rows, the table's width and the Prometheus text (checked with the reference
parser, prometheus_client) from synthetic snapshots: no processes."""

from __future__ import annotations

import io
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from netmesh.cli import status
from netmesh.cluster.snapshot import node_entry, with_totals
from netmesh.replication.roles import ReplicaRole


def _page(role: str, next_seq: int, at: float, lag: float | None) -> dict[str, Any]:
    return {
        "sampled_at": at,
        "channels": {
            'orders "eu"/2026': {
                "next_seq": next_seq,
                "first_retained_seq": 0,
                "role": role,
                "term": 12,
                "tail_seq": next_seq,
                "commit_seq": next_seq - 1,
                "elections_total": 3,
                "heartbeats_sent_total": 123_456,
                "replica_lag_seconds": lag,
                "replica_lag_events": 0 if role == "LEADER" else 1_234,
            }
        },
        "counters": {"ring_events": 9_999_999, "control_requests": 42},
    }


def snapshot(at: float, seq: int, alive: bool = True) -> dict[str, Any]:
    proc = {"cpu_percent": 97.5, "rss_bytes": 123_456_789}
    nodes = [
        node_entry(0, 0xABCDEF, 1_234_567, True, None, _page("LEADER", seq, at, 0.455), proc),
        node_entry(1, 0x1234, 1_234_568, True, None, _page("REPLICA", seq - 99, at, 0.01), proc),
        node_entry(2, 0x5678, 1_234_569, alive, None, _page("CANDIDATE", 5, at, None), proc),
    ]
    return with_totals(nodes)


def test_roles_are_replica_roles_and_rates_come_from_two_samples() -> None:
    rows = status.rows(snapshot(100.5, 150_000_000), snapshot(100.0, 100_000_000))
    assert [r.role for r in rows] == [
        ReplicaRole.LEADER,
        ReplicaRole.REPLICA,
        ReplicaRole.CANDIDATE,
    ]
    assert rows[0].events_per_s == pytest.approx(100_000_000)
    assert rows[0].lag_s is None and rows[0].lag_events is None  # a leader has no lag
    assert rows[1].lag_events == 1_234 and rows[1].lag_s == 0.01
    assert rows[2].lag_s is None  # no heartbeat yet: unknown, shown as "-"
    assert status.rows(snapshot(1.0, 5), None)[0].events_per_s is None  # one sample: no rate


def render(width: int, snap: dict[str, Any]) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    rows = status.rows(snap, snapshot(99.0, 1))
    console.print(status.table(rows, title="netmesh up: 3 nodes (Ctrl-C stops)", width=width))
    return console.export_text().splitlines()


def test_the_table_fits_80_columns_without_cutting_cells() -> None:
    lines = render(80, snapshot(100.0, 123_456_789, alive=False))
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert "…" not in text
    for cell in ("LEADER", "REPLICA", "DOWN", "123,456,789", "next_seq", "events/s"):
        assert cell in text


def test_a_wide_terminal_gets_every_column() -> None:
    text = "\n".join(render(200, snapshot(100.0, 123_456_789)))
    for header in ("pid", "rss MB", "lag ev", "commit", "1234567"):
        assert header in text


def test_prometheus_text_parses_with_help_and_type_for_every_metric() -> None:
    text = status.prometheus(snapshot(100.0, 1000))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families, text
    for fam in families.values():
        assert fam.documentation, fam.name
        assert fam.type in ("gauge", "counter"), fam.name
    for name in ("netmesh_node_up", "netmesh_channel_next_seq", "netmesh_channel_role"):
        assert name in families
    assert families["netmesh_channel_elections"].type == "counter"  # *_total -> counter
    roles = [s for s in families["netmesh_channel_role"].samples if s.value == 1]
    assert {(s.labels["node"], s.labels["role"]) for s in roles} == {
        ("0", "LEADER"),
        ("1", "REPLICA"),
        ("2", "CANDIDATE"),
    }
    assert {s.labels["channel"] for s in roles} == {'orders "eu"/2026'}  # escaped and back
    # each HELP/TYPE pair appears once, before its samples
    assert text.count("# TYPE netmesh_channel_next_seq ") == 1


def test_the_leader_is_named_by_its_node_id_in_the_caption_and_the_labels() -> None:
    rows = status.rows(snapshot(100.5, 1_000), None)
    assert status.leaders_caption(rows) == "leader 0x0000000000abcdef (node 0)"
    console = Console(width=80, file=io.StringIO(), force_terminal=False)
    console.print(status.table(rows, title="netmesh up"))
    assert "leader 0x0000000000abcdef (node 0)" in console.file.getvalue()  # type: ignore[attr-defined]
    fams = {f.name: f for f in text_string_to_metric_families(status.prometheus(snapshot(1, 5)))}
    ids = {s.labels["node"]: s.labels["node_id"] for s in fams["netmesh_node_up"].samples}
    assert ids == {"0": "0x0000000000abcdef", "1": "0x0000000000001234", "2": "0x0000000000005678"}
    no_leader = [r for r in rows if r.role is not ReplicaRole.LEADER]
    assert status.leaders_caption(no_leader) == "no leader"

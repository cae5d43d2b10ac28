"""The reference's overhead budget, process per node: N single appends acknowledged by
the leader take at most 1.3x as long with a replica running as without (medians).

A generous ratio check of speed, marked ``perf`` so CI skips it (`-m 'not perf'`);
``netmesh bench overhead`` prints the same figure against the tighter 1.15 bar."""

from __future__ import annotations

import pytest

from benchmarks.bench import bench_overhead

pytestmark = [pytest.mark.system, pytest.mark.perf]


def test_replication_overhead_within_30_percent_budget() -> None:
    ratio = bench_overhead(50_000, 5)["replication_overhead_ratio"]
    print(f"replication overhead ratio {ratio:.3f}")
    assert ratio <= 1.3, f"replicated/plain append time {ratio:.2f} exceeds 1.3"

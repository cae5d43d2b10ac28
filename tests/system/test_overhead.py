"""The reference's overhead budget, process per node: N single appends acknowledged by
the leader take at most 1.3x as long with a replica running as without (medians of
interleaved rounds, nothing pinned: the seed's definition).

A generous ratio check of speed, marked ``perf`` so CI skips it (`-m 'not perf'`);
``netmesh bench overhead`` prints the same figure, with the pinned variant beside it."""

from __future__ import annotations

import pytest

from benchmarks.suites import overhead_ratios

pytestmark = [pytest.mark.system, pytest.mark.perf]


def test_replication_overhead_within_30_percent_budget() -> None:
    ratio = overhead_ratios(50_000, 5, None, None, lambda _m: None)["ratio_of_medians"]
    print(f"replication overhead ratio {ratio:.3f}")
    assert ratio <= 1.3, f"replicated/plain append time {ratio:.2f} exceeds 1.3"

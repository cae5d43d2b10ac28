"""Cluster.restart waits on a node reopening a large log as long as it makes progress
(issue 17 §3), and gives up on a node that is idle yet silent."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from netmesh.cluster.cluster import Cluster
from netmesh.errors import NodeUnresponsive


class FakeSupervisor:
    """open_channel times out ``slow`` times; while ``busy`` it burns CPU first (the
    'node' is this test process, whose CPU time the cluster watches)."""

    def __init__(self, slow: int, busy: bool) -> None:
        self.slow, self.busy, self.calls = slow, busy, 0

    def call(self, index: int, op: str, /, timeout: float = 10.0, **args: Any) -> Any:
        assert op == "open_channel"
        self.calls += 1
        if self.calls > self.slow:
            return 0
        if self.busy:
            end = time.thread_time() + 0.3
            while time.thread_time() < end:
                pass
        raise NodeUnresponsive(f"node {index} did not answer {op!r} within {timeout}s")

    def exit_code(self, node: Any) -> int | None:
        return None


def cluster_with(sup: FakeSupervisor) -> Cluster:
    c = Cluster.__new__(Cluster)
    c.sup = sup  # type: ignore[assignment]
    c.info = {0: {"pid": os.getpid()}}
    c.channel_options = {}
    c._node = lambda i: i  # type: ignore[method-assign]
    return c


def test_a_node_busy_reopening_is_waited_for() -> None:
    sup = FakeSupervisor(slow=2, busy=True)
    cluster_with(sup)._reopen(0, "big/log", None)
    assert sup.calls == 3, "two attempts timed out while the node worked, the third answered"


def test_a_silent_idle_node_is_given_up() -> None:
    sup = FakeSupervisor(slow=5, busy=False)
    with pytest.raises(NodeUnresponsive):
        cluster_with(sup)._reopen(0, "big/log", None)
    assert sup.calls == 1

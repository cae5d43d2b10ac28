"""Issue 15 §4 on real node processes: a metrics page holds any number of channels, and
Cluster.metrics() says when a node's snapshot is stale instead of returning it silently."""

from __future__ import annotations

import os
import signal

import pytest

from netmesh.cluster.cluster import Cluster
from netmesh.cluster.metrics_page import PAGE_BYTES
from netmesh.config import ReplicationConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.system


def test_the_page_holds_thousands_of_channels_beyond_its_first_size() -> None:
    names = [f"a-channel-with-a-rather-long-name-on-the-page-{i:05d}" for i in range(3000)]
    with Cluster(nodes=1, heartbeat_ms=150) as c:
        for name in names:
            c.open_channel(name)
        c.open_channel("replicated", ReplicationConfig(factor=1))
        lead = c.wait_for_leader("replicated")
        c.append(0, names[-1], [b"x"] * 7)

        def complete() -> dict | None:
            node = c.metrics()["nodes"][0]
            chans = node["channels"]
            done = len(chans) == len(names) + 1 and chans[names[-1]]["next_seq"] == 7
            return node if done else None

        node = wait_until(complete, timeout=10, message="every channel on the page")
        assert node["stale"] is False and node["counters"]["metrics_pages_dropped"] == 0
        assert c.pages[0].size > PAGE_BYTES  # it grew: the old 256 KiB page dropped them
        assert node["channels_sampled_since"] is not None
        wait_until(
            lambda: c.metrics()["nodes"][lead]["channels"]["replicated"].get("role") is not None,
            timeout=10,
            message="replicated channel's role on the page",
        )


def test_a_frozen_node_is_reported_stale_then_current_again() -> None:
    with Cluster(nodes=2, heartbeat_ms=150) as c:
        c.open_channel("s")
        m = c.metrics()
        assert [n["stale"] for n in m["nodes"]] == [False, False]
        pid = c.info[1]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            node = wait_until(
                lambda: c.metrics()["nodes"][1]["stale"] and c.metrics()["nodes"][1],
                timeout=10,
                message="node 1 reported stale",
            )
            assert node["alive"] is True and node["age_s"] > 1.0
            assert c.metrics()["totals"]["stale"] == 1
            assert c.metrics()["nodes"][0]["stale"] is False
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: c.metrics()["nodes"][1]["stale"] is False, timeout=10)
        c.kill(1)
        dead = c.metrics()["nodes"][1]
        assert dead["alive"] is False and dead["stale"] is True

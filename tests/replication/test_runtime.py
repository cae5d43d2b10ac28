"""Replication shell edge cases on a real MeshNode (one process, real UDP socket)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from netmesh import (
    EntityKeypair,
    MeshNode,
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicaRole,
    ReplicationConfig,
)
from netmesh.errors import LocalProtocolError, LogCorrupt, StorageFailed
from netmesh.replication.registry import Redex

PSK = bytes(range(32))


async def one_node() -> tuple[MeshNode, Redex]:
    node = await MeshNode.create(EntityKeypair.generate(), MeshNodeConfig("127.0.0.1:0", PSK))
    node.start()
    redex = Redex()
    redex.enable_replication(node)
    return node, redex


def test_failed_attach_leaves_no_writable_unreplicated_file() -> None:
    async def body() -> None:
        node, redex = await one_node()
        cfg = RedexFileConfig(
            replication=ReplicationConfig(
                factor=1, placement=PlacementStrategy.pinned([node.node_id ^ 1])
            )
        )
        for _ in range(2):  # a retry must fail the same way, not return a plain file
            with pytest.raises(LocalProtocolError, match="not a member"):
                redex.open_file("orphan", cfg)
        assert redex.get_file("orphan") is None and redex.replication_runtime_count() == 0
        await node.shutdown()

    asyncio.run(body())


def test_corrupt_hard_state_is_reported_as_log_corrupt(tmp_path: Path) -> None:
    async def body() -> None:
        node, redex = await one_node()
        cfg = RedexFileConfig(
            path=str(tmp_path),
            replication=ReplicationConfig(
                factor=1, heartbeat_ms=50, placement=PlacementStrategy.pinned([node.node_id])
            ),
        )
        f = redex.open_file("hs", cfg)
        deadline = asyncio.get_running_loop().time() + 5
        while not (tmp_path / "hardstate").exists():  # the lone member elects itself
            assert asyncio.get_running_loop().time() < deadline, "no hard state saved"
            await asyncio.sleep(0.01)
        assert f.next_seq == 0
        redex.close()
        (tmp_path / "hardstate").write_bytes(b"\x01")
        r2 = Redex()
        r2.enable_replication(node)
        with pytest.raises(LogCorrupt, match="hardstate"):
            r2.open_file("hs", cfg)
        assert r2.get_file("hs") is None
        await node.shutdown()

    asyncio.run(body())


def test_failed_hard_state_save_stops_the_channel(tmp_path: Path) -> None:
    """A storage error is fail-stop: role FAILED, counted once, appends raise
    StorageFailed, nothing more is written (issue 10 §7 for the runtime)."""

    async def body() -> None:
        node, redex = await one_node()
        (tmp_path / "hardstate.tmp").mkdir()  # the save's temp file cannot be created
        cfg = RedexFileConfig(
            path=str(tmp_path),
            replication=ReplicationConfig(
                factor=1, heartbeat_ms=50, placement=PlacementStrategy.pinned([node.node_id])
            ),
        )
        f = redex.open_file("fails", cfg)
        coord = redex.replication_coordinator_for("fails")
        deadline = asyncio.get_running_loop().time() + 5
        while coord.role is not ReplicaRole.FAILED:  # the lone member tries to elect itself
            assert asyncio.get_running_loop().time() < deadline, f"role {coord.role}"
            await asyncio.sleep(0.01)
        with pytest.raises(StorageFailed):
            f.append(b"x")
        m = redex.replication_metrics_snapshot().channel("fails")
        assert m is not None and m.role == "FAILED" and m.storage_errors_total == 1
        assert not (tmp_path / "hardstate").exists() and f.next_seq == 0
        rt = redex.replication_runtime("fails")
        rt.run(rt.coord.tick(rt.now() + 10))
        assert redex.replication_metrics_snapshot().channel("fails").storage_errors_total == 1
        redex.close()
        await node.shutdown()

    asyncio.run(body())

"""Replication shell edge cases on a real MeshNode (one process, real UDP socket)."""

from __future__ import annotations

import asyncio
import os
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
from netmesh.replication.budget import UnlimitedBudget
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


def test_failed_local_append_stops_the_channel(tmp_path: Path) -> None:
    """A leader whose own append fails in the file (the write hits a descriptor that no
    longer accepts writes) goes FAILED within a tick: counted, later appends refused."""

    async def body() -> None:
        node, redex = await one_node()
        cfg = RedexFileConfig(
            path=str(tmp_path / "log"),
            replication=ReplicationConfig(
                factor=1, heartbeat_ms=50, placement=PlacementStrategy.pinned([node.node_id])
            ),
        )
        f = redex.open_file("lead", cfg)
        coord = redex.replication_coordinator_for("lead")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while coord.role is not ReplicaRole.LEADER:
            assert loop.time() < deadline, f"role {coord.role}"
            await asyncio.sleep(0.01)
        assert f.append(b"ok") == 0
        (tmp_path / "ro").write_bytes(b"")
        ro = os.open(tmp_path / "ro", os.O_RDONLY)
        os.dup2(ro, f._fd)  # the segment's descriptor now refuses writes (EBADF)
        os.close(ro)
        with pytest.raises(StorageFailed):
            f.append(b"lost")
        deadline = loop.time() + 5
        while coord.role is not ReplicaRole.FAILED:
            assert loop.time() < deadline, f"role {coord.role}"
            await asyncio.sleep(0.01)
        m = redex.replication_metrics_snapshot().channel("lead")
        assert m is not None and m.role == "FAILED" and m.storage_errors_total == 1
        with pytest.raises(StorageFailed):
            f.append(b"later")
        assert f.next_seq == 1
        redex.close()
        await node.shutdown()

    asyncio.run(body())


def test_quorum_batch_larger_than_retention_commits_on_real_nodes() -> None:
    """Issue 10 §4: 3 nodes, quorum, retention_max_events=100, one batch of 300: it
    commits (the runtime's executor sets the commit as the file's retention floor)."""
    from tests.replication.test_replication_e2e import build_nodes, poll

    async def body() -> None:
        nodes = await build_nodes(3)
        ids = [n.node_id for n in nodes]
        redexes = []
        for node in nodes:
            r = Redex()
            r.enable_replication(node)
            redexes.append(r)
        cfg = RedexFileConfig(
            retention_max_events=100,
            replication=ReplicationConfig(
                factor=3, heartbeat_ms=100, ack="quorum", placement=PlacementStrategy.pinned(ids)
            ),
        )
        files = [r.open_file("ret", cfg) for r in redexes]
        coords = [r.replication_coordinator_for("ret") for r in redexes]

        def leader() -> int | None:
            return next((i for i, c in enumerate(coords) if c.role is ReplicaRole.LEADER), None)

        await poll(lambda: leader() is not None, 10, "a leader")
        lead = leader()
        assert lead is not None
        files[lead].append_batch([b"e%d" % i for i in range(300)])
        await poll(lambda: all(c.commit_seq == 300 for c in coords), 10, "commit of 300")
        assert all(f.next_seq == 300 for f in files)
        m = redexes[lead].replication_metrics_snapshot().channel("ret")
        assert m is not None and m.behind_retention_total == 0
        files[lead].append(b"next")
        await poll(lambda: all(f.first_retained_seq >= 200 for f in files), 10, "retention")
        for r in redexes:
            r.close()
        for node in nodes:
            await node.shutdown()

    asyncio.run(body())


def test_an_in_process_channel_on_loopback_has_no_replication_budget() -> None:
    """Issue 17 §2: the "auto" NIC peak resolves in the runtime too (not only in node
    workers), so an in-process Redex on loopback replicates unbudgeted, while an
    explicit peak still applies."""

    async def body() -> None:
        node, redex = await one_node()
        pinned = PlacementStrategy.pinned([node.node_id])
        redex.open_file("auto", RedexFileConfig(replication=ReplicationConfig(placement=pinned)))
        explicit = ReplicationConfig(placement=pinned, nic_peak_bytes_per_s=10_000_000)
        redex.open_file("fixed", RedexFileConfig(replication=explicit))
        hub = redex._hub
        assert hub is not None
        assert ReplicationConfig().nic_peak_bytes_per_s == "auto"
        assert isinstance(hub.runtimes["auto"].coord.budget, UnlimitedBudget)
        assert not isinstance(hub.runtimes["fixed"].coord.budget, UnlimitedBudget)
        await node.shutdown()

    asyncio.run(body())


def test_a_malformed_sync_response_body_is_counted_and_changes_nothing() -> None:
    """Issue 17 §3: a SyncResponse carries its events as one packed body. A body whose
    lengths do not add up, sent over the wire on the channel's stream by the leader's
    own node, is a decode error counted in the replica's metrics and never reaches its
    log; the same message with a well-formed body is applied."""
    import msgpack

    from netmesh.log.packed import PackedPayloads
    from netmesh.replication import messages
    from tests.replication.test_replication_e2e import build_nodes, poll

    async def body() -> None:
        a, b = await build_nodes(2)
        ra, rb = Redex(), Redex()
        ra.enable_replication(a)
        rb.enable_replication(b)
        cfg = RedexFileConfig(
            replication=ReplicationConfig(
                factor=2,
                heartbeat_ms=100,
                placement=PlacementStrategy.pinned([a.node_id, b.node_id]),
                leader_pinned=a.node_id,
            )
        )
        fa, fb = ra.open_file("hostile", cfg), rb.open_file("hostile", cfg)
        ca = ra.replication_coordinator_for("hostile")
        await poll(lambda: ca.role is ReplicaRole.LEADER, 10, "a leads")
        fa.append_batch([b"x%d" % i for i in range(10)])
        await poll(lambda: fb.next_seq == 10, 10, "b holds 10")
        assert rb._hub is not None
        rt = rb._hub.runtimes["hostile"]

        def forged(count: int, events_body: bytes) -> bytes:
            term = ca.term
            fields = [messages.WIRE_VERSION, 3, term, 0, 10, term, 10, [[term, 0]]]
            return rt._mid + msgpack.packb([*fields, count, events_body], use_bin_type=True)

        good = PackedPayloads.of([b"y1", b"y22"]).body()
        bad = good[:-1]  # the lengths say one byte more than the body holds
        a.send(b.node_id, rt.kind, forged(2, bad))
        await poll(lambda: rt.metrics().decode_errors_total == 1, 5, "the decode error")
        assert fb.next_seq == 10
        a.send(b.node_id, rt.kind, forged(2, good))
        await poll(lambda: fb.next_seq == 12, 5, "the good body applied")
        assert fb.read_payloads(10, 12) == ([b"y1", b"y22"], 10)
        assert rt.metrics().decode_errors_total == 1
        ra.close()
        rb.close()
        await a.shutdown()
        await b.shutdown()

    asyncio.run(body())


def test_pushes_grow_to_1_mib_only_where_datagrams_are_large() -> None:
    """A push is lost whole when one of its datagrams is: at most PUSH_DATAGRAMS of
    the node's max_datagram (a 1400 B link keeps sync_chunk_bytes pushes), 1 MiB on
    a loopback cluster's 32 KiB datagrams."""
    from types import SimpleNamespace

    from netmesh.replication.runtime import PUSH_BYTES, PUSH_DATAGRAMS, push_bytes

    def node(datagram: int) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(max_datagram=datagram))

    assert push_bytes(node(32768)) == PUSH_BYTES == 1 << 20
    assert push_bytes(node(1400)) == PUSH_DATAGRAMS * 1400
    assert push_bytes(SimpleNamespace()) == PUSH_BYTES  # a node without a config

    async def body() -> None:
        for datagram, expected in ((1400, 256 * 1024), (32768, 1 << 20)):
            cfg = MeshNodeConfig("127.0.0.1:0", PSK, max_datagram=datagram)
            mesh = await MeshNode.create(EntityKeypair.generate(), cfg)
            mesh.start()
            redex = Redex()
            redex.enable_replication(mesh)
            pinned = PlacementStrategy.pinned([mesh.node_id])
            redex.open_file(
                "push", RedexFileConfig(replication=ReplicationConfig(placement=pinned))
            )
            hub = redex._hub
            assert hub is not None
            assert hub.runtimes["push"].coord.push_bytes == expected
            redex.close()
            await mesh.shutdown()

    asyncio.run(body())

"""A large push leaves the leader at once, before it reads and seals the next
follower's copy (issue 17 §3: a quorum commit waits for the first follower only)."""

from __future__ import annotations

import asyncio
from typing import Any

from netmesh import PlacementStrategy, RedexFileConfig, ReplicaRole, ReplicationConfig
from netmesh.replication.registry import Redex
from netmesh.replication.runtime import FLUSH_BYTES
from tests.replication.test_replication_e2e import build_nodes, poll


def test_a_large_push_is_sent_before_the_next_followers_copy_is_built() -> None:
    async def body() -> list[tuple[str, Any]]:
        nodes = await build_nodes(3)
        ids = [n.node_id for n in nodes]
        redexes = []
        for node in nodes:
            r = Redex()
            r.enable_replication(node)
            redexes.append(r)
        cfg = RedexFileConfig(
            replication=ReplicationConfig(
                factor=3, heartbeat_ms=100, ack="quorum", placement=PlacementStrategy.pinned(ids)
            )
        )
        files = [r.open_file("push", cfg) for r in redexes]
        coords = [r.replication_coordinator_for("push") for r in redexes]

        def leader() -> int | None:
            return next((i for i, c in enumerate(coords) if c.role is ReplicaRole.LEADER), None)

        await poll(lambda: leader() is not None, 10, "a leader")
        lead = leader()
        assert lead is not None
        files[lead].append(b"first")  # both followers streaming, nothing in flight
        await poll(lambda: all(f.next_seq == 1 for f in files), 10, "the first event")
        await poll(lambda: all(c.commit_seq == 1 for c in coords), 10, "its commit")
        node = nodes[lead]
        addr_of = {node.peer_addr(n): n for n in ids if n != node.node_id}
        events: list[tuple[str, Any]] = []
        send, sendto = node.send, node._sendto

        def spy_send(to: int, stream: str, message: bytes) -> None:
            events.append(("queued", to))
            send(to, stream, message)

        def spy_sendto(datagram: bytes, addr: Any) -> None:
            events.append(("datagram", addr_of.get(addr)))
            sendto(datagram, addr)

        node.send = spy_send  # type: ignore[method-assign]
        node._sendto = spy_sendto  # type: ignore[method-assign]
        batch = [b"x" * 64] * (FLUSH_BYTES // 64 + 1)  # one push well over FLUSH_BYTES
        files[lead].append_batch(batch)
        await poll(lambda: all(c.commit_seq == 1 + len(batch) for c in coords), 10, "commit")
        node.send, node._sendto = send, sendto  # type: ignore[method-assign]
        for r in redexes:
            r.close()
        for n in nodes:
            await n.shutdown()
        return events

    events = asyncio.run(body())
    queued = [to for kind, to in events if kind == "queued"]
    assert len(set(queued[:2])) == 2, events  # the push went to both followers
    first, second = queued[0], queued[1]
    i_second = events.index(("queued", second))
    assert ("datagram", first) in events[:i_second], events  # sent before the next copy

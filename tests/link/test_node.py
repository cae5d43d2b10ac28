"""MeshNode over real UDP loopback with real crypto (two and three nodes)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from netmesh import EntityKeypair, MeshNode, MeshNodeConfig
from netmesh.errors import ConfigError, LocalProtocolError, PayloadTooLarge
from netmesh.link.handshake import SessionKeys
from netmesh.link.peer import Peer
from netmesh.link.session import Session

PSK = bytes(range(32))
MAX_DGRAM = 1400


def cfg(**kw: Any) -> MeshNodeConfig:
    base: dict[str, Any] = dict(
        heartbeat_interval=0.05,
        session_timeout=0.6,
        handshake_retries=3,
        handshake_timeout=0.3,
        max_datagram=MAX_DGRAM,
    )
    base.update(kw)
    bind = base.pop("bind", "127.0.0.1:0")
    return MeshNodeConfig(bind, PSK, **base)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 30.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(main())


async def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.005)


async def link(server: MeshNode, client: MeshNode) -> None:
    await asyncio.gather(
        server.accept(client.node_id),
        client.connect(server.local_addr, server.public_key, server.node_id),
    )


def peer_of(node: MeshNode, node_id: int) -> Peer:
    """The link state ``node`` holds for ``node_id`` (must exist)."""
    peer = node.index.peer(node_id)
    assert peer is not None, f"{node_id:#x} is not a peer"
    return peer


def payload(rng: random.Random, max_size: int) -> bytes:
    """Log-uniform size in 1..max_size: many small, some multi-datagram."""
    size = int(math.exp(rng.uniform(0, math.log(max_size))))
    return rng.randbytes(size)


def digest(m: bytes) -> bytes:
    return hashlib.blake2b(m, digest_size=12).digest()


class Sink:
    """Records (from, channel, digest) in arrival order."""

    def __init__(self, node: MeshNode, channels: list[str]) -> None:
        self.got: dict[tuple[int, str], list[bytes]] = {}
        self.count = 0
        self.count_from: dict[int, int] = {}
        for ch in channels:
            node.subscribe_batch(ch, self._make(ch))

    def _make(self, ch: str) -> Callable[[int, list[bytes]], None]:
        def handler(src: int, msgs: list[bytes]) -> None:
            self.got.setdefault((src, ch), []).extend(digest(m) for m in msgs)
            self.count += len(msgs)
            self.count_from[src] = self.count_from.get(src, 0) + len(msgs)

        return handler


async def paced_send(
    sender: MeshNode,
    dst: int,
    sink: Sink,
    plan: list[tuple[str, bytes]],
    window: int = 1500,
    chunk: int = 300,
) -> None:
    """Flow control done by the test: keep at most `window` messages from `sender`
    in flight to `dst` (counted per source, so senders sharing a sink don't mix)."""
    src = sender.node_id
    base = sink.count_from.get(src, 0)
    sent = 0
    for i in range(0, len(plan), chunk):
        for ch, m in plan[i : i + chunk]:
            sender.send(dst, ch, m)
        sent += len(plan[i : i + chunk])
        await asyncio.sleep(0)
        await wait_for(
            lambda s=sent: sink.count_from.get(src, 0) - base >= s - window,
            20.0,
            "receiver progress",
        )


def test_two_nodes_exchange_100k_messages_intact_and_in_order() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        try:
            await link(b, a)
            a.start()
            b.start()
            chans = ["orders", "repl/x"]
            sink_a, sink_b = Sink(a, chans), Sink(b, chans)
            rng = random.Random(7)
            plans = {}
            for src in (a, b):
                plans[src.node_id] = [
                    (rng.choice(chans), payload(rng, 4 * MAX_DGRAM)) for _ in range(50_000)
                ]
            await asyncio.gather(
                paced_send(a, b.node_id, sink_b, plans[a.node_id]),
                paced_send(b, a.node_id, sink_a, plans[b.node_id]),
            )
            await wait_for(lambda: sink_a.count == sink_b.count == 50_000, 20.0, "all messages")
            for src, sink in ((a, sink_b), (b, sink_a)):
                for ch in chans:
                    expected = [digest(m) for c, m in plans[src.node_id] if c == ch]
                    assert sink.got[(src.node_id, ch)] == expected
            ma, mb = a.metrics(), b.metrics()
            assert ma["messages_out"] == mb["messages_in"] == 50_000
            assert ma["datagrams_out"] < 50_000  # batched: fewer datagrams than messages
            assert all(v == 0 for k, v in mb["drops"].items()), mb["drops"]
            assert max(len(m) for _, m in plans[a.node_id]) > 2 * MAX_DGRAM  # fragments used
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body, 50.0)


def test_three_nodes_full_mesh_exchange_100k_messages_intact_and_in_order() -> None:
    async def body() -> None:
        nodes = [await MeshNode.create(EntityKeypair.generate(), cfg()) for _ in range(3)]
        try:
            a, b, c = nodes
            await link(b, a)
            await asyncio.gather(
                c.accept(a.node_id),
                c.accept(b.node_id),
                a.connect(c.local_addr, c.public_key, c.node_id),
                b.connect(c.local_addr, c.public_key, c.node_id),
            )
            for n in nodes:
                n.start()
            for n in nodes:
                assert sorted(n.peers()) == sorted(m.node_id for m in nodes if m is not n)
            chans = ["m", "repl/y"]
            sinks = {n.node_id: Sink(n, chans) for n in nodes}
            rng = random.Random(3)
            pairs = [(s.node_id, d.node_id) for s in nodes for d in nodes if s is not d]
            total = 100_000  # in total over the six directed links
            plans = {
                pair: [
                    (rng.choice(chans), payload(rng, 4 * MAX_DGRAM))
                    for _ in range(total // 6 + (k < total % 6))
                ]
                for k, pair in enumerate(pairs)
            }
            assert sum(map(len, plans.values())) == total
            by_id = {n.node_id: n for n in nodes}
            await asyncio.gather(
                *(paced_send(by_id[s], d, sinks[d], plans[(s, d)], window=700) for s, d in pairs)
            )
            expected = {
                n.node_id: sum(len(p) for (_, d), p in plans.items() if d == n.node_id)
                for n in nodes
            }
            await wait_for(
                lambda: all(sinks[n].count == expected[n] for n in expected), 20.0, "all messages"
            )
            for (s, d), plan in plans.items():
                for ch in chans:
                    assert sinks[d].got[(s, ch)] == [digest(m) for c, m in plan if c == ch]
            assert sum(n.metrics()["messages_in"] for n in nodes) == total  # type: ignore[misc]
            for n in nodes:
                assert all(v == 0 for v in n.metrics()["drops"].values()), n.metrics()["drops"]
            assert max(len(m) for p in plans.values() for _, m in p) > 2 * MAX_DGRAM
        finally:
            for n in nodes:
                await n.shutdown()

    run(body, 50.0)


def test_peer_down_then_rejoins_after_restart() -> None:
    async def body() -> None:
        ka, kb = EntityKeypair.generate(), EntityKeypair.generate()
        a = await MeshNode.create(ka, cfg())
        b = await MeshNode.create(kb, cfg())
        events: list[tuple[int, bytes]] = []
        a.subscribe("peer", lambda nid, ev: events.append((nid, ev)))
        got: list[bytes] = []
        b2 = None
        try:
            await link(b, a)
            a.start()
            b.start()
            assert events == [(b.node_id, b"up")]
            port = b.local_addr[1]
            await b.shutdown()
            await wait_for(lambda: not a.peer_is_up(b.node_id), 10.0, "down")
            assert events[-1] == (b.node_id, b"down")
            assert b.node_id not in a.peers()
            # same keypair, same port; a's reconnect probes find it via allowed_peers
            b2 = await MeshNode.create(
                kb, cfg(bind=f"127.0.0.1:{port}", allowed_peers={a.node_id: a.public_key})
            )
            b2.subscribe("m", lambda nid, m: got.append(m))
            b2.start()
            await wait_for(lambda: a.peer_is_up(b.node_id), 10.0, "back up")
            assert events[-1] == (b.node_id, b"up")
            a.send(b.node_id, "m", b"after restart")
            await wait_for(lambda: got == [b"after restart"], 10.0)
        finally:
            await a.shutdown()
            await b.shutdown()
            if b2 is not None:
                await b2.shutdown()

    run(body)


def test_restarted_node_reconnects_on_another_port() -> None:
    async def body() -> None:
        ka, kb = EntityKeypair.generate(), EntityKeypair.generate()
        a = await MeshNode.create(ka, cfg())
        b = await MeshNode.create(kb, cfg())
        got: list[tuple[int, bytes]] = []
        a.subscribe("m", lambda nid, m: got.append((nid, m)))
        b2 = None
        try:
            await link(a, b)  # b initiated
            a.start()
            b.start()
            await b.shutdown()
            b2 = await MeshNode.create(kb, cfg())  # new port
            await b2.connect(a.local_addr, a.public_key, a.node_id)  # a knows b's key
            b2.start()
            b2.send(a.node_id, "m", b"hi")
            await wait_for(lambda: got == [(b.node_id, b"hi")], 10.0)
            assert a.peer_addr(b.node_id) == b2.local_addr
        finally:
            for n in (a, b, b2):
                if n is not None:
                    await n.shutdown()

    run(body)


def test_block_and_unblock_peer() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        got: list[bytes] = []
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            await link(b, a)
            a.start()
            b.start()
            a.block_peer(b.node_id)
            a.send(b.node_id, "m", b"lost")
            await wait_for(
                lambda: not a.peer_is_up(b.node_id) and not b.peer_is_up(a.node_id),
                10.0,
                "both sides down",
            )
            assert got == []
            assert a.metrics()["drops"]["blocked"] >= 1
            a.unblock_peer(b.node_id)
            await wait_for(
                lambda: a.peer_is_up(b.node_id) and b.peer_is_up(a.node_id), 10.0, "both up again"
            )
            a.send(b.node_id, "m", b"through")
            await wait_for(lambda: got == [b"through"], 10.0)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_runtime_allowed_peer_and_accept_after_start() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg(handshake_retries=1))
        c = await MeshNode.create(EntityKeypair.generate(), cfg())
        try:
            c.start()
            with pytest.raises(LocalProtocolError):
                await c.accept(a.node_id)
            from netmesh.errors import HandshakeError

            with pytest.raises(HandshakeError):
                await a.connect(c.local_addr, c.public_key, c.node_id)
            assert c.metrics()["drops"]["wrong_psk_or_key"] >= 1  # unexpected initiator
            c.add_allowed_peer(a.node_id, a.public_key)
            assert await a.connect(c.local_addr, c.public_key, c.node_id) == c.node_id
            await wait_for(lambda: c.peer_is_up(a.node_id), 10.0)
        finally:
            await a.shutdown()
            await c.shutdown()

    run(body)


def test_rekey_replaces_sessions_while_traffic_flows() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=0.35))
        b = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=0.35))
        got: list[bytes] = []
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            await link(b, a)
            a.start()
            b.start()
            first = peer_of(a, b.node_id).current
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15.0
            i = 0
            while a.metrics()["handshakes_completed"] < 3:
                a.send(b.node_id, "m", b"%d" % i)  # one message per datagram
                i += 1
                await asyncio.sleep(0.01)  # pacing, not synchronisation
                assert loop.time() < deadline, "no rekey happened"
            assert peer_of(a, b.node_id).current is not first
            a.send(b.node_id, "m", b"last")
            await wait_for(lambda: got and got[-1] == b"last", 10.0)
            sent = [b"%d" % k for k in range(i)] + [b"last"]
            # no duplicates, no reordering: what arrived is a subsequence of what was sent
            pos = {m: k for k, m in enumerate(sent)}
            assert all(m in pos for m in got)
            assert [pos[m] for m in got] == sorted({pos[m] for m in got})
            # a handful may be lost at a session switch, and every loss is accounted for
            lost = len(sent) - len(got)
            assert lost <= 5, f"{lost} of {len(sent)} messages lost across 2 rekeys"
            accounted = (
                a.metrics()["drops"]["no_session"]  # type: ignore[index]
                + sum(b.metrics()["drops"].values())
            )  # type: ignore[union-attr]
            assert lost <= accounted, (lost, a.metrics()["drops"], b.metrics()["drops"])
            assert a.peer_is_up(b.node_id) and b.peer_is_up(a.node_id)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_api_misuse_and_config_validation() -> None:
    async def body() -> None:
        with pytest.raises(ConfigError):
            await MeshNode.create(EntityKeypair.generate(), MeshNodeConfig("127.0.0.1:0", b"x"))
        with pytest.raises(ConfigError):
            await MeshNode.create(EntityKeypair.generate(), cfg(max_datagram=100))
        a = await MeshNode.create(
            EntityKeypair.generate(), cfg(max_message=1000, reassembly_bytes=1000)
        )
        try:
            with pytest.raises(LocalProtocolError):
                a.send(12345, "m", b"x")
            assert a.local_addr[0] == "127.0.0.1" and a.local_addr[1] > 0
            b = await MeshNode.create(EntityKeypair.generate(), cfg())
            try:
                await link(b, a)
                with pytest.raises(LocalProtocolError):
                    a.send(b.node_id, "peer", b"x")
                with pytest.raises(PayloadTooLarge):
                    a.send(b.node_id, "m", bytes(1001))
            finally:
                await b.shutdown()
        finally:
            await a.shutdown()
        from netmesh.errors import Closed

        with pytest.raises(Closed):
            a.send(1, "m", b"")

    run(body)


async def _steady_traffic(
    src: MeshNode, dst: MeshNode, seconds: float, events: list[tuple[str, bytes]]
) -> tuple[int, list[bytes]]:
    """Send one message per 10 ms from src to dst for ``seconds``; returns (sent, got)."""
    got: list[bytes] = []
    dst.subscribe("m", lambda nid, m: got.append(m))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sent = 0
    while loop.time() < end:
        src.send(dst.node_id, "m", b"%d" % sent)
        sent += 1
        await asyncio.sleep(0.01)  # pacing, not synchronisation
    src.send(dst.node_id, "m", b"last")
    await wait_for(lambda: got and got[-1] == b"last", 5.0, "last message")
    return sent + 1, got


def _watch(nodes: list[MeshNode]) -> list[tuple[str, bytes]]:
    events: list[tuple[str, bytes]] = []
    for n in nodes:
        n.subscribe("peer", lambda nid, ev, n=n: events.append((f"{n.node_id:x}", ev)))
    return events


def test_crossed_handshakes_settle_on_the_lower_id_and_keep_rekeying() -> None:
    # both ends connect at once; before the fix both kept the session the *other*
    # initiated, nobody rekeyed and the link went down every reject_after_time
    async def body() -> None:
        rekey = 0.6  # sessions refused after 0.9 s
        a = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=rekey))
        b = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=rekey))
        try:
            a.add_allowed_peer(b.node_id, b.public_key)
            b.add_allowed_peer(a.node_id, a.public_key)
            a.start()
            b.start()
            events = _watch([a, b])
            await asyncio.gather(
                a.connect(b.local_addr, b.public_key, b.node_id),
                b.connect(a.local_addr, a.public_key, a.node_id),
            )
            low, high = sorted((a, b), key=lambda n: n.node_id)
            pl, ph = peer_of(low, high.node_id), peer_of(high, low.node_id)

            def settled() -> bool:
                cl, ch = pl.current, ph.current
                return (
                    cl is not None
                    and ch is not None
                    and cl.is_initiator
                    and not ch.is_initiator
                    and cl.remote_index == ch.local_index
                )

            # well before any rekey could: the tie-break, not the responder fallback
            await wait_for(settled, rekey, "the lower id's session on both ends")
            sent, got = await _steady_traffic(a, b, 4 * rekey * 1.5, events)
            assert got == [b"%d" % i for i in range(sent - 1)] + [b"last"]
            assert [e for e in events if e[1] == b"down"] == []
            assert low.metrics()["handshakes_initiated"] >= 1 + 3  # connect + rekeys
            assert a.peer_is_up(b.node_id) and b.peer_is_up(a.node_id)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_responder_rekeys_when_the_initiator_does_not() -> None:
    # a initiates but (its config) would rekey only after 100 s; b's sessions expire
    # after 0.9 s, so b has to rekey as the responder, with no loss and no down event
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=100.0))
        b = await MeshNode.create(EntityKeypair.generate(), cfg(rekey_after_time=0.6))
        try:
            await link(b, a)
            a.start()
            b.start()
            assert not peer_of(b, a.node_id).current.is_initiator  # type: ignore[union-attr]
            events = _watch([a, b])
            sent, got = await _steady_traffic(a, b, 2.5, events)
            assert got == [b"%d" % i for i in range(sent - 1)] + [b"last"]
            assert events == []
            assert b.metrics()["handshakes_initiated"] >= 2
            assert b.metrics()["drops"]["expired"] == 0
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_no_rekey_towards_a_blocked_peer() -> None:
    async def body() -> None:
        a = await MeshNode.create(
            EntityKeypair.generate(), cfg(rekey_after_time=50.0, session_timeout=1000.0)
        )
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        try:
            await link(b, a)
            peer = peer_of(a, b.node_id)
            s = peer.current
            assert s is not None and s.is_initiator
            due = s.created + 50.0 + 0.001  # explicit clock: no waiting
            before = a.metrics()["handshakes_initiated"]
            a.block_peer(b.node_id)
            peer.tick(due)
            assert peer.pending is None and a.metrics()["handshakes_initiated"] == before
            a.unblock_peer(b.node_id)
            peer.tick(due)
            assert peer.pending is not None and a.metrics()["handshakes_initiated"] == before + 1
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_fragments_never_splice_across_a_sender_restart() -> None:
    async def body() -> None:
        ka = EntityKeypair.generate()
        slow = dict(session_timeout=5.0, heartbeat_interval=0.2)
        a = await MeshNode.create(ka, cfg(**slow))
        b = await MeshNode.create(
            EntityKeypair.generate(), cfg(allowed_peers={ka.node_id: ka.public_key}, **slow)
        )
        a2 = None
        got: list[bytes] = []
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            await link(b, a)
            a.start()
            b.start()
            # lose exactly the 2nd fragment of a multi-datagram message
            orig, count = a._sendto, [0]

            def lossy(dg: bytes, addr: Any) -> None:
                count[0] += 1
                if count[0] != 2:
                    orig(dg, addr)

            a._sendto = lossy  # type: ignore[method-assign]
            a.send(b.node_id, "m", b"A" * 4000)
            a.flush()
            bpeer = peer_of(b, ka.node_id)
            await wait_for(lambda: bpeer.reassembler.pending == 1, 5.0, "partial message")
            old = bpeer.current
            old_frag_id = peer_of(a, b.node_id).frag_id
            await a.shutdown()
            assert len(a.index) == 0  # shutdown closes every link
            # restarted within session_timeout: b still holds the old session
            a2 = await MeshNode.create(ka, cfg(**slow))
            assert len(a2.index) == 0
            await a2.connect(b.local_addr, b.public_key, b.node_id)
            a2.start()
            await wait_for(lambda: bpeer.current is not old, 5.0, "new session on b")
            assert peer_of(a2, b.node_id).frag_id != old_frag_id
            a2.send(b.node_id, "m", b"B" * 4000)
            a2.send(b.node_id, "m", b"end")
            await wait_for(lambda: got and got[-1] == b"end", 5.0, "end marker")
            assert got == [b"B" * 4000, b"end"]
        finally:
            for n in (a, a2, b):
                if n is not None:
                    await n.shutdown()

    run(body)


def test_fragment_ids_start_at_random_values() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        try:
            await link(b, a)
            starts = {peer_of(a, b.node_id).frag_id, peer_of(b, a.node_id).frag_id}
            assert len(starts) == 2 and all(0 <= s < 1 << 62 for s in starts)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_a_session_without_an_address_is_a_counted_drop_not_a_crash() -> None:
    # before: the None address reached sendto inside the flush callback (TypeError),
    # which also lost the messages of every later peer in the same flush
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        got: list[bytes] = []
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            await link(b, a)
            kx = EntityKeypair.generate()
            ghost = a._peer_for(kx.node_id, kx.public_key, None)
            keys = SessionKeys(bytes(32), bytes(32), kx.public_key, bytes(32), True)
            s = Session(keys, a.index.alloc(), 1, a.now())
            a.index.add_session(s.local_index, ghost, s)
            ghost.slots.initiator_done(s, 0.0, a.node_id, kx.node_id)
            assert ghost.usable_session() is s and ghost.addr is None
            a.send(kx.node_id, "m", b"nowhere")
            a.send(b.node_id, "m", b"somewhere")
            a.flush()
            assert a.metrics()["drops"]["no_session"] == 1
            await wait_for(lambda: got == [b"somewhere"], 5.0)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)

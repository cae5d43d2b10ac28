"""Hostile and broken input over real UDP: every bad datagram is dropped and counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import replace
from typing import Any

import pytest

from netmesh import EntityKeypair, MeshNode
from netmesh.errors import AuthenticationError, HandshakeError, TransportError
from netmesh.link import codec
from netmesh.link.cookie import cookie_key, open_cookie
from netmesh.link.handshake import mac1_key
from tests.link.test_node import cfg, link, peer_of, run, wait_for


def capture(node: MeshNode) -> list[bytes]:
    """Record every datagram ``node`` sends (a tap on its transport)."""
    seen: list[bytes] = []
    t = node._transport
    assert t is not None
    orig = t.sendto

    def tap(data: bytes, addr: Any) -> None:
        seen.append(data)
        orig(data, addr)

    t.sendto = tap  # type: ignore[method-assign]
    return seen


def test_bad_datagrams_are_dropped_counted_and_traffic_continues() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        got: list[bytes] = []
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            sent = capture(a)
            await link(b, a)
            a.start()
            b.start()
            a.send(b.node_id, "m", b"one")
            await wait_for(lambda: got == [b"one"])
            data = next(
                d
                for d in reversed(sent)
                if d[1] == codec.TYPE_DATA and len(d) > codec.DATA_OVERHEAD + 1
            )
            initiation = next(d for d in sent if d[1] == codec.TYPE_INITIATION)
            drops = b.metrics()["drops"]
            assert all(v == 0 for v in drops.values()), drops
            # a fresh counter, or the replay pre-check refuses it before decrypting
            fresh = (int.from_bytes(data[8:16], "little") + 1000).to_bytes(8, "little")
            tampered = bytearray(data)
            tampered[8:16] = fresh
            tampered[-5] ^= 0x40
            zeroed = data[:8] + fresh + bytes(len(data) - 16)
            unknown = bytearray(data)
            unknown[4:8] = (int.from_bytes(data[4:8], "little") ^ 0x5A5A).to_bytes(4, "little")
            b_mac = mac1_key(b.config.psk, b.public_key)
            other_index = bytearray(initiation)
            other_index[4] ^= 1  # mac1 covers the sender index
            cases = {
                "tampered": [bytes(tampered), zeroed],
                "replayed": [data, data, initiation],
                "truncated": [data[:20], b"\x01", initiation[:50]],
                "oversized": [bytes(b.config.max_datagram + 1)],
                "unknown_session": [bytes(unknown)],
                "decode": [b"\x07garbage", b"\x01\x09" + bytes(40), bytes(initiation) + b"x"],
                "bad_handshake": [
                    codec.encode_response(1, 2, bytes(48), b_mac),
                    codec.encode_cookie_reply(1, bytes(12), bytes(32)),  # nothing pending
                ],
                "bad_mac": [
                    codec.encode_response(1, 2, bytes(48)),
                    codec.encode_initiation(1, initiation[8:-32]),
                    codec.encode_response(1, 2, bytes(48), mac1_key(bytes(32), b.public_key)),
                    bytes(other_index),
                ],
            }
            for _, datagrams in cases.items():
                for d in datagrams:
                    raw.sendto(d, b.local_addr)
            # traffic continues through the storm
            a.send(b.node_id, "m", b"two")
            want = {k: len(v) for k, v in cases.items()}
            await wait_for(
                lambda: (
                    all(b.metrics()["drops"][k] >= n for k, n in want.items())
                    and got == [b"one", b"two"]
                ),
                10.0,
                "drops counted",
            )
            assert b.metrics()["drops"] == {**drops, **want}
            assert b.peer_is_up(a.node_id) and a.peer_is_up(b.node_id)
            b.send(a.node_id, "m", b"back")
            await wait_for(lambda: a.metrics()["messages_in"] == 1, 10.0)
        finally:
            raw.close()
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_wrong_psk_connect_fails_in_bounded_time() -> None:
    async def body() -> None:
        a = await MeshNode.create(
            EntityKeypair.generate(), cfg(handshake_retries=2, handshake_timeout=0.2)
        )
        kb = EntityKeypair.generate()
        b_cfg = replace(cfg(allowed_peers={a.node_id: a.public_key}), psk=bytes(32))
        b = await MeshNode.create(kb, b_cfg)
        try:
            b.start()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(HandshakeError):
                await a.connect(b.local_addr, b.public_key, b.node_id)
            elapsed = loop.time() - t0
            # retried rather than failed at once, and bounded rather than a hang: the
            # nominal time is retries * timeout = 0.4 s; allow 10x for a loaded machine
            assert 0.3 <= elapsed < 10 * 2 * 0.2
            # b cannot check the mac1 without a's PSK: refused before any DH, no answer
            assert b.metrics()["drops"]["bad_mac"] == 2  # one per attempt
            assert b.metrics()["drops"]["wrong_psk_or_key"] == 0
            assert a.metrics()["handshakes_initiated"] == 2
            assert not b.peer_is_up(a.node_id) and b.peers() == []
            assert a.peers() == []
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_unexpected_static_keys_are_refused() -> None:
    async def body() -> None:
        fast = dict(handshake_retries=1, handshake_timeout=0.2)
        a = await MeshNode.create(EntityKeypair.generate(), cfg(**fast))
        b = await MeshNode.create(EntityKeypair.generate(), cfg(**fast))
        c = EntityKeypair.generate()
        try:
            # responder expects c, a shows up instead
            accept = asyncio.ensure_future(b.accept(c.node_id))
            with pytest.raises(HandshakeError):
                await a.connect(b.local_addr, b.public_key, b.node_id)
            assert b.metrics()["drops"]["wrong_psk_or_key"] == 1
            assert not accept.done()
            accept.cancel()
            # initiator expects c's key at b's address: the mac1 is keyed for c
            with pytest.raises(HandshakeError):
                await a.connect(b.local_addr, c.public_key, c.node_id)
            assert b.metrics()["drops"]["wrong_psk_or_key"] == 1
            assert b.metrics()["drops"]["bad_mac"] == 1
            # a key that does not hash to the claimed id is refused before sending
            with pytest.raises(HandshakeError):
                await a.connect(b.local_addr, c.public_key, b.node_id)
            assert a.metrics()["handshakes_initiated"] == 2
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_bind_conflict_raises_transport_error() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        try:
            with pytest.raises(TransportError):
                await MeshNode.create(
                    EntityKeypair.generate(), cfg(bind=f"127.0.0.1:{a.local_addr[1]}")
                )
        finally:
            await a.shutdown()

    run(body)


def test_datagrams_never_exceed_max_datagram() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg(max_datagram=600))
        b = await MeshNode.create(EntityKeypair.generate(), cfg(max_datagram=600))
        got: list[bytes] = []
        b.subscribe_batch("m", lambda nid, ms: got.extend(ms))
        try:
            sent = capture(a)
            await link(b, a)
            msgs = [bytes([i % 256]) * (i * 37 % 3000) for i in range(300)]
            a.send_many(b.node_id, "m", msgs)
            await wait_for(lambda: len(got) == 300, 10.0)
            assert got == msgs
            assert max(len(d) for d in sent) <= 600
            assert a.metrics()["datagrams_out"] == len(sent)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_peer_cannot_forge_peer_events_on_the_reserved_stream() -> None:
    """An authenticated peer that bypasses ``send``'s check and writes entries on the
    reserved "peer" channel (a fake "down", and a fragmented message) reaches no
    subscriber and no reassembly buffer; the entries are counted and the link lives on."""

    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        events: list[tuple[int, bytes]] = []
        batches: list[list[bytes]] = []
        got: list[bytes] = []
        b.subscribe("peer", lambda nid, ev: events.append((nid, ev)))
        b.subscribe_batch("peer", lambda nid, evs: batches.append(evs))
        b.subscribe("m", lambda nid, m: got.append(m))
        try:
            await link(b, a)
            a.start()
            b.start()
            assert events == [(a.node_id, b"up")]
            events.clear()
            batches.clear()
            peer = peer_of(a, b.node_id)
            session = peer.usable_session()
            assert session is not None
            budget = a.config.max_datagram - codec.DATA_OVERHEAD
            # what a modified peer would send: one run of small forged events plus one
            # forged event too large for a datagram (fragments), then honest traffic
            bodies, _ = codec.pack_bodies(
                [("peer", [b"down", b"down"]), ("peer", [b"d" * (3 * budget)]), ("m", [b"after"])],
                budget,
                1 << 30,
            )
            entries = [e for bd in bodies for e in codec.unpack_body(bd)]
            forged = sum(1 for e in entries if e[1] == "peer")
            assert forged >= 3 and any(e[0] != codec.ENTRY_MESSAGES for e in entries)
            now = asyncio.get_running_loop().time()
            for bd in bodies:
                a.transmit(peer, session.seal(bd, now))
            await wait_for(lambda: got == [b"after"], 10.0, "honest message after the forgery")
            assert events == [] and batches == []
            drops = b.metrics()["drops"]
            assert drops["reserved_stream"] == forged
            assert all(v == 0 for k, v in drops.items() if k != "reserved_stream"), drops
            assert peer_of(b, a.node_id).reassembler.pending == 0
            assert b.peer_is_up(a.node_id)
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_handshakes_without_a_valid_mac1_never_reach_diffie_hellman() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sent = capture(a)
            await link(b, a)
            initiation = next(d for d in sent if d[1] == codec.TYPE_INITIATION)

            class NoDH:
                def new(self) -> Any:
                    raise AssertionError("DH work for a bad mac1")

            real = b._responder_template
            b._responder_template = NoDH()  # type: ignore[assignment]
            # well-formed Noise message, wrong or missing mac1: what an attacker
            # who knows b's public key but not the PSK can send
            forged = [
                codec.encode_initiation(5, initiation[8:-32]),
                codec.encode_initiation(5, initiation[8:-32], mac1_key(bytes(32), b.public_key)),
                initiation[:-17] + bytes([initiation[-17] ^ 1]) + initiation[-16:],
            ]
            for d in forged:
                raw.sendto(d, b.local_addr)
            await wait_for(lambda: b.metrics()["drops"]["bad_mac"] == 3, 10.0)
            b._responder_template = real
            assert b.metrics()["drops"]["replayed"] == 0
        finally:
            raw.close()
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_initiations_past_the_node_budget_get_cookie_replies_not_dh() -> None:
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg(handshake_rate=1.0))
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        try:
            sent = capture(a)
            await link(b, a)  # spends b's single token
            initiation = next(d for d in sent if d[1] == codec.TYPE_INITIATION)
            for _ in range(5):
                raw.sendto(initiation, b.local_addr)
            replies: list[bytes] = []

            def drain() -> bool:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        replies.append(raw.recv(2048))
                return len(replies) >= 5

            await wait_for(drain, 10.0, "five cookie replies")
            drops = b.metrics()["drops"]
            assert drops["under_load"] == 5 and drops["replayed"] == 0  # no DH work
            assert b.metrics()["cookies_sent"] == 5
            key = cookie_key(b.config.psk, b.public_key)
            mac1 = codec.mac1_of(initiation)
            cookies = set()
            for r in replies:
                msg = codec.decode(r)
                assert isinstance(msg, codec.CookieReply)
                assert msg.receiver_index == codec.decode(initiation).sender_index  # type: ignore[union-attr]
                cookies.add(
                    open_cookie(key, msg.nonce, msg.sealed_cookie, codec.mac1_of(initiation))
                )
                # without the PSK (a replaying attacker) the cookie does not open
                with pytest.raises(AuthenticationError):
                    open_cookie(
                        cookie_key(bytes(32), b.public_key),
                        msg.nonce,
                        msg.sealed_cookie,
                        mac1,
                    )
            assert len(cookies) == 1  # one cookie per source address and secret
            assert b.peer_is_up(a.node_id)
        finally:
            raw.close()
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_an_initiation_from_elsewhere_does_not_move_the_peer() -> None:
    # a fresh initiation of a, relayed by someone else (it is not authenticated
    # until its session confirms): b answers the relay but keeps a's address
    async def body() -> None:
        a = await MeshNode.create(EntityKeypair.generate(), cfg())
        b = await MeshNode.create(EntityKeypair.generate(), cfg())
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind(("127.0.0.1", 0))
        relay.setblocking(False)
        try:
            await link(b, a)
            a.start()
            b.start()
            t = a._transport
            assert t is not None
            orig, held = t.sendto, []
            t.sendto = lambda data, addr: held.append(data)  # type: ignore[method-assign]
            peer_of(a, b.node_id).begin_handshake(a.now())
            t.sendto = orig  # type: ignore[method-assign]
            assert len(held) == 1 and held[0][1] == codec.TYPE_INITIATION
            relay.sendto(held[0], b.local_addr)
            replies: list[bytes] = []

            def replied() -> bool:
                with contextlib.suppress(BlockingIOError):
                    replies.append(relay.recv(2048))
                return bool(replies)

            await wait_for(replied, 10.0, "b answers the source of the initiation")
            assert replies[0][1] == codec.TYPE_RESPONSE
            assert b.peer_addr(a.node_id) == a.local_addr
            got: list[bytes] = []
            a.subscribe("m", lambda nid, m: got.append(m))
            b.send(a.node_id, "m", b"still here")
            await wait_for(lambda: got == [b"still here"], 10.0)
        finally:
            relay.close()
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_a_wrong_psk_is_named_in_the_error_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A misconfigured peer (another PSK) is named: in the connect error, and in the
    log once per host and window, not once per datagram (a new-user trial saw a wrong
    PSK look exactly like a host that is down)."""

    async def body() -> None:
        fast = dict(handshake_retries=2, handshake_timeout=0.1)
        a = await MeshNode.create(EntityKeypair.generate(), cfg(**fast))
        b = await MeshNode.create(EntityKeypair.generate(), replace(cfg(**fast), psk=bytes(32)))
        try:
            with caplog.at_level(logging.WARNING, logger="netmesh.link.node"):
                for _ in range(2):
                    with pytest.raises(HandshakeError, match="different psk"):
                        await b.connect(a.local_addr, a.public_key, a.node_id)
            # mac1 is keyed by the responder's key and the PSK: the responder drops
            # each initiation before any DH (2 connects x 2 tries) and says so once
            assert a.metrics()["drops"]["bad_mac"] == 4
            lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
            assert len(lines) == 1 and "psk" in lines[0] and "127.0.0.1" in lines[0]
        finally:
            await a.shutdown()
            await b.shutdown()

    run(body)


def test_a_run_of_datagrams_ends_with_one_batch_end_call() -> None:
    """The queued datagrams of one readiness event are handed over, then
    ``on_batch_end`` runs once (the node flushes the replies they queued then)."""
    from netmesh.link.transport import UdpTransport

    async def body() -> list[str]:
        seen: list[str] = []
        t = await UdpTransport.bind(
            "127.0.0.1",
            0,
            lambda data, _addr: seen.append(data.decode()),
            1 << 16,
            1 << 16,
            lambda: seen.append("end"),
        )
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(3):  # queued before the loop looks: one readiness event
                s.sendto(b"%d" % i, t.local_addr)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while "end" not in seen:
                assert loop.time() < deadline, f"no batch end: {seen}"
                await asyncio.sleep(0.01)
            return seen
        finally:
            s.close()
            await t.close()

    assert asyncio.run(body()) == ["0", "1", "2", "end"]

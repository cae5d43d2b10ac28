"""MeshNode: an encrypted UDP endpoint that links to peers and carries messages.

Lifecycle (as the reference): ``node = await MeshNode.create(keypair, config)`` →
``connect``/``accept`` → ``start()`` → traffic → ``await shutdown()``.

Messages and streams
    A *stream* is a named flow of messages between two nodes (``"redex/orders"``,
    ``"peer"``); it is not a channel (a channel is an event log, ``netmesh.log``).
    ``send(node_id, stream, message)`` / ``send_many(node_id, stream, messages)``
    queue bytes for a peer; everything queued in one event-loop turn is flushed once
    per peer at the end of the turn, packed into as few datagrams as fit
    ``max_datagram`` (one msgpack call and one AEAD call per datagram). What the
    handlers of a run of received datagrams queue (replies: acks, votes) is flushed
    as soon as that run is handled, without waiting for the end of the turn. A message
    that fits no datagram is split into fragments and reassembled by the receiver
    (bounded memory, ``config.reassembly_bytes`` per peer).

Delivery guarantees (best-effort datagrams, like the reference)
    * integrity and authenticity: a delivered message is exactly what the peer sent;
    * no duplicates: each datagram is accepted once (replay window);
    * no loss recovery: a datagram lost by the network or a full socket buffer is
      lost; the replication layer recovers through SyncRequest. Messages sent while
      a peer has no confirmed session are dropped and counted ("no_session");
    * order: netmesh never reorders. Messages to one peer leave in ``send`` order
      (across streams too); the network may reorder datagrams (loopback does not),
      and a reordered datagram is still delivered if it is within the window.

Handlers
    ``subscribe(kind, handler)``: ``handler(from_node_id: int, message: bytes)`` per
    message on stream ``kind``; ``subscribe_batch(kind, handler)``:
    ``handler(from_node_id, messages: list[bytes])`` once per datagram run. Handlers
    run synchronously in the event loop, must not block, and may call ``send``;
    exceptions are logged and counted ("handler_errors"), never propagated.
    Kind ``"peer"`` (``PEER_EVENTS``) is reserved: its handlers get
    ``(node_id, b"up")`` when a peer's session becomes live and ``(node_id, b"down")``
    when it has been silent for ``session_timeout``. Nobody can send on it: ``send``
    refuses it locally, and entries a peer sends on it are dropped and counted
    ("reserved_stream") so a peer cannot forge peer events.

Bad input (tampered, truncated, replayed, oversized, unknown-session datagrams,
handshakes with a wrong PSK or an unexpected static key) is dropped, logged at debug
and counted in ``metrics()["drops"]`` by reason; it never disturbs sessions.

Handshake flood resistance (WireGuard whitepaper section 5.3)
    Every handshake datagram carries a mac1 (see ``netmesh.link.handshake``) that only
    PSK holders knowing our static public key can compute; it is checked with one
    keyed hash before any Diffie-Hellman ("bad_mac" drops). An initiation that passes
    it goes through a :class:`~netmesh.link.cookie.HandshakeGate`: without a cookie it
    needs a token of its source IP (``handshake_rate_per_source``) and of the node
    (``handshake_rate``); when either is spent the node answers with a cookie reply
    instead of doing DH ("under_load" drops, ``cookies_sent``). A legitimate initiator
    resends at once with mac2 (the cookie proves it owns its address) and is then
    limited per source IP only ("handshake_rate" drops past it). So a flood of
    replayed initiations - even from many addresses - costs a hash and an AEAD per
    datagram and delays a legitimate rejoin by one round trip.

Clock
    Initiations carry a wall-clock timestamp and a responder refuses any that is not
    newer than the last one it accepted from the same key (WireGuard's rule). The
    timestamps come from a :class:`~netmesh.identity.HandshakeClock`: never below the
    last one issued, and persisted next to the key file (or at ``config.clock_file``),
    so a node restarted with its wall clock behind still reconnects at once. A node
    whose key lives only in memory has no such memory across restarts.
    ``MeshNode.create(..., wall_clock=f)`` injects the wall clock (ns; tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netmesh.config import MeshNodeConfig
from netmesh.errors import (
    AuthenticationError,
    Closed,
    DecodeError,
    HandshakeError,
    LocalProtocolError,
    PayloadTooLarge,
    Replayed,
    TransportError,
)
from netmesh.identity import EntityKeypair, HandshakeClock, clock_file_of, node_id_of
from netmesh.link import codec
from netmesh.link.codec import DATA_HEADER, TYPE_DATA, VERSION, unpack_body
from netmesh.link.cookie import NONCE_LEN, HandshakeGate, Verdict, cookie_key, seal_cookie
from netmesh.link.handshake import (
    InitiationReplayGuard,
    ResponderTemplate,
    encode_timestamp,
    mac1_key,
    mac1_ok,
)
from netmesh.link.index import PeerIndex
from netmesh.link.peer import KEEPALIVE, LinkContext, Peer
from netmesh.link.session import Session, SessionExpired, SessionLimits
from netmesh.link.timers import TimerConfig
from netmesh.link.transport import UdpTransport

log = logging.getLogger(__name__)

Addr = tuple[str, int]
Handler = Callable[[int, bytes], object]
BatchHandler = Callable[[int, list[bytes]], object]

PEER_EVENTS = "peer"
PROLOGUE = b"netmesh/IKpsk2/v1"
DROP_REASONS = (
    "tampered",
    "truncated",
    "replayed",
    "oversized",
    "unknown_session",
    "bad_handshake",
    "wrong_psk_or_key",
    "decode",
    "blocked",
    "no_session",
    "reassembly",
    "reserved_stream",
    "expired",
    "bad_mac",
    "handshake_rate",
    "under_load",
    "bad_cookie",
)
_U64 = struct.Struct("<Q")


class MeshNode:
    """One encrypted UDP endpoint. Create with :meth:`create`; see the module doc."""

    def __init__(
        self,
        keypair: EntityKeypair,
        config: MeshNodeConfig,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.keypair = keypair
        self.config = config
        self.timer_config = TimerConfig(
            heartbeat_interval=config.heartbeat_interval,
            session_timeout=config.session_timeout,
            handshake_timeout=config.handshake_timeout,
            handshake_retries=config.handshake_retries,
            reconnect_interval=max(config.handshake_timeout, config.heartbeat_interval),
        )
        self.session_limits = SessionLimits(
            rekey_after_time=config.rekey_after_time,
            reject_after_time=1.5 * config.rekey_after_time,
        )
        self._budget = config.max_datagram - codec.DATA_OVERHEAD
        self._max_datagram = config.max_datagram
        #: peers by node id, sessions and pending initiations by our index
        self.index: PeerIndex[Peer, Session] = PeerIndex(secrets.randbits)
        self._link = LinkContext(
            node_id=keypair.node_id,
            static_private=keypair.private_key,
            static_public=keypair.public_key,
            psk=bytes(config.psk),
            prologue=self.prologue,
            timers=self.timer_config,
            limits=self.session_limits,
            handshake_retries=config.handshake_retries,
            max_message=config.max_message,
            reassembly_bytes=config.reassembly_bytes,
            max_datagram=config.max_datagram,
        )
        self._allowed: dict[int, bytes] = dict(config.allowed_peers)
        self._accept_waiters: dict[int, asyncio.Future[Addr]] = {}
        self._blocked: set[int] = set()
        self._handlers: dict[str, list[Handler]] = {}
        self._batch_handlers: dict[str, list[BatchHandler]] = {}
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._replay_guard = InitiationReplayGuard()
        # handshake work cached once: the mac1 key of messages sent to us, and the
        # responder's public key and initial symmetric state
        self._mac_key = mac1_key(config.psk, keypair.public_key)
        self._responder_template = ResponderTemplate(
            keypair.private_key, config.psk, self.prologue(keypair.node_id)
        )
        clock_file = config.clock_file
        if clock_file is None and keypair.key_file is not None:
            clock_file = clock_file_of(keypair.key_file)
        self.clock = HandshakeClock(clock_file, wall_clock or time.time_ns)
        self._started = False
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._transport: UdpTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._gate = HandshakeGate(
            config.handshake_rate,
            config.handshake_rate_per_source,
            self._loop.time(),
            secrets.token_bytes(32),
        )
        self._cookie_key = cookie_key(config.psk, keypair.public_key)
        self._m: dict[str, int] = dict.fromkeys(
            (
                "datagrams_in",
                "datagrams_out",
                "bytes_in",
                "bytes_out",
                "messages_in",
                "messages_out",
                "handshakes_initiated",
                "handshakes_completed",
                "cookies_sent",
                "cookies_received",
                "handler_errors",
                "send_errors",
            ),
            0,
        )
        self._drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._rejected_log_at = float("-inf")  # last "handshake rejected" warning
        self._rejected_hosts: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle
    @classmethod
    async def create(
        cls,
        keypair: EntityKeypair,
        config: MeshNodeConfig,
        *,
        wall_clock: Callable[[], int] | None = None,
    ) -> MeshNode:
        """Validate ``config`` (ConfigError), bind the UDP socket (TransportError).

        ``wall_clock``: nanoseconds since the epoch for handshake timestamps (default
        ``time.time_ns``); see "Clock" in the module doc. ConfigError also if the
        handshake clock file is corrupt.
        """
        config.validate()
        self = cls(keypair, config, wall_clock)
        host, port = config.host_port()
        self._transport = await UdpTransport.bind(
            host, port, self._on_datagram, config.recv_buffer, config.send_buffer, self.flush
        )
        self._ticker = asyncio.create_task(self._tick_loop(), name="meshnode-timers")
        return self

    @property
    def node_id(self) -> int:
        return self.keypair.node_id

    @property
    def public_key(self) -> bytes:
        return self.keypair.public_key

    @property
    def local_addr(self) -> Addr:
        assert self._transport is not None
        return self._transport.local_addr

    def start(self) -> None:
        """Mark the node started (idempotent): from now on ``accept`` raises, and
        handshakes from ``allowed_peers`` and previously linked peers are answered."""
        self._check_open()
        self._started = True

    async def shutdown(self) -> None:
        """Stop timers, close the socket, fail waiters with Closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        waiters: list[asyncio.Future[Any]] = list(self._accept_waiters.values())
        self._accept_waiters.clear()
        for peer in self.index.peers():
            if peer.connect_waiter is not None:
                waiters.append(peer.connect_waiter)
            peer.close()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(Closed("node shut down"))
                fut.exception()  # awaiting callers still get it; nobody else must
        if self._transport is not None:
            await self._transport.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("node is shut down")

    # ------------------------------------------------------------ linking
    async def connect(self, addr: Addr, public_key: bytes, node_id: int) -> int:
        """Handshake as initiator with the node at ``addr``; returns its node id.

        Raises HandshakeError if ``public_key`` does not hash to ``node_id``, or if no
        valid response arrives within ``handshake_retries`` attempts of
        ``handshake_timeout`` each (wrong PSK, wrong key, nobody listening).
        """
        self._check_open()
        if node_id_of(public_key) != node_id:
            raise HandshakeError(f"public key does not belong to node {node_id:#x}")
        if node_id == self.node_id:
            raise LocalProtocolError("cannot connect to self")
        addr = (addr[0], int(addr[1]))
        peer = self._peer_for(node_id, bytes(public_key), addr)
        if peer.connect_waiter is not None and not peer.connect_waiter.done():
            return await asyncio.shield(peer.connect_waiter)
        fut: asyncio.Future[int] = self._loop.create_future()
        peer.connect_waiter = fut
        peer.begin_handshake(self._loop.time())
        try:
            return await fut
        except HandshakeError:
            if not peer.ever_up:
                self._remove_peer(peer)
            raise

    async def accept(self, node_id: int, timeout: float | None = None) -> Addr:
        """Wait for node ``node_id`` to handshake with us; returns its address.

        Completes when the initiator's first packet confirms the session. The
        initiator's static key must hash to ``node_id`` (and match
        ``allowed_peers[node_id]`` if listed); others are refused and counted.
        Raises LocalProtocolError after ``start()``.
        """
        self._check_open()
        if self._started:
            raise LocalProtocolError("accept() called after start()")
        fut = self._accept_waiters.get(node_id)
        if fut is None or fut.done():
            fut = self._loop.create_future()
            self._accept_waiters[node_id] = fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if fut.done() and self._accept_waiters.get(node_id) is fut:
                del self._accept_waiters[node_id]

    def add_allowed_peer(self, node_id: int, public_key: bytes) -> None:
        """Let ``node_id`` (with this key) handshake with the started node."""
        if len(public_key) != 32 or node_id_of(public_key) != node_id:
            raise LocalProtocolError("public key does not belong to that node id")
        self._allowed[node_id] = bytes(public_key)

    def block_peer(self, node_id: int) -> None:
        """Drop all traffic to and from ``node_id`` (counted as "blocked")."""
        self._blocked.add(node_id)

    def unblock_peer(self, node_id: int) -> None:
        self._blocked.discard(node_id)

    def is_blocked(self, node_id: int) -> bool:
        return node_id in self._blocked

    def peers(self) -> list[int]:
        """Node ids with a live, confirmed session (reported up)."""
        return [
            p.node_id for p in self.index.peers() if p.timers.up and p.usable_session() is not None
        ]

    def peer_is_up(self, node_id: int) -> bool:
        p = self.index.peer(node_id)
        return p is not None and p.timers.up

    def peer_addr(self, node_id: int) -> Addr | None:
        p = self.index.peer(node_id)
        return p.addr if p is not None else None

    # ------------------------------------------------------------ messages
    def subscribe(self, kind: str, handler: Handler) -> None:
        """Call ``handler(from_node_id, message)`` for each message of ``kind``."""
        self._handlers.setdefault(kind, []).append(handler)

    def subscribe_batch(self, kind: str, handler: BatchHandler) -> None:
        """Call ``handler(from_node_id, messages)`` with each received run of ``kind``."""
        self._batch_handlers.setdefault(kind, []).append(handler)

    def unsubscribe(self, kind: str, handler: Handler | BatchHandler) -> None:
        for table in (self._handlers, self._batch_handlers):
            hs = table.get(kind)
            if hs and handler in hs:
                hs.remove(handler)  # type: ignore[arg-type]

    def send(self, node_id: int, stream: str, message: bytes) -> None:
        """Queue one message on ``stream`` (best-effort; see the module doc).

        Raises LocalProtocolError (unknown peer, reserved or over-long stream name),
        PayloadTooLarge (over ``max_message``), Closed (node shut down).
        """
        peer = self._outbox_peer(node_id, stream)
        if len(message) > self.config.max_message:
            raise PayloadTooLarge(len(message), self.config.max_message)
        box = peer.outbox
        if box and box[-1][0] == stream:
            box[-1][1].append(bytes(message))
        else:
            box.append((stream, [bytes(message)]))

    def send_many(self, node_id: int, stream: str, messages: Iterable[bytes]) -> None:
        """Queue many messages (each must be ``bytes``) in order; raises as :meth:`send`."""
        peer = self._outbox_peer(node_id, stream)
        msgs = list(messages)
        limit = self.config.max_message
        if msgs and max(map(len, msgs)) > limit:
            raise PayloadTooLarge(max(map(len, msgs)), limit)
        box = peer.outbox
        if box and box[-1][0] == stream:
            box[-1][1].extend(msgs)
        else:
            box.append((stream, msgs))

    def _outbox_peer(self, node_id: int, stream: str) -> Peer:
        self._check_open()
        if stream == PEER_EVENTS:
            raise LocalProtocolError(f"stream {PEER_EVENTS!r} is reserved for peer events")
        if len(stream.encode()) > 255:
            raise LocalProtocolError("stream name longer than 255 bytes")
        peer = self.index.peer(node_id)
        if peer is None:
            raise LocalProtocolError(f"unknown peer {node_id:#x}")
        if not peer.outbox:
            self._dirty.append(peer)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        return peer

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        now = self._loop.time()
        for peer in dirty:
            groups, peer.outbox = peer.outbox, []
            if not groups or self._closed:
                continue
            session = peer.usable_session()
            if session is not None and session.expired(now):
                session = None  # the next timer tick forgets it and rehandshakes
            addr = peer.addr
            if session is None or addr is None or peer.node_id in self._blocked:
                # a confirmed session always comes with an address (it is adopted on
                # the packet that confirms it); a peer without either has no route
                reason = "blocked" if peer.node_id in self._blocked else "no_session"
                self._drops[reason] += sum(len(g[1]) for g in groups)
                continue
            bodies, peer.frag_id = codec.pack_bodies(groups, self._budget, peer.frag_id)
            self._m["messages_out"] += sum(len(g[1]) for g in groups)
            seal = session.seal
            sendto = self._sendto
            for body in bodies:
                sendto(seal(body, now), addr)
            peer.timers.last_sent = now

    def flush(self) -> None:
        """Flush queued messages now instead of at the end of the loop turn."""
        if self._flush_scheduled:
            self._flush()

    # ------------------------------------------------------------ PeerHost
    def transmit(self, peer: Peer, datagram: bytes, addr: Addr | None = None) -> None:
        """Send a prepared datagram to ``peer`` (handshakes, keepalives), at ``addr``
        if given (a handshake response goes to the initiation's source). Counted as
        a "blocked" drop if the peer is blocked; nothing is sent to a peer that has
        no address yet (a responder-side peer before its session confirms)."""
        if peer.node_id in self._blocked:
            self._drops["blocked"] += 1
            return
        addr = addr or peer.addr
        if addr is None or self._closed:
            return
        self._sendto(datagram, addr)
        peer.timers.last_sent = self._loop.time()

    def count(self, name: str) -> None:
        self._m[name] += 1

    def _sendto(self, datagram: bytes, addr: Addr) -> None:
        m = self._m
        m["datagrams_out"] += 1
        m["bytes_out"] += len(datagram)
        transport = self._transport
        if transport is None:  # never bound (create failed): nothing to send on
            m["send_errors"] += 1
            return
        try:
            transport.sendto(datagram, addr)
        except (TransportError, Closed) as exc:
            m["send_errors"] += 1
            log.debug("send to %s failed: %s", addr, exc)

    def write_buffer_size(self) -> int:
        """Bytes waiting in asyncio because the socket would block (backpressure)."""
        return self._transport.write_buffer_size() if self._transport else 0

    # ------------------------------------------------------------ receiving
    def _drop(self, reason: str, addr: Addr, detail: object = "") -> None:
        self._drops[reason] += 1
        log.debug("dropped datagram from %s: %s %s", addr, reason, detail)
        if reason == "wrong_psk_or_key":
            self._warn_rejected(addr, detail)

    def _warn_rejected(self, addr: Addr, detail: object) -> None:
        """A handshake that fails to authenticate is most often a misconfigured peer
        (another PSK, or a key this node does not list): say so at WARNING, at most
        once a minute per source host and once every 10 s in all (hostile floods stay
        counted in ``drops``, not logged)."""
        now = self._loop.time()
        host = addr[0]
        if now - self._rejected_log_at < 10.0 or now - self._rejected_hosts.get(host, -1e9) < 60:
            return
        if len(self._rejected_hosts) > 1024:
            self._rejected_hosts.clear()
        self._rejected_log_at = self._rejected_hosts[host] = now
        log.warning(
            "handshake with %s:%s rejected (%s): a different psk, or a public key this node"
            " does not list as a peer",
            host,
            addr[1],
            detail,
        )

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        m = self._m
        m["datagrams_in"] += 1
        n = len(data)
        m["bytes_in"] += n
        if n > self._max_datagram:
            self._drop("oversized", addr, n)
            return
        try:
            if n >= codec.DATA_OVERHEAD and data[1] == TYPE_DATA and data[0] == VERSION:
                _, _, reserved, index, counter = DATA_HEADER.unpack_from(data)
                if reserved:
                    raise DecodeError("reserved bits set")
                self._on_data(data, index, counter, addr)
                return
            msg = codec.decode(data)
        except codec.Truncated as exc:
            self._drop("truncated", addr, exc)
            return
        except DecodeError as exc:
            self._drop("decode", addr, exc)
            return
        if isinstance(msg, codec.CookieReply):  # sealed under a PSK-derived key: no mac1
            self._on_cookie(msg, addr)
            return
        if not mac1_ok(self._mac_key, codec.mac1_part(data)):  # before any DH
            self._drop("bad_mac", addr)
            if isinstance(msg, codec.Initiation):  # mac1 is keyed by our key and the PSK
                self._warn_rejected(addr, "initiation with a bad mac1")
            return
        if isinstance(msg, codec.Initiation):
            now = self._loop.time()
            gate = self._gate
            if gate.secret_due(now):
                gate.rotate(now, secrets.token_bytes(32))
            verdict = gate.admit(data, addr, now)
            if verdict is Verdict.ACCEPT:
                self._on_initiation(msg, addr)
            elif verdict is Verdict.COOKIE:
                self._send_cookie(msg, data, addr)
            else:
                self._drop("handshake_rate", addr)
        elif isinstance(msg, codec.Response):
            self._on_response(msg, addr)
        else:  # a data header too short for the fast path cannot get here
            self._drop("truncated", addr)

    def _on_data(self, data: bytes, index: int, counter: int, addr: Addr) -> None:
        entry = self.index.session(index)
        if entry is None:
            self._drop("unknown_session", addr, index)
            return
        peer, session = entry
        if peer.node_id in self._blocked:
            self._drop("blocked", addr)
            return
        now = self._loop.time()
        try:
            body = session.open(data, counter, now)
        except AuthenticationError:
            self._drop("tampered", addr)
            return
        except Replayed:
            self._drop("replayed", addr, counter)
            return
        except SessionExpired:
            self._drop("expired", addr, index)
            return
        peer.on_authenticated(session, addr, now)
        if body == KEEPALIVE:
            return
        try:
            entries = unpack_body(body)
        except DecodeError as exc:
            self._drop("decode", addr, exc)
            return
        self._dispatch(peer, entries, index)

    def _dispatch(self, peer: Peer, entries: list[list[Any]], session_index: int) -> None:
        nid = peer.node_id
        where = peer.addr or ("", 0)
        for e in entries:
            if e[1] == PEER_EVENTS:  # reserved: a peer must not forge up/down events
                self._drop("reserved_stream", where, f"from {nid:#x}")
                continue
            if e[0] == codec.ENTRY_MESSAGES:
                stream, msgs = e[1], e[2]
            else:
                try:
                    whole = peer.reassembler.add(e[1], e[2], e[3], e[4], e[5], session_index)
                except DecodeError as exc:
                    self._drop("reassembly", where, exc)
                    continue
                if whole is None:
                    continue
                stream, msgs = e[1], [whole]
            self._m["messages_in"] += len(msgs)
            self._deliver(nid, stream, msgs)

    def _deliver(self, nid: int, stream: str, msgs: list[bytes]) -> None:
        bhs = self._batch_handlers.get(stream)
        if bhs:
            for bh in bhs:
                try:
                    bh(nid, msgs)
                except Exception:
                    self._m["handler_errors"] += 1
                    log.exception("batch handler for %r failed", stream)
        hs = self._handlers.get(stream)
        if hs:
            for h in hs:
                for msg in msgs:
                    try:
                        h(nid, msg)
                    except Exception:
                        self._m["handler_errors"] += 1
                        log.exception("handler for %r failed", stream)

    def _on_initiation(self, msg: codec.Initiation, addr: Addr) -> None:
        responder = self._responder_template.new()
        try:
            remote_static = responder.consume_initiation(msg.noise)
        except AuthenticationError:
            self._drop("wrong_psk_or_key", addr, "initiation failed to decrypt")
            return
        except HandshakeError as exc:
            self._drop("bad_handshake", addr, exc)
            return
        nid = node_id_of(remote_static)
        if nid in self._blocked:
            self._drop("blocked", addr)
            return
        if not self._acceptable(nid, remote_static):
            self._drop("wrong_psk_or_key", addr, f"unexpected static key for {nid:#x}")
            return
        try:
            self._replay_guard.check(remote_static, responder.timestamp)
        except Replayed:
            self._drop("replayed", addr, "initiation timestamp")
            return
        self._replay_guard.record(remote_static, responder.timestamp)
        eph = X25519PrivateKey.generate().private_bytes_raw()
        noise, keys = responder.create_response(eph)
        index = self.index.alloc()
        now = self._loop.time()
        session = Session(keys, index, msg.sender_index, now, self.session_limits)
        # not authenticated yet (msg1 may be replayed from elsewhere): answer the
        # source, but move the peer there only once the session confirms
        peer = self._peer_for(nid, remote_static, None)
        peer.offer_as_responder(session)
        self.transmit(
            peer, codec.encode_response(index, msg.sender_index, noise, peer.mac_key), addr
        )

    def _send_cookie(self, msg: codec.Initiation, data: bytes, addr: Addr) -> None:
        """Answer an initiation we will not do DH for (under load) with a cookie."""
        self._drops["under_load"] += 1
        nonce = secrets.token_bytes(NONCE_LEN)
        sealed = seal_cookie(
            self._cookie_key, nonce, self._gate.cookie_for(addr), codec.mac1_of(data)
        )
        self._m["cookies_sent"] += 1
        self._sendto(codec.encode_cookie_reply(msg.sender_index, nonce, sealed), addr)

    def _on_cookie(self, msg: codec.CookieReply, addr: Addr) -> None:
        peer = self.index.pending(msg.receiver_index)
        if peer is None:
            self._drop("bad_handshake", addr, "cookie reply to no pending initiation")
            return
        if peer.node_id in self._blocked:
            self._drop("blocked", addr)
            return
        if not peer.on_cookie(msg.nonce, msg.sealed_cookie, self._loop.time()):
            self._drop("bad_cookie", addr)
            return
        self._m["cookies_received"] += 1

    def _acceptable(self, nid: int, remote_static: bytes) -> bool:
        allowed = self._allowed.get(nid)
        if allowed is not None and allowed != remote_static:
            return False
        known = self.index.peer(nid)
        if known is not None and known.public_key != remote_static:
            return False
        if nid in self._accept_waiters:
            return True
        return self._started and (allowed is not None or known is not None)

    def _on_response(self, msg: codec.Response, addr: Addr) -> None:
        peer = self.index.pending(msg.receiver_index)
        if peer is None or peer.pending is None:
            self._drop("bad_handshake", addr, "response to no pending initiation")
            return
        if peer.node_id in self._blocked:
            self._drop("blocked", addr)
            return
        try:
            keys = peer.pending.consume_response(msg.noise)
        except AuthenticationError:
            peer.rejected_responses += 1  # named in the connect error (a different psk?)
            self._drop("wrong_psk_or_key", addr, "response failed to decrypt")
            return
        except HandshakeError as exc:
            self._drop("bad_handshake", addr, exc)
            return
        peer.complete_as_initiator(keys, msg.sender_index, addr, self._loop.time())

    # ------------------------------------------------------------ PeerHost (cont.)
    def peer_event(self, node_id: int, up: bool) -> None:
        if up:
            fut = self._accept_waiters.get(node_id)
            peer = self.index.peer(node_id)
            if fut is not None and not fut.done() and peer is not None and peer.addr:
                fut.set_result(peer.addr)
        log.debug("peer %x %s", node_id, "up" if up else "down")
        self._deliver(node_id, PEER_EVENTS, [b"up" if up else b"down"])

    def handshake_timestamp(self) -> bytes:
        """A strictly increasing 12-byte timestamp for initiations (``self.clock``)."""
        return encode_timestamp(self.clock.next_ns())

    def now(self) -> float:
        return self._loop.time()

    def prologue(self, responder_id: int) -> bytes:
        return PROLOGUE + _U64.pack(responder_id)

    def metrics(self) -> dict[str, object]:
        """Counters: datagrams/bytes/messages in and out, handshakes, handler errors,
        and ``drops``: reason -> count. Reasons: tampered (AEAD failure on data),
        truncated, replayed (data counter or initiation timestamp seen before),
        oversized (> max_datagram), unknown_session, bad_handshake (malformed or
        unsolicited handshake message), wrong_psk_or_key (handshake AEAD failure or an
        initiator whose static key is not expected), decode (bad framing or body),
        blocked, no_session (messages sent while no session), reassembly,
        reserved_stream (an entry - a run of messages or one fragment - a peer sent
        on the reserved ``"peer"`` stream), expired (data for a session past
        ``reject_after_time``), bad_mac (handshake message whose mac1 is wrong: no
        PSK, or not meant for our key), under_load (an initiation answered with a
        cookie reply instead of DH work: its source or the node is over its
        unproven-initiation budget), handshake_rate (an initiation with a valid cookie
        over its source's ``handshake_rate_per_source``), bad_cookie (a cookie reply
        that does not open for our pending initiation). Also ``cookies_sent`` and
        ``cookies_received``."""
        out: dict[str, object] = dict(self._m)
        out["drops"] = dict(self._drops)
        out["peers_up"] = len(self.peers())
        return out

    def _peer_for(self, node_id: int, public_key: bytes, addr: Addr | None) -> Peer:
        peer = self.index.peer(node_id)
        if peer is None:
            peer = Peer(self._link, self, self.index, node_id, public_key, addr, self._loop.time())
        elif addr is not None:
            peer.move_to(addr)
        return peer

    def _remove_peer(self, peer: Peer) -> None:
        peer.close()

    async def _tick_loop(self) -> None:
        cfg = self.config
        period = min(cfg.heartbeat_interval, cfg.handshake_timeout, cfg.session_timeout) / 4
        period = min(max(period, 0.005), 0.25)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            for peer in self.index.peers():
                try:
                    peer.tick(now)
                except Exception:  # a bug here must not stop every peer's timers
                    log.exception("timer tick for peer %x failed", peer.node_id)

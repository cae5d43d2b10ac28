"""Node process: one MeshNode, one Redex, ring drainers, control requests, metrics page.

Started by the supervisor as
``python -P -m netmesh.cluster.node_worker --control-fd N --parent-pid P``.
The first control request is ``init`` (the node's spec); the node answers with its
identity and UDP address. Control ops arrive over the control connection (each is
answered once; a failure comes back as its exception class, message and attributes,
see :func:`netmesh.cluster.control.error_value`):

========================  ==============================================================
``init``                  spec: index, private_key, psk, bind, heartbeat_interval,
                          session_timeout, data_dir, metrics_page -> {node_id,
                          public_key, addr}
``connect``               peers: [{node_id, public_key, addr}], initiate: [node_id]
                          -> allow all, handshake with ``initiate`` -> connected ids
``open_channel``          name, replication (dict or None), options (RedexFileConfig
                          fields) -> next_seq
``close_channel``         name
``attach_ring``           ring, channel: drain that shm ring into the channel
                          (NotLeader if a replica of it that knows its leader)
``subscribe``             ring, channel, from_seq (seq, "earliest" or "latest"),
                          end_seq (None: follow), history: feed that ring with the
                          channel's events (:mod:`netmesh.cluster.subscription`)
``detach_ring``           ring (a producer ring or a subscription ring)
``append``                channel, payloads -> first seq (leader only)
``next_seq`` / ``role``   channel (ChannelNotOpen if not open here); role: the
                          ReplicaRole name, None if the channel is not replicated
``read_range``            channel, start, end -> [payload] (at most 4 MiB of them)
``read_page``             channel, start, end, max_bytes -> ([payload], first seq)
``block`` / ``unblock``   node_ids: drop all traffic to/from them (partitions)
``metrics``               -> the same dict the metrics page holds
``probe_start/stop``      channel: record append-to-apply latency (ms) of stamped
                          payloads on a replica; stop returns the samples
``shutdown``              graceful stop (exit code 0)
========================  ==============================================================

Exit codes: 0 graceful, 2 bad arguments, 3 supervisor gone (names unlinked), 1 crash.
Terminal signals: the supervisor starts nodes in their own session; SIGINT is ignored
all the same (a node run by hand in a shell's process group is stopped by its
supervisor, not by Ctrl-C), SIGTERM stops the node like a supervisor that went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import select
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from netmesh.channel import ChannelName
from netmesh.cluster import control, idem
from netmesh.cluster.metrics_page import MetricsPage, SnapshotWriter
from netmesh.cluster.producer import (
    REFUSED_NONE,
    REFUSED_NOT_LEADER,
    REFUSED_STORE_FAILED,
    REFUSED_TOO_LARGE,
)
from netmesh.cluster.subscription import SubscriptionPump
from netmesh.config import MeshNodeConfig, PlacementStrategy, RedexFileConfig, ReplicationConfig
from netmesh.errors import (
    ChannelNotOpen,
    ConfigError,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
    PayloadTooLarge,
    RingClosed,
)
from netmesh.identity import EntityKeypair
from netmesh.link.node import MeshNode
from netmesh.log.commit import GroupCommitter
from netmesh.log.file import RedexFile
from netmesh.replication.nic import resolve_config
from netmesh.replication.registry import Redex
from netmesh.replication.roles import ReplicaRole
from netmesh.ring.shm import Frames, ShmRing, unlink_ring

log = logging.getLogger("netmesh.worker")
METRICS_PERIOD = 0.1
# RedexFileConfig fields a channel may set (the node decides path and replication)
FILE_OPTIONS = frozenset(
    f.name for f in dataclasses.fields(RedexFileConfig) if f.name not in ("path", "replication")
)
PR_SET_PDEATHSIG = 1


def replication_from_dict(d: dict[str, Any] | None) -> ReplicationConfig | None:
    if d is None:
        return None
    d = dict(d)
    placement = d.pop("placement", None)
    if placement is not None:
        d["placement"] = PlacementStrategy(placement["kind"], tuple(placement["nodes"]))
    return ReplicationConfig(**d)


def replication_to_dict(cfg: ReplicationConfig | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    d = dataclasses.asdict(cfg)
    d["placement"] = {"kind": cfg.placement.kind, "nodes": list(cfg.placement.nodes)}
    return d


class RingDrainer:
    """Moves records from one producer ring into a channel, acknowledging in order.

    The event loop does it all, with no thread (issue 17 §3): it takes the records
    itself (:meth:`NodeService.on_ring_ready`: one ``take_frames`` per loop turn, the
    frames published so far copied out in one piece, appended as one batch without an
    object per event), and while the ring is empty it sleeps in ``epoll`` on the
    ring's wake socket (:meth:`ShmRing.wake_socket`: the producer sends one datagram
    when it publishes a frame the loop said it waits for). So a frame wakes the loop
    once, directly; while the producer keeps the ring busy no wake-up happens at
    all, and a node slower than its producer leaves frames in the ring: it fills and
    the producer blocks (backpressure). A lost wake-up (never seen) costs at most
    ``SAFETY_S``: the service looks at every idle ring that often. A corrupt frame
    stops the drainer (logged and counted in ``ring_errors``); the producer then
    times out.
    """

    #: records the loop takes from the ring per turn (one log append)
    MAX_RECORDS = 1 << 14
    #: seconds between looks at idle rings (a lost wake-up's cost, at most)
    SAFETY_S = 0.05

    def __init__(self, service: NodeService, ring_name: str, channel: str) -> None:
        self.service = service
        self.channel = ChannelName(channel)  # validated once, not per batch
        self.ring = ShmRing.attach(ring_name)
        self.name = ring_name
        self.count = 0  # events acknowledged (stored or refused)
        self.rejected = 0  # events refused (not leader, too large, store failed)
        self.reason = REFUSED_NONE
        self.logged_reason = REFUSED_NONE  # refusal state last logged (one line per change)
        self.last_seq = 0  # seq of the last stored event acknowledged
        # (events, last seq or None if refused, commit_seq to wait for or -1, reason)
        self.pending: deque[tuple[int, int | None, int, int]] = deque()
        self.detached = False
        self.ended = False  # the producer closed its end and everything was taken
        self.stopped = False  # a corrupt frame: nothing more is taken
        self.scheduled = False  # on_ring_ready is due this loop turn
        self._loop = asyncio.get_running_loop()
        try:
            self._sock = self.ring.wake_socket()
            self._loop.add_reader(self._sock.fileno(), self._on_wake)
        except BaseException:
            self.ring.close()
            raise
        self.schedule()  # frames published before the socket was registered

    def schedule(self) -> None:
        """Run :meth:`NodeService.on_ring_ready` this loop turn (once)."""
        if not self.scheduled and not self.detached:
            self.scheduled = True
            self._loop.call_soon(self.service.on_ring_ready, self)

    def _on_wake(self) -> None:
        """The wake socket is readable: take the frames in this callback, not a loop
        turn later (a turn is ~15-20 us of the quorum flush's round trip on a busy
        2-core machine: an epoll poll and the ready queue). Still one take per turn:
        a take already due this turn (``scheduled``) is left to run as queued."""
        sock = self._sock
        try:
            while sock.recv(64):
                pass
        except OSError:  # BlockingIOError: every datagram read
            pass
        if not self.scheduled and not self.detached:
            self.service.on_ring_ready(self)

    def rearm(self) -> None:
        """Loop: the ring looked empty; say we wait (a datagram wakes us), unless a
        frame came meanwhile (then take it this turn)."""
        try:
            if self.ring.arm():
                self.schedule()
        except RingClosed:  # the producer closed its end and everything was taken
            self.ended = True

    def check(self) -> None:
        """The safety look: take frames a lost wake-up left in the ring."""
        if not (self.detached or self.ended or self.stopped) and self.ring.readable():
            self.schedule()

    def stop(self) -> None:
        """Stop watching the ring and unmap it (loop thread)."""
        self.detached = True  # the loop takes nothing more from this ring
        if not self.ring.closed:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._sock.fileno())
            self.ring.close()  # closes the wake socket too


class NodeService:
    """Everything one node process runs, on one asyncio loop.

    Driven either by a supervisor over the control connection (``reader``/``writer``,
    :meth:`serve`) or in-process by a node daemon (:mod:`netmesh.cluster.daemon`), which
    passes no connection and calls :meth:`call_op` (or the ``op_*`` methods) directly.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader | None = None,
        writer: asyncio.StreamWriter | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.node: MeshNode | None = None
        self.redex = Redex()
        self.group_commit = GroupCommitter()  # the node's fsync rounds (netmesh.log.commit)
        self.spec: dict[str, Any] = {}
        self.drainers: dict[str, RingDrainer] = {}
        self._ring_watch: asyncio.TimerHandle | None = None  # see _watch_rings
        self.pumps: dict[str, SubscriptionPump] = {}
        self.page: MetricsPage | None = None
        self.metrics_task: asyncio.Task[None] | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.graceful = False
        self.counters = {
            "ring_events": 0,
            "ring_rejected_events": 0,
            "ring_errors": 0,
            "duplicate_batches": 0,
            "control_requests": 0,
            "control_errors": 0,
        }
        self.ops: dict[str, Callable[..., Any]] = {
            "init": self.op_init,
            "connect": self.op_connect,
            "open_channel": self.op_open_channel,
            "close_channel": self.op_close_channel,
            "attach_ring": self.op_attach_ring,
            "detach_ring": self.op_detach_ring,
            "subscribe": self.op_subscribe,
            "append": self.op_append,
            "next_seq": self.op_next_seq,
            "role": self.op_role,
            "read_range": self.op_read_range,
            "read_page": self.op_read_page,
            "block": self.op_block,
            "unblock": self.op_unblock,
            "cut": self.op_cut,
            "metrics": self.op_metrics,
            "shutdown": self.op_shutdown,
            "probe_start": self.op_probe_start,
            "probe_stop": self.op_probe_stop,
        }

    # -- control loop ----------------------------------------------------------------
    async def serve(self) -> None:
        assert self.reader is not None, "serve() needs a control connection"
        decoder = control.FrameDecoder()
        while True:
            data = await self.reader.read(1 << 20)
            if not data:
                return  # supervisor gone
            for msg in decoder.feed(data):
                if msg[0] == control.REQUEST:
                    await self.handle(msg[1], msg[2], msg[3])

    async def call_op(self, op: str, args: dict[str, Any]) -> Any:
        """Run one op (the table in the module doc) on this loop; its result, or the
        exception it raised (NetmeshError for an unknown op)."""
        fn = self.ops.get(op)
        if fn is None:
            raise NetmeshError(f"unknown op {op!r}")
        result = fn(**args)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def handle(self, req_id: int, op: str, args: dict[str, Any]) -> None:
        assert self.writer is not None
        self.counters["control_requests"] += 1
        try:
            result = await self.call_op(op, args)
            self.writer.write(control.response(req_id, True, result))
        except Exception as exc:  # every failure goes back to the caller, node survives
            self.counters["control_errors"] += 1
            log.debug("op %s failed", op, exc_info=True)
            self.writer.write(control.response(req_id, False, control.error_value(exc)))

    # -- ops -------------------------------------------------------------------------
    async def op_init(self, **spec: Any) -> dict[str, Any]:
        self.spec = spec
        kp = EntityKeypair.from_private_bytes(spec["private_key"])
        cfg = MeshNodeConfig(
            bind=spec.get("bind", "127.0.0.1:0"),
            psk=spec["psk"],
            heartbeat_interval=spec.get("heartbeat_interval", 0.25),
            session_timeout=spec.get("session_timeout", 2.0),
            max_datagram=spec.get("max_datagram", 1400),
            handshake_retries=3,
            handshake_timeout=1.0,
            # initiation timestamps never go back across restarts (a slow clock)
            clock_file=(
                os.path.join(spec["data_dir"], "handshake.clock") if spec.get("data_dir") else None
            ),
        )
        self.node = await MeshNode.create(kp, cfg)
        self.node.start()
        self.redex.enable_replication(self.node)
        if spec.get("metrics_page"):
            self.page = MetricsPage.attach(spec["metrics_page"])
            self.metrics_task = asyncio.get_running_loop().create_task(self._publish_metrics())
        host, port = self.node.local_addr[:2]
        return {
            "node_id": kp.node_id,
            "public_key": kp.public_key,
            "addr": [host, port],
            "pid": os.getpid(),
        }

    async def op_connect(self, peers: list[dict[str, Any]], initiate: list[int]) -> list[int]:
        node = self._node()
        for p in peers:
            node.add_allowed_peer(p["node_id"], p["public_key"])
        jobs = [
            node.connect(tuple(p["addr"]), p["public_key"], p["node_id"])
            for p in peers
            if p["node_id"] in initiate
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise NetmeshError(f"{len(failed)} handshakes failed: {failed[0]!r}")
        return node.peers()

    def op_open_channel(
        self,
        name: str,
        replication: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> int:
        """Open a channel; ``options``: RedexFileConfig fields (max_payload, retention_*,
        fsync, segment_bytes). Persisted under data_dir when the node has one."""
        data_dir = self.spec.get("data_dir")
        path = os.path.join(data_dir, *name.split("/")) if data_dir else None
        opts = {"fsync": "never" if path is None else "batch", **(options or {})}
        if set(opts) - FILE_OPTIONS:
            raise ConfigError(f"unknown channel options {sorted(set(opts) - FILE_OPTIONS)}")
        rep = replication_from_dict(replication)
        if rep is not None and self.node is not None:  # an "auto" NIC peak: the bound link's
            rep = resolve_config(rep, self.node.local_addr[0])
        cfg = RedexFileConfig(path=path, replication=rep, **opts)
        f = self.redex.open_file(name, cfg)
        f.use_group_commit(self.group_commit)  # fsync="batch": one fsync round per turn
        return f.next_seq

    def op_close_channel(self, name: str) -> None:
        self.redex.close_file(name)

    def op_attach_ring(self, ring: str, channel: str) -> None:
        self._file(channel)
        coord = self.redex.replication_coordinator_for(channel)
        node = self._node()
        if (
            coord is not None
            and coord.role == ReplicaRole.REPLICA
            and coord.leader_id not in (None, node.node_id)
        ):  # it knows another node leads: refuse now rather than at the first flush
            raise NotLeader(channel, coord.leader_id)
        self.drainers[ring] = RingDrainer(self, ring, channel)
        if self._ring_watch is None:
            self._watch_rings()

    def _watch_rings(self) -> None:
        """Every ``RingDrainer.SAFETY_S`` while rings are attached: take what a lost
        wake-up left in one (the wake-ups are designed not to be lost)."""
        self._ring_watch = None
        if self.drainers and not self.done.done():
            for d in self.drainers.values():
                d.check()
            loop = asyncio.get_running_loop()
            self._ring_watch = loop.call_later(RingDrainer.SAFETY_S, self._watch_rings)

    def op_detach_ring(self, ring: str) -> None:
        d = self.drainers.pop(ring, None)
        if d is not None:
            d.detached = True  # pending acknowledgements have nobody to go to
            d.stop()
        pump = self.pumps.get(ring)
        if pump is not None:
            pump.stop()  # it unmaps its ring itself once its writer is out

    def op_subscribe(
        self,
        ring: str,
        channel: str,
        from_seq: int | str = 0,
        end_seq: int | None = None,
        history: list[list[int]] | None = None,
    ) -> int:
        """Start feeding ``ring`` with ``channel`` from ``from_seq``; the first seq."""
        f = self._file(channel)
        rt = self.redex.replication_runtime(channel)
        quorum = rt is not None and rt.coord.config.ack == "quorum"

        def commit_of() -> int | None:
            return rt.coord.commit_seq if quorum and rt is not None else None

        if from_seq == "earliest":
            start = f.first_retained_seq
        elif from_seq == "latest":
            committed = commit_of()
            start = f.next_seq if committed is None else committed
        elif isinstance(from_seq, int) and from_seq >= 0:
            start = from_seq
        else:
            raise ConfigError(f"from_seq must be a seq >= 0, 'earliest' or 'latest': {from_seq!r}")

        def done(pump: SubscriptionPump) -> None:
            self.pumps.pop(pump.name, None)

        self.pumps[ring] = SubscriptionPump(ring, f, start, end_seq, history, commit_of, done)
        return start

    async def op_append(self, channel: str, payloads: list[bytes], wait_s: float = 10.0) -> int:
        """Append; the first seq. On an ``ack="quorum"`` channel it returns only once a
        majority holds the events (the ring path's rule, :meth:`release_acks`): NotLeader
        if leadership is lost first, NodeUnresponsive if no commit within ``wait_s``."""
        first = self.redex.append(channel, payloads)
        await self._durable(channel, first + len(payloads), wait_s)
        needed = self.redex.commit_target(channel, first + len(payloads) - 1)
        if needed < 0 or not payloads:
            return first
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()

        def check() -> None:
            if not done.done():
                state = self.redex.is_committed(channel, needed)
                if state is False:
                    self.redex.on_commit(channel, needed, check)
                else:
                    done.set_result(state)

        check()
        try:
            state = await asyncio.wait_for(done, wait_s)
        except TimeoutError:
            raise NodeUnresponsive(
                f"{channel}: seqs {first}..{needed - 1} not committed within {wait_s}s"
            ) from None
        if state is None:  # leadership lost before a majority held them
            coord = self.redex.replication_coordinator_for(channel)
            raise NotLeader(channel, None if coord is None else coord.leader_id)
        return first

    async def _durable(self, channel: str, seq_exclusive: int, wait_s: float) -> None:
        """Wait until the channel's file holds ``[0, seq_exclusive)`` durably (group
        commit); StorageFailed if its fsync failed, NodeUnresponsive after ``wait_s``."""
        f = self._file(channel)
        if f.durable_seq >= seq_exclusive:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        f.when_durable(seq_exclusive, wake)
        try:
            await asyncio.wait_for(done, wait_s)
        except TimeoutError:
            raise NodeUnresponsive(f"{channel}: not durable within {wait_s}s") from None
        if f.durable_seq < seq_exclusive:
            raise f.failed or NodeUnresponsive(f"{channel}: closed before its fsync")

    def op_next_seq(self, channel: str) -> int:
        return self._file(channel).next_seq

    def op_role(self, channel: str) -> str | None:
        self._file(channel)
        coord = self.redex.replication_coordinator_for(channel)
        return None if coord is None else coord.role.name

    def op_read_range(self, channel: str, start: int, end: int) -> list[bytes]:
        return self.op_read_page(channel, start, end, 4 << 20)[0]

    def op_read_page(
        self, channel: str, start: int, end: int, max_bytes: int
    ) -> tuple[list[bytes], int]:
        """Payloads from ``start`` (at least one if any) up to ``end`` or ``max_bytes``,
        and the seq of the first one."""
        payloads, first = self._file(channel).read_published(start, min(end, start + 65536))
        total = 0
        for i, p in enumerate(payloads):
            total += len(p)
            if total > max_bytes and i:
                return payloads[:i], first
        return payloads, first

    def op_block(self, node_ids: list[int]) -> None:
        for nid in node_ids:
            self._node().block_peer(nid)

    def op_unblock(self, node_ids: list[int]) -> None:
        for nid in node_ids:
            self._node().unblock_peer(nid)

    def op_cut(self, node_ids: list[int], addrs: list[list[Any]] | None = None) -> None:
        """Drop every datagram this node sends to ``node_ids`` (at their known address or
        one of ``addrs``, [host, port]): a one-way link cut (their datagrams still
        arrive; cutting both ends is a partition). Replaces the previous cut ([] undoes
        it); dropped datagrams count as ``link_cut_datagrams``."""
        node = self._node()
        cut: tuple[set[int], set[tuple[str, int]]] = getattr(self, "_cut", (set(), set()))
        cut[0].clear()
        cut[0].update(node_ids)
        cut[1].clear()
        cut[1].update((str(a[0]), int(a[1])) for a in addrs or [])
        self.counters.setdefault("link_cut_datagrams", 0)
        if not hasattr(self, "_cut"):
            self._cut = cut
            send = node._sendto  # every datagram leaves through it (MeshNode.transmit/_flush)

            def sendto(datagram: bytes, addr: Any) -> None:
                ids, to = cut
                if ids and (
                    (addr[0], addr[1]) in to or any(node.peer_addr(n) == addr for n in ids)
                ):
                    self.counters["link_cut_datagrams"] += 1
                    return
                send(datagram, addr)

            node._sendto = sendto  # type: ignore[method-assign]

    def op_metrics(self) -> dict[str, Any]:
        return self.snapshot()

    def op_probe_start(self, channel: str) -> None:
        """Start recording append-to-apply latencies of stamped payloads (replicas)."""
        self._runtime(channel).probe = []

    def op_probe_stop(self, channel: str) -> list[float]:
        rt = self._runtime(channel)
        out, rt.probe = rt.probe or [], None
        return out

    def _runtime(self, channel: str) -> Any:
        rt = self.redex.replication_runtime(channel)
        if rt is None:
            raise NetmeshError(f"channel {channel!r} is not replicated on this node")
        return rt

    def op_shutdown(self) -> None:
        self.graceful = True
        asyncio.get_running_loop().call_soon(self._finish)

    # -- rings -----------------------------------------------------------------------
    def on_ring_ready(self, drainer: RingDrainer) -> None:
        """Loop side of the drainer: take what the ring holds (at most ``MAX_RECORDS``)
        and append it; come back next loop turn while records keep coming (UDP, timers
        and control requests run in between), else let the thread wait."""
        drainer.scheduled = False
        if drainer.detached or drainer.stopped:
            return
        try:
            batch = drainer.ring.take_frames(drainer.MAX_RECORDS)
        except ValueError as exc:  # a corrupt frame: shared memory was scribbled on
            drainer.stopped = True
            self.on_ring_error(drainer, exc)
            return
        if batch is None:
            drainer.rearm()
            return
        self.on_ring_batch(drainer, batch)
        drainer.schedule()

    def on_ring_batch(self, drainer: RingDrainer, batch: list[bytes] | Frames) -> None:
        """Append one ring batch (loop thread); queue its acknowledgement. ``batch``:
        frames as :meth:`ShmRing.take_frames` copied them (an in-memory file keeps
        them as they are: one copy per batch, issue 17 §3), or payloads.

        Every failure is a refusal of the whole batch, reported to the producer with
        a reason code, logged and counted; the node keeps running.
        """
        if drainer.detached:  # shutting down or detached: nobody awaits an ack
            return
        last: int | None = None
        needed, reason = -1, REFUSED_NONE
        try:
            f = self.redex.get_file(drainer.channel)
            if f is not None and f.config.idempotence:  # idempotent producers' batches
                records = batch if isinstance(batch, list) else batch.payloads()
                last = self._append_idempotent(f, records)
            elif f is not None and isinstance(batch, Frames):
                last = f.append_frames(batch) + len(batch) - 1
            else:
                if isinstance(batch, Frames):
                    batch = batch.payloads()  # not open: Redex.append raises ConfigError
                first = self.redex.append(drainer.channel, batch)
                last = first + len(batch) - 1
            needed = self.redex.commit_target(drainer.channel, last)
            self.counters["ring_events"] += len(batch)
        except NotLeader as exc:
            reason = REFUSED_NOT_LEADER
            if drainer.logged_reason != reason:  # one line per change, not per batch
                log.info("ring %s: refusing events: %s", drainer.name, exc)
        except PayloadTooLarge as exc:
            reason = REFUSED_TOO_LARGE
            log.warning("ring %s: %d events refused: %s", drainer.name, len(batch), exc)
        except Exception:  # a disk error, a closed file: refuse, never lose the ack
            reason = REFUSED_STORE_FAILED
            if drainer.logged_reason != reason:
                log.exception("ring %s: %d events could not be stored", drainer.name, len(batch))
        if reason != drainer.logged_reason and reason == REFUSED_NONE:
            log.info("ring %s: accepting events again", drainer.name)
        if reason != REFUSED_TOO_LARGE:  # a too-large batch says nothing of the next
            drainer.logged_reason = reason
        drainer.pending.append((len(batch), last, needed, reason))
        self.release_acks(drainer)

    def _append_idempotent(self, f: RedexFile, records: list[bytes]) -> int:
        """Append a ring batch of an ``idempotence`` channel: each idempotent producer
        batch once (a duplicate is acknowledged with the seq it got the first time);
        returns the seq the acknowledgement reports."""
        last = -1
        for producer, batch_seq, payloads in idem.split(records):
            if producer:
                got, duplicate = f.append_idempotent(payloads, producer, batch_seq)
                if duplicate:
                    self.counters["duplicate_batches"] += 1
            else:
                got = f.append_batch(payloads) + len(payloads) - 1
            last = max(last, got)
        return last

    def on_ring_error(self, drainer: RingDrainer, exc: Exception) -> None:
        self.counters["ring_errors"] += 1
        log.error("ring %s: corrupt frame, drainer stopped: %s", drainer.name, exc)

    def release_acks(self, drainer: RingDrainer) -> None:
        """Acknowledge, in order, every queued batch whose commit condition holds.

        A quorum batch whose leader lost leadership before a majority held it is
        acknowledged as refused (the producer's flush raises NotLeader).
        """
        pending = drainer.pending
        if drainer.detached:  # its producer is gone and the ring may be unmapped
            pending.clear()
            return
        while pending:
            n, last, needed, reason = pending[0]
            if last is not None and needed >= 0:
                state = self.redex.is_committed(drainer.channel, needed)
                if state is False:
                    self.redex.on_commit(
                        drainer.channel, needed, lambda d=drainer: self.release_acks(d)
                    )
                    return
                if state is None:  # leadership lost before a majority held them
                    last, reason = None, REFUSED_NOT_LEADER
            if last is not None:  # group commit: acknowledged = durable
                f = self.redex.get_file(drainer.channel)
                if f is not None and f.durable_seq <= last:
                    if f.failed is None and not f.closed:
                        f.when_durable(last + 1, functools.partial(self.release_acks, drainer))
                        return
                    last, reason = None, REFUSED_STORE_FAILED
            pending.popleft()
            drainer.count += n
            if last is None:
                drainer.rejected += n
                drainer.reason = reason
                self.counters["ring_rejected_events"] += n
            else:
                drainer.last_seq = last
            drainer.ring.ack(drainer.count, drainer.last_seq, drainer.rejected, drainer.reason)

    # -- metrics ---------------------------------------------------------------------
    def snapshot(self, channels_too: bool = True) -> dict[str, Any]:
        node = self.node
        channels: dict[str, Any] = {}
        for f in self.redex.open_files() if channels_too else ():
            channels[f.name] = self._channel_entry(f)
        return {
            "node": self.spec.get("index"),
            "node_id": node.node_id if node else None,
            "pid": os.getpid(),
            "sampled_at": time.monotonic(),  # system-wide clock: comparable across processes
            "channels": channels,
            "peers": node.peers() if node else [],
            "mesh": node.metrics() if node else {},
            "counters": {
                **self.counters,
                "metrics_pages_dropped": self.page.dropped if self.page else 0,
                "fsync_rounds": self.group_commit.rounds,
                "fsyncs": self.group_commit.fsyncs,
            },
            "rings": {
                n: {"events": d.count, "used_bytes": d.ring.used_bytes()}
                for n, d in self.drainers.items()
                if not d.detached
            },
        }

    def _channel_entry(self, f: RedexFile) -> dict[str, Any]:
        ch: dict[str, Any] = {
            "next_seq": f.next_seq,
            "first_retained_seq": f.first_retained_seq,
            "torn_tail_truncations": f.torn_tail_truncations,
        }
        ch.update(self.redex.channel_metrics(f.name))
        return ch

    @staticmethod
    def _channel_fingerprint(f: RedexFile) -> tuple[int, int, int] | None:
        """What an unreplicated channel's entry depends on (None: replicated, rebuild)."""
        if f.config.replication is not None:
            return None
        return (f.next_seq, f.first_retained_seq, f.torn_tail_truncations)

    async def _publish_metrics(self) -> None:
        """Every METRICS_PERIOD: the page's top and heartbeat, and the channel entries
        that changed, refreshed within a CPU budget (metrics_page.SnapshotWriter)."""
        assert self.page is not None
        writer = SnapshotWriter(self.page, METRICS_PERIOD)
        while True:
            try:
                writer.publish(
                    self.snapshot(channels_too=False),
                    self.redex.open_files(),
                    lambda f: str(f.name),
                    self._channel_fingerprint,
                    self._channel_entry,
                )
            except Exception:  # metrics must never take the node down
                log.exception("metrics snapshot failed")
            await asyncio.sleep(METRICS_PERIOD)

    # -- shutdown --------------------------------------------------------------------
    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def close(self) -> None:
        if self.metrics_task is not None:
            self.metrics_task.cancel()  # no snapshot of rings or a page being unmapped
        for d in self.drainers.values():
            d.detached = True
        self.redex.close()  # releases quorum waiters; detached drainers ack nothing
        self.group_commit.close()
        if self._ring_watch is not None:
            self._ring_watch.cancel()
        for d in self.drainers.values():
            d.stop()
        pumps = list(self.pumps.values())
        for pump in pumps:
            pump.stop()
        for pump in pumps:
            await pump.wait_stopped()
        if self.node is not None:
            await self.node.shutdown()
        if self.page is not None:
            self.page.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await self.writer.drain()

    def owned_names(self) -> list[str]:
        names = list(self.drainers) + list(self.pumps)
        if self.spec.get("metrics_page"):
            names.append(self.spec["metrics_page"])
        return names

    def _node(self) -> MeshNode:
        if self.node is None:
            raise NetmeshError("node not initialised")
        return self.node

    def _file(self, channel: str) -> RedexFile:
        f = self.redex.get_file(channel)
        if f is None:
            raise ChannelNotOpen(f"channel {channel!r} is not open on this node")
        return f


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies; exit now if it already did."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(3)


async def amain(control_fd: int) -> int:
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    service = NodeService(reader, writer)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, service._finish)
    server = loop.create_task(service.serve())
    server.add_done_callback(lambda _t: service._finish())
    await service.done
    server.cancel()
    names = service.owned_names()
    await service.close()
    if not service.graceful:
        for n in names:  # supervisor gone or asked us to die: leave nothing behind
            unlink_ring(n)
        return 3
    return 0


class FineEpollSelector(selectors.EpollSelector):
    """``epoll`` that can sleep less than a millisecond. ``epoll_wait`` counts whole
    milliseconds and Python rounds a timeout up, so an asyncio timer due in 50 us
    (the replication push gap: ``MIN_PUSH_GAP``) fired a millisecond late, which was
    most of a replica's median latency at 10k events/s (issue 17 §3). A sub-ms wait
    sleeps in ``select`` on the epoll descriptor itself (microsecond timeouts), then
    collects the events without waiting."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and 0 < timeout < 0.001:
            with contextlib.suppress(OSError, ValueError):  # ValueError: fd >= FD_SETSIZE
                select.select([self._selector.fileno()], [], [], timeout)  # type: ignore[attr-defined]
            timeout = 0
        return super().select(timeout)


def new_loop() -> asyncio.AbstractEventLoop:
    """The node's event loop: asyncio's, on :class:`FineEpollSelector`."""
    return asyncio.SelectorEventLoop(FineEpollSelector())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netmesh.cluster.node_worker")
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--log-level", default=os.environ.get("NETMESH_LOG", "WARNING"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s node %(process)d %(message)s")
    _die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles the terminal
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(amain(args.control_fd))


if __name__ == "__main__":
    sys.exit(main())

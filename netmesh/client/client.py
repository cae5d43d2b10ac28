"""``netmesh.connect``: publish and subscribe from any process of the same user.

::

    with netmesh.connect("orders-dev") as cl:          # a Cluster(name=...) or `netmesh up`
        cl.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        with cl.producer("orders") as p:                 # shm ring to the current leader
            p.append_batch([b"a", b"b"]); last = p.flush()
        for ev in cl.subscribe("orders", from_seq=0):    # shm ring node -> this process
            print(ev.entry.seq, ev.payload)

The socket (``$NETMESH_RUN_DIR/<name>.sock``) only sets rings up and moves them; events
travel through shared memory (:mod:`netmesh.cluster.clients` serves it).

**Producers follow the leader** within what the server serves. A producer appends into a
ring to the channel's leader. When that node stops leading (or dies), the events it had
not acknowledged are reported by the next ``flush()`` raising
:class:`~netmesh.errors.NotLeader` with their count in ``unacknowledged``: never dropped
silently, never sent twice by netmesh (in quorum mode such events may or may not have
been committed, like a timed-out write in any consensus system: resend them with an
idempotent producer, issue 12). The producer attaches to the new leader by itself;
appends after the error go there. A node daemon (``netmesh node``) serves its own node
only: when its channel's leader is (or becomes) another host, ``producer()`` /
``flush()`` raise NotLeader naming that leader's node id and UDP address, with ``final =
True`` (no retry brings it here): connect to the daemon on the leader's host.
Subscriptions on a daemon read its local replica.

**Subscriptions deliver in seq order, each event once.** Quorum channels deliver only
committed events (which no failover removes). Leader-mode and unreplicated channels
deliver what the serving node stored; if replication later removes delivered events
(a failover after a split), the subscription raises :class:`~netmesh.errors.Truncated`
naming the first removed seq, never mixing two histories. When the serving node dies,
the subscription moves to another node holding the channel and resumes at its next seq.
A subscriber that stops reading slows nobody: its node reads the backlog from the log
when it resumes, or ends it with :class:`~netmesh.errors.Lagged` if retention removed
what it still needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from netmesh.cluster import control, idem, rundir, subframes
from netmesh.cluster.groups import DEFAULT_MAX_ACK_PENDING
from netmesh.cluster.producer import Producer
from netmesh.config import ReplicationConfig
from netmesh.errors import (
    Closed,
    ClusterNotFound,
    ConfigError,
    DecodeError,
    Lagged,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
    RingClosed,
    Truncated,
)
from netmesh.log.file import RedexEntry, RedexEvent
from netmesh.ring.shm import ShmRing

LIVENESS_S = 0.25  # how often a waiting client asks whether its node still runs
#: a group member's acknowledgements are held at most this long (s) before they are
#: sent (sooner when half its max_ack_pending are held, or when it has nothing more in
#: hand): the server sends a member new events only as acknowledgements come back
ACK_FLUSH_S = 0.05


@dataclass(frozen=True)
class ChannelInfo:
    """One channel of a cluster as ``Client.channels()`` reports it."""

    name: str
    factor: int
    ack: str  # "leader", "quorum", or "local" (not replicated)
    #: the leader's index: in a Cluster / ``netmesh up`` the node index (the
    #: supervisor API's handle); from a node daemon 0 = that daemon, i = its config's
    #: ``peers[i - 1]``. None: no leader known. Name it with ``leader_id`` / ``leader_text``
    leader: int | None
    next_seq: int
    commit: int
    #: consumer groups: group, members, pending, acknowledged_through, delivered,
    #: redelivered, dead_lettered
    groups: tuple[dict[str, Any], ...] = ()
    #: the leader's node id (as ``netmesh keygen`` prints it), None if unknown
    leader_id: int | None = None
    #: the leader's UDP mesh address as host:port (node daemons), None if unknown
    leader_address: str | None = None
    #: the leader in the one user-facing form: ``0x<16 hex digits>`` and what is known
    #: in parentheses (``(node 2)``; ``(this node, 10.0.0.1:7411)``), or "unknown"
    leader_text: str = "unknown"


def connect(name: str = "default", timeout: float = 5.0) -> Client:
    """Connect to the cluster or node daemon serving ``name`` (same user).

    Raises ClusterNotFound (nothing serves that name), ConfigError (a bad name).
    """
    return Client(name, timeout)


class Client:
    """A connection to a named cluster; thread-safe; a context manager."""

    def __init__(self, name: str = "default", timeout: float = 5.0) -> None:
        self.name = rundir.check_name(name)
        path = rundir.socket_path(name)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self._sock.close()
            running = ", ".join(rundir.served_names()) or "none"
            raise ClusterNotFound(
                f"no cluster named {name!r} is running (run directory"
                f" {rundir.run_dir(create=False)}; running: {running})"
            ) from None
        self._sock.settimeout(None)
        self._lock = threading.Lock()
        self._decoder = control.FrameDecoder()
        self._next_id = 1
        self._closed = False
        #: open subscriptions: their acks are sent when the client closes
        self._children: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._acks_due = threading.Event()  # set on close: the ack flusher leaves
        self._ack_flusher: threading.Thread | None = None
        self._where = f"cluster {self.name}"
        self.info = self._call("hello")
        #: "cluster" (Cluster / netmesh up: every node) or "node" (a node daemon: its own
        #: node only; producers do not follow a leader to another host)
        self.serves: str = self.info.get("serves", "cluster")
        #: the node id of the daemon (None for a cluster)
        self.node_id: int | None = self.info.get("node_id")
        if self.serves == "node":
            self._where = f"node daemon {self.name}"

    # -- requests --------------------------------------------------------------------
    def _call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise NetmeshError(f"client of {self.name!r} is closed")
            req_id = self._next_id
            self._next_id += 1
            self._sock.settimeout(timeout)
            try:
                self._sock.sendall(control.request(req_id, op, args))
                while True:
                    data = self._sock.recv(1 << 20)
                    if not data:
                        raise NodeUnresponsive(f"cluster {self.name!r} went away")
                    for msg in self._decoder.feed(data):
                        if msg[0] == control.RESPONSE and msg[1] == req_id:
                            if not msg[2]:
                                raise self._error(msg[3], op)
                            return msg[3]
            except TimeoutError:
                raise NodeUnresponsive(f"cluster {self.name!r} did not answer {op!r}") from None
            except (OSError, DecodeError) as exc:
                raise NodeUnresponsive(f"cluster {self.name!r}: connection lost ({exc})") from None

    def _error(self, value: Any, op: str) -> NetmeshError:
        """The error a failed response names, prefixed by where and which request; a
        cluster's clean stop (``Closed``, its message names the cluster) says only
        that, whatever request met it."""
        if isinstance(value, dict) and value.get("type") == "Closed":
            return Closed(str(value.get("message", f"cluster {self.name!r} stopped")))
        return control.error_from_value(value, f"{self._where} {op}")

    def channels(self) -> list[ChannelInfo]:
        """Every open channel with its factor, ack mode, leader, next_seq and commit."""
        return [
            ChannelInfo(**{**c, "groups": tuple(c.get("groups", ()))})
            for c in self._call("channels")
        ]

    def open_channel(
        self, name: str, replication: ReplicationConfig | None = None, **options: Any
    ) -> None:
        """Open ``name`` on the cluster (``Cluster.open_channel`` semantics and errors)."""
        from netmesh.cluster.node_worker import replication_to_dict

        self._call(
            "open_channel",
            timeout=60.0,
            name=name,
            replication=replication_to_dict(replication),
            options=options,
        )

    def producer(
        self, channel: str, capacity: int | None = None, idempotent: bool = False
    ) -> ClientProducer:
        """A producer into ``channel`` that follows its leader (see the module doc).

        ``idempotent``: exactly once across failover (issue 12): each batch carries
        (producer id, batch seq); after a leader change ``flush`` sends the batches the
        old leader had not acknowledged again, and the new leader refuses the ones its
        log already holds (the channel must be opened with ``idempotence=True``; the
        de-duplication window is the log's last 100,000 events). ``flush`` then raises
        NotLeader only if no leader acknowledges within ``timeout``."""
        return ClientProducer(self, channel, capacity, idempotent)

    def subscribe(
        self,
        channel: str,
        from_seq: int | Literal["earliest", "latest"] = 0,
        durable: str | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        dead_letter: str | None = None,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
    ) -> Subscription:
        """Events of ``channel`` from ``from_seq`` on, then live (see the module doc).

        ``durable``: join the consumer group of that name instead (issue 12; see
        :mod:`netmesh.cluster.groups`): each event goes to one member at a time, starting
        after what the group acknowledged (``from_seq`` is ignored); acknowledge with
        ``sub.ack(ev)`` / ``sub.ack_through(seq)``; an event not acknowledged within
        ``ack_wait`` s (or whose member died) is delivered again (``ev.delivery_count``),
        after ``max_deliver`` deliveries it goes to ``dead_letter`` (``<channel>.dlq``).
        ``max_ack_pending`` (default 64, JetStream's option of that name, per member
        here): the member is sent a new event only while it holds fewer unacknowledged
        ones; the ``ack_wait`` clock starts when an event is sent, so a member that
        takes longer than ``ack_wait / max_ack_pending`` s per event gets events again.
        Acknowledgements are sent within ``ACK_FLUSH_S`` (50 ms).
        Raises ConfigError (``max_ack_pending`` < 1, ``ack_wait`` <= 0, ...).
        """
        if durable is None:
            return Subscription(self, channel, from_seq, None)
        group = {
            "durable": durable,
            "ack_wait": ack_wait,
            "max_deliver": max_deliver,
            "dead_letter": dead_letter,
            "max_ack_pending": max_ack_pending,
        }
        return Subscription(self, channel, 0, None, group)

    def _start_ack_flusher(self) -> None:
        """Start (once) the thread that sends group members' held acknowledgements
        within ``ACK_FLUSH_S`` of the first one, even while the application is busy
        with a later event (issue 12 trial: acks held until 256 piled up made a slow
        member's acknowledged events expire)."""
        with self._lock:
            if self._ack_flusher is not None or self._closed:
                return
            self._ack_flusher = threading.Thread(
                target=self._flush_acks_loop, name=f"acks-{self.name}", daemon=True
            )
        self._ack_flusher.start()

    def _flush_acks_loop(self) -> None:
        while not self._acks_due.wait(ACK_FLUSH_S / 2):
            now = time.monotonic()
            for sub in list(self._children):
                since = sub._acks_since
                if since is not None and now - since >= ACK_FLUSH_S:
                    with contextlib.suppress(NetmeshError, OSError):
                        sub.flush_acks()

    def consumers(self, channel: str) -> list[dict[str, Any]]:
        """The consumer groups of ``channel``: members, pending, acknowledged_through,
        delivered, redelivered, dead_lettered."""
        return list(self._call("groups", channel=channel))

    def read_range(self, channel: str, start: int, end: int) -> list[RedexEvent]:
        """Events ``start <= seq < end`` that the channel holds (as a subscription would
        deliver them), through shared memory, in one request. ConfigError for bad
        bounds; Lagged if retention removed some of them."""
        if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end < start:
            raise ConfigError(f"read_range needs 0 <= start <= end, got {start!r}, {end!r}")
        if end == start:
            return []
        with Subscription(self, channel, start, end) as sub:
            return list(sub)

    def close(self) -> None:
        """Close the connection; what it set up is released by the server. A durable
        subscription still open first sends its acknowledgements and which events its
        application was handed (see :meth:`Subscription.close`); its shared memory
        stays mapped, so another thread still reading it gets a NetmeshError from the
        closed connection, never a fault."""
        self._acks_due.set()
        for sub in list(self._children):
            with contextlib.suppress(NetmeshError, OSError):
                sub._release_for_client()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClientProducer:
    """``append``/``append_batch``/``flush`` into a channel's leader (see module doc)."""

    def __init__(
        self, client: Client, channel: str, capacity: int | None, idempotent: bool = False
    ) -> None:
        self.client = client
        self.channel = channel
        self.capacity = capacity
        self.idempotent = idempotent
        self.producer_id = secrets.randbits(63) | 1 if idempotent else 0
        self._batch_seq = 0
        self._unacked: list[list[bytes]] = []  # idempotent batches (with headers) to resend
        self.resent_batches = 0
        self.retargets = 0
        self._p: Producer | None = None
        self._node = -1
        self._last_seq = -1  # of the last acknowledged event (-1: none yet)
        self._attach()

    @property
    def node(self) -> int:
        """Index of the node this producer appends to."""
        return self._node

    def _attach(self) -> None:
        try:
            got = self.client._call(
                "producer", channel=self.channel, capacity=self.capacity, idempotent=self.idempotent
            )
        except NotLeader as exc:
            lead = getattr(exc, "leader", None)
            if self.client.serves == "node" and lead is not None and lead != self.client.node_id:
                # a node daemon serves its own node only: the leader is on another host,
                # and waiting here would not bring it back (README, several machines)
                exc.final = True  # type: ignore[attr-defined]
            raise
        self._p = Producer(got["ring"], self.channel, max_payload=got["max_payload"])
        self._node = got["node"]
        self._pid = got.get("pid")

    def _detach(self) -> None:
        p, self._p = self._p, None
        if p is not None:
            p.close()
            with contextlib.suppress(NetmeshError):
                self.client._call("release", ring=p.ring_name)

    def _retarget(self) -> None:
        self._detach()
        self.retargets += 1
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._attach()
                return
            except (NotLeader, NodeUnresponsive, TimeoutError) as exc:
                if getattr(exc, "final", False) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _lost(self, count: int, why: str) -> NotLeader:
        """Move to the new leader after ``count`` events went unacknowledged (``why``);
        the NotLeader to raise (``unacknowledged = count``). When a node daemon's leader
        moved to another host, the daemon's refusal naming it, with the count: this
        producer stays detached (each later call raises that refusal again)."""
        try:
            self._retarget()
        except NotLeader as final:
            if not getattr(final, "final", False):
                raise
            final.unacknowledged = count  # type: ignore[attr-defined]
            final.args = (f"{self.channel}: {count} events were not acknowledged ({why}); {final}",)
            return final
        return _not_acked(self.channel, count, why)

    def _live(self) -> Producer:
        if self._p is None:
            self._retarget()
        assert self._p is not None
        return self._p

    def append(self, payload: bytes, timeout: float | None = 10.0) -> None:
        """Queue one event (PayloadTooLarge, RingFull, NotLeader: see ``flush``)."""
        if self.idempotent:
            self.append_batch([payload], timeout)
            return
        p = self._live()
        try:
            p.append(payload, timeout)  # the ring's one-record fast path
        except RingClosed:  # the node stopped: its unacknowledged events are reported
            raise self._lost(p.sent - p.acked(), "its node stopped") from None

    def append_batch(self, payloads: Sequence[bytes], timeout: float | None = 10.0) -> None:
        """Queue events in order; blocks while the ring is full (the node's backpressure)."""
        if self.idempotent:
            if not payloads:
                return
            records = [idem.header(self.producer_id, self._batch_seq, len(payloads)), *payloads]
            self._batch_seq += 1
            self._unacked.append(records)
            try:
                self._live().append_batch(records, timeout)
            except RingClosed:  # the node died: every unacknowledged batch to the next one
                self._retarget()
                self._resend(time.monotonic() + 30.0)
            return
        p = self._live()
        try:
            p.append_batch(payloads, timeout)
        except RingClosed:  # the node stopped: its unacknowledged events are reported
            raise self._lost(p.sent - p.acked(), "its node stopped") from None

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every queued event is acknowledged; the seq of the last one (-1
        while this producer has had no event acknowledged).

        Plain producers: see :meth:`_flush_once`. Idempotent producers resend what a
        leader change left unacknowledged until a leader acknowledges it all (each batch
        is stored once); NotLeader/NodeUnresponsive only when ``timeout`` passes."""
        if not self.idempotent:
            return self._flush_once(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                last = self._flush_once(max(0.1, deadline - time.monotonic()))
                self._unacked.clear()
                return last
            except (NotLeader, NodeUnresponsive):
                if time.monotonic() > deadline:
                    raise
                self._resend(deadline)

    def _resend(self, deadline: float) -> None:
        """After a retarget: every unacknowledged batch again, in order, same numbers."""
        while time.monotonic() < deadline:
            try:
                p = self._live()
                for records in self._unacked:
                    p.append_batch(records, 10.0)
                self.resent_batches += len(self._unacked)
                return
            except (RingClosed, NotLeader, NodeUnresponsive):
                self._retarget()

    def _flush_once(self, timeout: float = 30.0) -> int:
        """Wait until the node acknowledged every event queued; the seq of the last.

        Raises NotLeader (with ``unacknowledged``) when the node stopped leading or
        died first; the producer then appends to the new leader. NodeUnresponsive if
        nothing answers within ``timeout``.
        """
        p = self._live()
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + LIVENESS_S
        pause = 20e-6
        while p.acked() < p.sent and not p.ring.consumer_closed():
            now = time.monotonic()
            if now > deadline:
                raise NodeUnresponsive(
                    f"{self.channel}: {p.sent - p.acked()} events not acknowledged in {timeout}s"
                )
            if now >= next_check:
                next_check = now + LIVENESS_S
                if not self.client._call("node_alive", node=self._node, pid=self._pid):
                    raise self._lost(p.sent - p.acked(), f"node {self._node} died")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
        if p.acked() < p.sent:  # the node closed the ring (it stopped)
            raise self._lost(p.sent - p.acked(), "its node stopped")
        try:
            seq = p.flush(max(0.0, deadline - time.monotonic()))
            self._last_seq = max(self._last_seq, seq)  # a retarget starts a new ring
            return self._last_seq
        except NotLeader as exc:
            raise self._lost(p.refused_total, "the node is no longer the leader") from exc

    def close(self) -> None:
        self._detach()

    def __enter__(self) -> ClientProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_acked(channel: str, count: int, why: str) -> NotLeader:
    err = NotLeader(channel)
    err.args = (
        f"{channel}: {count} events were not acknowledged ({why}); the producer"
        " now appends to the new leader",
    )
    err.unacknowledged = count  # type: ignore[attr-defined]
    return err


@dataclass(frozen=True, slots=True)
class DeliveredEvent(RedexEvent):
    """An event of a consumer group: ``delivery_count`` is 1 on its first delivery."""

    delivery_count: int = 1


class Subscription:
    """Events of a channel in seq order; an iterator and an async iterator. A member of
    a consumer group (``durable=``) gets :class:`DeliveredEvent` s, not necessarily
    contiguous, and acknowledges them."""

    def __init__(
        self,
        client: Client,
        channel: str,
        from_seq: int | str,
        end_seq: int | None,
        group: dict[str, Any] | None = None,
    ) -> None:
        self.group = group
        self._acks: list[int] = []
        self._acks_lock = threading.RLock()
        self._acks_since: float | None = None  # when the oldest held ack was given
        self._unacked: set[int] = set()
        self.client = client
        self.channel = channel
        self.end_seq = end_seq
        self.failovers = 0
        self._from: int | str = from_seq
        self._next: int | None = from_seq if isinstance(from_seq, int) else None
        self._history: list[list[int]] = []  # [term, end seq] per run of delivered batches
        self._buf: deque[RedexEvent] = deque()
        self._ring: ShmRing | None = None
        self._ring_name = ""
        self._node = -1
        self._done = False
        self._closed = False
        self._open(exclude=[])
        client._children.add(self)

    @property
    def next_seq(self) -> int | None:
        """The seq of the next event this subscription will deliver (None until known)."""
        return self._next

    @property
    def node(self) -> int:
        return self._node

    def _open(self, exclude: list[int]) -> None:
        if self.group is not None:
            got = self.client._call("subscribe_group", channel=self.channel, **self.group)
            self._ring_name, self._node, self._pid = got["ring"], got["node"], None
            self._ring = ShmRing.attach(self._ring_name)
            self.client._start_ack_flusher()
            return
        start = self._next if self._next is not None else self._from
        got = self.client._call(
            "subscribe",
            channel=self.channel,
            from_seq=start,
            end_seq=self.end_seq,
            exclude=exclude,
            history=self._history[-64:],
        )
        self._ring_name, self._node = got["ring"], got["node"]
        self._pid = got.get("pid")
        self._ring = ShmRing.attach(self._ring_name)

    def _drop_ring(self, clean: bool = False) -> None:
        """Detach from the ring and release it. ``clean`` (a group member closing):
        tell the group which unacknowledged events the application was handed; the
        prefetched rest does not count as delivered."""
        ring, self._ring = self._ring, None
        if ring is not None:
            with contextlib.suppress(Exception):
                ring.close_consumer()
            ring.close()
            extra: dict[str, Any] = {}
            if clean and self.group is not None:
                extra["seen"] = sorted(self._unacked)
            with contextlib.suppress(NetmeshError):
                self.client._call("release", ring=self._ring_name, **extra)

    def _failover(self) -> None:
        dead = self._node
        self._drop_ring()
        self.failovers += 1
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._open(exclude=[dead])
                return
            except (NodeUnresponsive, NotLeader) as exc:
                if getattr(exc, "final", False) or time.monotonic() > deadline:
                    raise  # final: e.g. a group that runs on another daemon now
                time.sleep(0.05)

    def _fill(self, timeout: float | None) -> bool:
        """Move frames from the ring into the buffer; False on timeout with nothing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_check = time.monotonic() + LIVENESS_S
        while not self._buf and not self._done:
            self.flush_acks()
            if self._ring is None:
                self._failover()
            assert self._ring is not None
            try:
                frames = self._ring.get_batch(256, timeout=LIVENESS_S)
            except RingClosed:  # the node stopped serving: move on
                self._failover()
                continue
            for frame in frames:
                self._on_frame(frame)
            now = time.monotonic()
            if not frames and now >= next_check and self._node >= 0:
                next_check = now + LIVENESS_S
                if not self.client._call("node_alive", node=self._node, pid=self._pid):
                    self._failover()
            if deadline is not None and now >= deadline and not self._buf:
                return False
        return True

    def _on_frame(self, frame: bytes) -> None:
        msg = subframes.decode(frame)
        kind = msg[0]
        if kind == subframes.EVENTS:
            first, payloads, term = msg[1], msg[2], msg[3]
            if self._next is None:
                self._next = first
            skip = self._next - first  # a resumed subscription may repeat a prefix
            if skip < 0:
                raise NetmeshError(f"{self.channel}: gap in the subscription at {self._next}")
            for i, p in enumerate(payloads[skip:], start=first + skip):
                self._buf.append(RedexEvent(RedexEntry(i, len(p)), p))
            end = first + len(payloads)
            if end > self._next:
                self._next = end
                if self._history and self._history[-1][0] == term:
                    self._history[-1][1] = end
                else:
                    self._history.append([term, end])
        elif kind == subframes.GROUP:
            for seq, count, p in msg[1]:
                self._buf.append(DeliveredEvent(RedexEntry(seq, len(p)), p, count))
        elif kind == subframes.TRUNCATED:
            self._done = True
            raise Truncated(self.channel, int(msg[1]))
        elif kind == subframes.LAGGED:
            self._done = True
            raise Lagged(
                f"{self.channel}: retention removed events from seq {self._next} on;"
                f" the channel now starts at seq {msg[1]}"
            )
        elif kind == subframes.END:
            self._done = True
        else:
            self._done = True
            raise control.error_from_value(msg[1], f"{self.channel} subscription")

    # -- acknowledgements (consumer groups) ----------------------------------------------
    def ack(self, ev: RedexEvent | int) -> None:
        """Acknowledge one delivered event. Sent in batches: within ``ACK_FLUSH_S``
        (by the client's flusher thread), at once when half of ``max_ack_pending`` are
        held or when the member has nothing more in hand (every event it was handed
        acknowledged, none buffered), and when it waits or closes."""
        seq = ev if isinstance(ev, int) else ev.entry.seq
        if self.group is None:
            raise ConfigError("ack() is for durable subscriptions (subscribe(..., durable=))")
        self._unacked.discard(seq)
        with self._acks_lock:
            self._acks.append(seq)
            if self._acks_since is None:
                self._acks_since = time.monotonic()
            held = len(self._acks)
        half = max(1, int(self.group.get("max_ack_pending") or DEFAULT_MAX_ACK_PENDING) // 2)
        if held >= half or not (self._buf or self._unacked):  # nothing more in hand
            self.flush_acks()

    def ack_through(self, seq: int) -> None:
        """Acknowledge every event delivered to this member up to ``seq``."""
        for s in sorted(x for x in self._unacked if x <= seq):
            self.ack(s)

    def flush_acks(self) -> None:
        """Send the acknowledgements given so far now (see :meth:`ack` for when they
        otherwise travel). The lock is held across the request, so acks sent by the
        flusher thread always reach the server before a close releases the member."""
        if self._acks and self.group is not None:
            with self._acks_lock:
                acks, self._acks = self._acks, []
                self._acks_since = None
                if acks:
                    self.client._call("ack", ring=self._ring_name, seqs=acks)

    # -- iteration -------------------------------------------------------------------
    def _hand(self, ev: RedexEvent) -> RedexEvent:
        """An event goes to the application: from now on a group member counts it as
        delivered (``ack_through`` covers it; a clean close reports it as seen)."""
        if self.group is not None:
            self._unacked.add(ev.entry.seq)
        return ev

    def poll(self, timeout: float = 0.0) -> list[RedexEvent]:
        """The events that are ready (waiting up to ``timeout`` s for the first)."""
        self._fill(timeout)
        out = [self._hand(ev) for ev in self._buf]
        self._buf.clear()
        return out

    def __iter__(self) -> Iterator[RedexEvent]:
        return self

    def __next__(self) -> RedexEvent:
        if self._closed:
            raise StopIteration
        self._fill(None)
        if not self._buf:
            raise StopIteration
        return self._hand(self._buf.popleft())

    def __aiter__(self) -> AsyncIterator[RedexEvent]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[RedexEvent]:
        while not self._closed:
            if not self._buf:
                got = await asyncio.to_thread(self._fill, LIVENESS_S)
                if not got and self._done:
                    return
            while self._buf:
                yield self._hand(self._buf.popleft())
            if self._done and not self._buf:
                return

    def _release_for_client(self) -> None:
        """The client closes: send the acks and release the ring with what the
        application was handed, without unmapping it (another thread may be reading)."""
        if self._closed or self.group is None:
            return
        self.flush_acks()
        self.client._call("release", ring=self._ring_name, seen=sorted(self._unacked))

    def close(self) -> None:
        """Stop; the node's pump ends and every shared-memory name is released."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(NetmeshError):
            self.flush_acks()
        self._drop_ring(clean=True)
        self._buf.clear()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

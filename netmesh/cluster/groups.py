"""Durable consumers and consumer groups (issue 12), run where clients are served.

A group is (channel, durable name). Its dispatcher runs in the process of the
:class:`~netmesh.cluster.clients.ClientServer` (the supervisor, or a node daemon): it
reads the channel through a subscription ring from a node (what the channel's mode
promises will stay), hands each event to one member at a time through the member's
own ring (the dispatcher produces into it), and takes acknowledgements over the client
socket.

* An event not acknowledged within ``ack_wait`` seconds, or whose member left (its
  ring closed, its connection ended), is delivered again, to any member; each delivery
  carries ``delivery_count``. After ``max_deliver`` deliveries it is appended to the
  dead-letter channel (``<channel>.dlq`` unless named) and counted, then acknowledged.
* The group's position is stored **in the cluster**: a state record (ack floor, the
  acknowledged seqs above it, delivery counts, dead-lettered count) is appended to the
  channel ``<channel>.consumers`` (opened with the channel's replication, so it has the
  same ack mode, survives node SIGKILLs and, with ``data_dir``, full restarts) at most
  every ``PERSIST_S`` seconds while acknowledgements arrive. A group that starts again
  resumes after the newest record: at-least-once, an acknowledgement younger than
  ``PERSIST_S`` at a crash means one more delivery. The groups of a channel share one
  :class:`StateStore`: it appends a snapshot of all of them every ``SNAPSHOT_EVERY``
  records, so a start reads O(live state), and opens the state channel with a retention
  (``STATE_RETENTION_EVENTS``) that never drops the newest snapshot.
* Flow control (JetStream's ``max_ack_pending``, per member, default
  ``DEFAULT_MAX_ACK_PENDING``): a member is sent a new event only while it holds fewer
  unacknowledged ones; acknowledgements (not receipt) give the room back and wake the
  dispatcher. The ``ack_wait`` clock starts when an event is sent, which is fair since
  at most ``max_ack_pending`` wait in the member: one slower than
  ``ack_wait / max_ack_pending`` per event is too slow and gets events again.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netmesh.cluster import control, subframes
from netmesh.cluster.producer import Producer
from netmesh.errors import NetmeshError, RingClosed
from netmesh.ring.shm import ShmRing

if TYPE_CHECKING:
    from netmesh.cluster.clients import ClientBackend

log = logging.getLogger(__name__)

PERSIST_S = 0.05
#: unacknowledged events per member at most unless it asks otherwise (JetStream's
#: ``max_ack_pending``, per member here): a new event goes to a member only while it
#: holds fewer, so the ``ack_wait`` clock of an event, which starts when it is sent,
#: covers at most this many events of queueing in the member
DEFAULT_MAX_ACK_PENDING = 64
FETCH_AHEAD = 4096  # events read from the channel ahead of delivery (not yet sent)
TICK_S = 0.005  # the dispatcher's longest sleep; an acknowledgement wakes it at once
HOST_CHECK_S = 0.5  # how often a dispatcher checks it may still run here (a node daemon)
LOAD_WAIT_S = 10.0  # for a reopened state channel's commit index
#: every this many records a :class:`StateStore` appends a snapshot (the latest state of
#: every group of the channel), so a start reads at most about twice this many records
SNAPSHOT_EVERY = 100
#: the state channel's retention when netmesh opens it (a Cluster): the latest snapshot
#: is always among the newest SNAPSHOT_EVERY records, so this never drops it
STATE_RETENTION_EVENTS = 10 * SNAPSHOT_EVERY


@dataclass
class Member:
    ring_name: str
    ring: ShmRing
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    inflight: set[int] = field(default_factory=set)


@dataclass
class GroupState:
    """What is persisted: everything below ``floor`` is acknowledged."""

    floor: int = 0
    acked: set[int] = field(default_factory=set)
    deliveries: dict[int, int] = field(default_factory=dict)
    dead_lettered: int = 0

    def ack(self, seq: int) -> None:
        if seq >= self.floor:
            self.acked.add(seq)
            self.deliveries.pop(seq, None)  # an acknowledged event is never delivered again
            while self.floor in self.acked:
                self.acked.discard(self.floor)
                self.deliveries.pop(self.floor, None)
                self.floor += 1

    def to_json(self, group: str) -> bytes:
        return json.dumps(
            {
                "group": group,
                "floor": self.floor,
                "acked": sorted(self.acked),
                "deliveries": {str(k): v for k, v in self.deliveries.items()},
                "dead": self.dead_lettered,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GroupState:
        return cls(
            int(d["floor"]),
            set(map(int, d["acked"])),
            {int(k): int(v) for k, v in d["deliveries"].items()},
            int(d["dead"]),
        )


def read_channel(
    backend: ClientBackend, new_ring: Any, drop_ring: Any, channel: str, from_seq: int
) -> list[tuple[int, bytes]]:
    """Every (seq, payload) of ``channel`` held now from ``from_seq`` (or from the first
    retained event, if retention removed some), through a bounded subscription ring.

    Raises NetmeshError when the read stalls for 5 s, NodeUnresponsive."""
    node = backend.serving_node(channel, [])
    out: list[tuple[int, bytes]] = []
    start: int | str = from_seq
    while True:
        ring_name, ring = new_ring(node, 8 << 20)
        lagged: int | None = None
        try:
            backend.call(
                node,
                "subscribe",
                ring=ring_name,
                channel=channel,
                from_seq=start,
                end_seq=1 << 62,
                history=None,
            )
            done = False
            while not done:
                try:
                    frames = ring.get_batch(256, timeout=5.0)
                except RingClosed:
                    break
                if not frames:
                    raise NetmeshError(f"reading {channel!r} for consumer groups stalled")
                for frame in frames:
                    msg = subframes.decode(frame)
                    if msg[0] == subframes.EVENTS:
                        out += enumerate(msg[2], start=msg[1])
                    else:
                        if msg[0] == subframes.LAGGED:
                            lagged = int(msg[1])
                        done = True
        finally:
            with contextlib.suppress(Exception):
                backend.call(node, "detach_ring", timeout=5.0, ring=ring_name)
            drop_ring(ring_name, ring)
        if lagged is None or out:
            return out
        start = lagged  # retention moved the start on: read from there


class StateStore:
    """The state channel ``<channel>.consumers`` of one channel, shared by its groups in
    this process (issue 12 trial §3: the channel grew without limit and every group start
    read all of it).

    Records (JSON): ``{"group": name, ...state}`` (a group's state, see
    :meth:`GroupState.to_json`) and, every ``SNAPSHOT_EVERY`` records and as the first
    record after a start, ``{"snapshot": {name: state, ...}}``: the latest state of
    every group known, running or not. A start reads from the newest snapshot found
    among the last ``2 * SNAPSHOT_EVERY`` records (the whole channel only when there is
    none: a log written before snapshots). Cost of a start: O(live state), not
    O(history). With the single writer of a state channel (the supervisor, or the daemon
    leading it) the newest snapshot is always among the newest ``SNAPSHOT_EVERY``
    records, so a retention of ``STATE_RETENTION_EVENTS`` never drops it.
    """

    def __init__(self, backend: ClientBackend, channel: str, new_ring: Any, drop_ring: Any):
        self.backend = backend
        self.channel = channel
        self.state_channel = f"{channel}.consumers"
        self._new_ring = new_ring
        self._drop_ring = drop_ring
        self.lock = threading.RLock()
        self.latest: dict[str, dict[str, Any]] = {}
        self.records_read = 0  # at the load (what a start cost)
        self._since_snapshot = SNAPSHOT_EVERY  # the first write is a snapshot
        self._producer: Any = None  # (ring name, ring, Producer, node)
        self._load()

    def _load(self) -> None:
        _ensure_channel(self.backend, self.channel, self.state_channel, retention=True)
        # a reopened quorum channel delivers below its commit index only, which the
        # new leader learns again: wait (briefly) until it covers what the log holds
        deadline = time.monotonic() + LOAD_WAIT_S
        next_seq = 0
        while time.monotonic() < deadline:
            info = next(
                (c for c in self.backend.channel_list() if c["name"] == self.state_channel), None
            )
            if info is not None:
                next_seq = int(info["next_seq"])
            if (
                info is not None
                and info["leader"] is not None
                and info["commit"] >= info["next_seq"]
            ):
                break
            time.sleep(0.02)
        rd = (self.backend, self._new_ring, self._drop_ring, self.state_channel)
        records = read_channel(*rd, max(0, next_seq - 2 * SNAPSHOT_EVERY))
        if not any(b'"snapshot"' in p[:16] for _, p in records):
            records = read_channel(*rd, 0)  # no snapshot yet: an older log
        self.records_read = len(records)
        for _, raw in records:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                d = json.loads(raw)
                if "snapshot" in d:
                    self.latest = {str(k): v for k, v in d["snapshot"].items()}
                elif "group" in d:
                    self.latest[str(d["group"])] = d

    def get(self, group: str) -> GroupState:
        with self.lock:
            d = self.latest.get(group)
        if d is None:
            return GroupState()
        try:
            return GroupState.from_json(d)
        except (ValueError, KeyError, TypeError):
            return GroupState()

    def write(self, group: str, record: bytes) -> None:
        """Append ``group``'s state (and a snapshot when one is due)."""
        with self.lock:
            self.latest[group] = json.loads(record)
            out = [record]
            self._since_snapshot += 1
            if self._since_snapshot >= SNAPSHOT_EVERY:
                self._since_snapshot = 0
                snap = {"snapshot": self.latest}
                out = [json.dumps(snap, separators=(",", ":")).encode()]
            self._append(out)

    def _append(self, payloads: list[bytes]) -> None:
        _append_via(self, "_producer", self.backend, self._new_ring, self._drop_ring,
                    self.state_channel, payloads)  # fmt: skip

    def close(self) -> None:
        _close_producer(self, "_producer", self.backend, self._drop_ring)


def _ensure_channel(backend: ClientBackend, of: str, name: str, retention: bool = False) -> None:
    """Open ``name`` with the replication of channel ``of`` unless it is open (a state
    channel gets ``STATE_RETENTION_EVENTS``). A node daemon refuses (ConfigError):
    there it must be in [[channels]]."""
    if not backend.is_open(name):
        rep = getattr(backend, "replication_of", None)
        opts: dict[str, Any] = {"retention_max_events": STATE_RETENTION_EVENTS} if retention else {}
        backend.open_channel(name, rep(of) if rep else None, opts)


def _append_via(
    holder: Any,
    slot: str,
    backend: ClientBackend,
    new_ring: Any,
    drop_ring: Any,
    channel: str,
    payloads: list[bytes],
) -> None:
    """Append through a ring to the channel's leader, kept in ``holder.<slot>`` (re-made
    after a leader change). Raises NetmeshError after 50 failed attempts (or the
    NotLeader of a node daemon that does not lead ``channel``: it never will here)."""
    for _attempt in range(50):
        held = getattr(holder, slot, None)
        if held is None:
            node = backend.serving_node(channel, [])
            name, ring = new_ring(node, 4 << 20)
            try:
                backend.call(node, "attach_ring", ring=name, channel=channel)
            except BaseException:
                drop_ring(name, ring)
                raise
            held = (name, ring, Producer(name, channel), node)
            setattr(holder, slot, held)
        name, ring, prod, node = held
        try:
            prod.append_batch(payloads)
            prod.flush(timeout=5.0)
            return
        except NetmeshError:
            setattr(holder, slot, None)
            prod.close()
            with contextlib.suppress(Exception):
                backend.call(node, "detach_ring", timeout=5.0, ring=name)
            drop_ring(name, ring)
            time.sleep(0.05)
    raise NetmeshError(f"consumer groups: cannot append to {channel!r}")


def _close_producer(holder: Any, slot: str, backend: ClientBackend, drop_ring: Any) -> None:
    held = getattr(holder, slot, None)
    if held is not None:
        name, ring, prod, node = held
        setattr(holder, slot, None)
        prod.close()
        with contextlib.suppress(Exception):
            backend.call(node, "detach_ring", timeout=5.0, ring=name)
        drop_ring(name, ring)


class Group:
    """One consumer group's dispatcher (a thread); see the module doc."""

    def __init__(
        self,
        backend: ClientBackend,
        channel: str,
        name: str,
        ack_wait: float,
        max_deliver: int,
        dlq: str,
        new_ring: Any,
        drop_ring: Any,
        store: StateStore | None = None,
    ) -> None:
        self.backend = backend
        self.channel = channel
        self.name = name
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.dlq = dlq
        self.state_channel = f"{channel}.consumers"
        self._new_ring = new_ring  # (node, capacity) -> (name, ShmRing)
        self._drop_ring = drop_ring  # (name, ShmRing) -> None
        self.members: dict[str, Member] = {}
        self.lock = threading.RLock()
        self.state = GroupState()
        self.redelivered = 0
        self.delivered = 0
        self._payloads: dict[int, bytes] = {}  # fetched, not yet acknowledged
        self._ready: deque[int] = deque()  # to deliver (redeliveries first)
        self._dead: list[int] = []  # delivered max_deliver times: to the dead-letter channel
        self._deadlines: list[tuple[float, int]] = []  # (deadline, seq) heap
        self._pending: dict[int, tuple[str, float]] = {}  # seq -> (member, deadline)
        self._dirty = False
        self._last_persist = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by acks and joins: credit came back
        self._source: tuple[str, ShmRing, int] | None = None  # ring name, ring, node
        self._source_checked = 0.0
        self._dlq_producer: Any = None  # (ring name, ring, Producer, node)
        #: why the dispatcher stopped (its members got it as their error), or None
        self.failed: BaseException | None = None
        self._host_check = getattr(backend, "check_group_host", None)
        self._host_checked = time.monotonic()
        self.store = store or StateStore(backend, channel, new_ring, drop_ring)
        self._load()
        self._next_fetch = self.state.floor  # acknowledged seqs above it are skipped
        self._thread = threading.Thread(target=self._run, name=f"group-{name}", daemon=True)
        self._thread.start()

    # -- persistence -----------------------------------------------------------------
    def _load(self) -> None:
        _ensure_channel(self.backend, self.channel, self.dlq)
        self.state = self.store.get(self.name)

    def _persist(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_persist < PERSIST_S):
            return
        with self.lock:
            record = self.state.to_json(self.name)
            self._dirty = False
        self._last_persist = now
        self.store.write(self.name, record)

    # -- members and acks ------------------------------------------------------------
    def join(
        self, ring_name: str, ring: ShmRing, max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    ) -> None:
        """A member joins; it is sent events while it holds fewer than
        ``max_ack_pending`` unacknowledged ones (>= 1)."""
        with self.lock:
            self.members[ring_name] = Member(ring_name, ring, max_ack_pending)
        self._wake.set()

    def leave(self, ring_name: str, seen: Collection[int] | None = None) -> None:
        """A member left (or died): its unacknowledged events go to the others.

        ``seen``: given by a member that closes cleanly, the unacknowledged seqs its
        application was handed. Every other event in flight to it (prefetched, never
        handed over) does not count as a delivery: its ``delivery_count`` is rolled
        back, so closing a subscription never moves unseen events towards the
        dead-letter channel. None (a member that died): every event in flight counts.
        """
        with self.lock:
            m = self.members.pop(ring_name, None)
            if m is None:
                return
            handed = None if seen is None else set(seen)
            for seq in sorted(m.inflight, reverse=True):
                self._pending.pop(seq, None)
                if handed is not None and seq not in handed:
                    count = self.state.deliveries.get(seq, 0) - 1
                    if count > 0:
                        self.state.deliveries[seq] = count
                        self.redelivered -= 1
                    else:
                        self.state.deliveries.pop(seq, None)
                    self.delivered -= 1
                    self._dirty = True
                self._requeue(seq)
            self._dead.sort()  # dead-lettered in channel order

    def _requeue(self, seq: int) -> None:
        """An unacknowledged delivery ended: deliver again, or dead-letter it."""
        if self.state.deliveries.get(seq, 0) >= self.max_deliver:
            self._dead.append(seq)
        else:
            self._ready.appendleft(seq)

    def ack(self, ring_name: str, seqs: list[int]) -> None:
        with self.lock:
            m = self.members.get(ring_name)
            for seq in seqs:
                self._pending.pop(seq, None)
                self._payloads.pop(seq, None)
                if m is not None:
                    m.inflight.discard(seq)
                self.state.ack(seq)
            self._dirty = True
        self._wake.set()

    def info(self) -> dict[str, Any]:
        with self.lock:
            return {
                "group": self.name,
                "members": len(self.members),
                "pending": len(self._pending),
                "acknowledged_through": self.state.floor,
                "delivered": self.delivered,
                "redelivered": self.redelivered,
                "dead_lettered": self.state.dead_lettered,
                "error": None if self.failed is None else str(self.failed),
            }

    # -- the dispatcher --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._host_check is not None:
                    now = time.monotonic()
                    if now - self._host_checked >= HOST_CHECK_S:
                        self._host_checked = now
                        self._host_check(self.channel)  # a daemon that lost the lead: raises
                self._fetch()
                self._expire()
                self._dispatch()
                self._persist()
                self._wake.wait(TICK_S)
                self._wake.clear()
        except NetmeshError as exc:
            log.warning("consumer group %s of %s stopped: %s", self.name, self.channel, exc)
            self._fail(exc)
        except Exception as exc:
            log.exception("consumer group %s of %s stopped", self.name, self.channel)
            self._fail(exc)
        finally:
            if self.failed is None:
                with contextlib.suppress(Exception):
                    self._persist(force=True)

    def _fail(self, exc: BaseException) -> None:
        """The dispatcher stopped (e.g. NotLeader: this daemon no longer leads the state
        channel): every member gets ``exc`` as its subscription's error (a FAILED frame,
        then its ring ends), and a new subscribe makes the group again (or is refused)."""
        self.failed = exc
        frame = subframes.control(subframes.FAILED, control.error_value(exc))
        with self.lock:
            members = list(self.members.values())
        for m in members:
            with contextlib.suppress(Exception):
                m.ring.put(frame, timeout=1.0)
            with contextlib.suppress(Exception):
                m.ring.close_producer()

    def _open_source(self, exclude: list[int]) -> None:
        node = self.backend.serving_node(self.channel, exclude)
        name, ring = self._new_ring(node, 8 << 20)
        try:
            self.backend.call(
                node,
                "subscribe",
                ring=name,
                channel=self.channel,
                from_seq=self._next_fetch,
                end_seq=None,
                history=None,
            )
        except BaseException:
            self._drop_ring(name, ring)
            raise
        self._source = (name, ring, node)
        self._source_checked = time.monotonic()

    def _close_source(self) -> None:
        if self._source is not None:
            name, ring, node = self._source
            self._source = None
            with contextlib.suppress(Exception):
                ring.close_consumer()
            with contextlib.suppress(Exception):
                if self.backend.node_alive(node):
                    self.backend.call(node, "detach_ring", timeout=5.0, ring=name)
            self._drop_ring(name, ring)

    def _fetch(self) -> None:
        with self.lock:
            room = sum(m.max_ack_pending for m in self.members.values())
        if len(self._payloads) > FETCH_AHEAD + room:
            return  # enough in hand
        if self._source is None:
            self._open_source([])
        assert self._source is not None
        _, ring, node = self._source
        try:
            frames = ring.get_batch(64, timeout=0)
        except RingClosed:
            self._close_source()
            return
        if not frames and time.monotonic() - self._source_checked > 0.25:
            self._source_checked = time.monotonic()
            if not self.backend.node_alive(node):
                self._close_source()
                self._open_source([node])
            return
        with self.lock:
            for frame in frames:
                msg = subframes.decode(frame)
                if msg[0] != subframes.EVENTS:
                    continue
                first, payloads = msg[1], msg[2]
                for i, p in enumerate(payloads, start=first):
                    if i < self._next_fetch:
                        continue
                    self._next_fetch = i + 1
                    if i < self.state.floor or i in self.state.acked:
                        continue
                    self._payloads[i] = p
                    self._ready.append(i)

    def _expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, seq = heapq.heappop(self._deadlines)
                owner = self._pending.get(seq)
                if owner is None or owner[1] != deadline:
                    continue  # acknowledged, or delivered again since
                del self._pending[seq]
                m = self.members.get(owner[0])
                if m is not None:
                    m.inflight.discard(seq)
                self._requeue(seq)

    def _dispatch(self) -> None:
        dead: list[tuple[int, bytes]] = []
        with self.lock:
            for seq in self._dead:
                payload = self._payloads.get(seq)
                if payload is not None:
                    dead.append((seq, payload))
            self._dead.clear()
        self._dead_letter(dead)
        dead = []
        with self.lock:
            if not self.members:
                return
            batches: dict[str, list[list[Any]]] = {}
            order = sorted(self.members.values(), key=lambda m: len(m.inflight))
            k = 0
            while self._ready and order:
                seq = self._ready.popleft()
                payload = self._payloads.get(seq)
                if payload is None or seq < self.state.floor or seq in self.state.acked:
                    continue
                count = self.state.deliveries.get(seq, 0) + 1
                if count > self.max_deliver:
                    dead.append((seq, payload))
                    continue
                m = order[k % len(order)]
                if len(m.inflight) >= m.max_ack_pending:
                    order.remove(m)
                    self._ready.appendleft(seq)
                    continue
                k += 1
                self.state.deliveries[seq] = count
                if count > 1:
                    self.redelivered += 1
                self.delivered += 1
                deadline = time.monotonic() + self.ack_wait
                self._pending[seq] = (m.ring_name, deadline)
                heapq.heappush(self._deadlines, (deadline, seq))
                m.inflight.add(seq)
                batches.setdefault(m.ring_name, []).append([seq, count, payload])
            self._dirty = True
            for ring_name, events in batches.items():
                m2 = self.members.get(ring_name)
                if m2 is None:
                    continue
                try:
                    for i in range(0, len(events), 64):  # frames well under the ring's half
                        frame = subframes.control(subframes.GROUP, events[i : i + 64])
                        m2.ring.put(frame, timeout=1.0)
                except NetmeshError:
                    self.leave(ring_name)
        self._dead_letter(dead)

    def _dead_letter(self, dead: list[tuple[int, bytes]]) -> None:
        """Append to the dead-letter channel (outside the lock: it may wait), then ack."""
        if not dead:
            return
        _append_via(self, "_dlq_producer", self.backend, self._new_ring, self._drop_ring,
                    self.dlq, [p for _, p in dead])  # fmt: skip
        with self.lock:
            self.state.dead_lettered += len(dead)
            self.ack("", [seq for seq, _ in dead])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_source()
        _close_producer(self, "_dlq_producer", self.backend, self._drop_ring)

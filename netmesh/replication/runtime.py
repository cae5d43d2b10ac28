"""Replication runtime: binds each channel's pure coordinator to a MeshNode and a RedexFile.

One :class:`ChannelRuntime` per replicated channel; it is the shell of etcd's Ready
loop: every input (a timer tick, a received message, a local append) goes to the
coordinator, and the outputs go to the channel's
:class:`~netmesh.replication.executor.OutputExecutor` (the one implementation, which
the simulation runs too) over a :class:`FileStorage` (the RedexFile and its hard state)
and the MeshNode. The runtime only adds what is shell-specific: timers, decoding,
logging, the append guard (``RedexFile.refusal``) and quorum waiters.

Fail-stop: a storage error moves the channel to role FAILED (the executor's rule 1):
logged once, counted in ``storage_errors_total``, appends raise StorageFailed, the
channel is no longer ticked, nothing more is written until the file is closed and
reopened.

Timers and heartbeats (issue 10 §6): the :class:`ReplicationHub` runs ONE node-wide
tick that ticks only the channels whose coordinator is due (``next_tick_at``), and
sends every heartbeat queued in a loop turn to one peer as bundles on
:data:`HEARTBEAT_STREAM`; the other messages keep the channel's own stream.

Quiescence (issue 10 §6 at scale, issue 15 §4): an idle channel whose followers
are caught up goes quiescent (the coordinator's "Quiescence"): no timer, no
per-channel heartbeats. The hub then sends ONE liveness beat per peer per heartbeat
interval on :data:`LIVENESS_STREAM` (:class:`~netmesh.replication.messages.LivenessBeat`:
the set of channels this node leads quiescently, as ``quiet_key(channel, term)``
values, sent in full only for a silence window after it changed, else just its
generation), and wakes quiescent channels itself: followers whose leader's node fell
silent for the window or whose leader's beat stopped listing them (or never listed
them within a window of quiescing), leaders when a member's node falls silent.
Every coordinator input is preceded by ``coord.refresh(now, beat times)``. On the
idle path the hub does per-peer work only (a bytes or generation compare per beat);
per-channel work happens only when a channel changes state. Quiescent channels are
not ticked: the node-wide tick pops due channels from a heap instead of scanning
them all. This is CockroachDB's design (quiescent ranges plus node liveness, with
the dead-follower refinement: a leader quiesces leaving out followers silent for a
window).

Lost state (issue 10 §2): a log that holds events without its hard state file is
refused (LogCorrupt, :meth:`FileStorage.check_hard_state`); every incarnation of a
channel campaigns only in terms above :func:`incarnation_term_floor`.

Messages travel on the MeshNode message kind ``"redex/<channel name>"``. Local appends are
pushed to streaming followers once per event-loop turn (not per append), so a tight
append loop pays one push per turn. Appends on a node that is not the channel's leader
raise NotLeader (nothing is appended).

Standard placement: the node itself plus the peers it has a session with when the
channel opens, sorted by node id, first ``factor`` of them. Every node must compute
the same set, so clusters pin placement (``Cluster.open_channel`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from netmesh.config import ReplicationConfig
from netmesh.errors import (
    DecodeError,
    LocalProtocolError,
    LogCorrupt,
    NetmeshError,
    NotLeader,
    StorageFailed,
)
from netmesh.log import hardstate
from netmesh.log.file import RedexFile, write_durably
from netmesh.log.hardstate import Epoch, HardState
from netmesh.log.packed import PackedPayloads
from netmesh.replication import messages
from netmesh.replication.coordinator import (
    TERM_SLOTS,
    Apply,
    Output,
    ReplicationCoordinator,
    ResetLog,
    RoleChanged,
)
from netmesh.replication.executor import ExecutorHooks, OutputExecutor
from netmesh.replication.nic import resolve_config
from netmesh.replication.placement import membership_id
from netmesh.replication.roles import ReplicaRole, TransitionSignal

log = logging.getLogger(__name__)
KIND_PREFIX = "redex/"
#: MeshNode stream of heartbeat bundles (every channel's heartbeats to one peer)
HEARTBEAT_STREAM = "redex-hb"
#: MeshNode stream of liveness beats (one per peer per heartbeat interval)
LIVENESS_STREAM = "redex-live"
#: a beat carries the whole quiescent set every this many beats even if unchanged
#: (a receiver that missed every copy sent after a change catches up)
BEAT_FULL_EVERY = 10
#: channels per bundle: ~32 x (20 B + name) stays near one 1400 B datagram
BUNDLE_ROWS = 32
HARD_STATE_FILE = "hardstate"
PROBE_MAGIC = b"NMTS"
# Unacknowledged pushes per follower. One keeps a push in flight per round trip: at
# low rates every append goes out at once, under load appends pile up behind the ack
# and travel together (Nagle-like), so pushes and acks per event fall as load rises.
PUSH_WINDOW = 1
# Least seconds between two pushes to one follower (the coordinator's min_push_gap).
# 0: the window above already batches under load, and a gap timed from the last push
# carried every late batch's delay into the next (replica latency p50 0.88 -> 0.36 ms
# at 10k events/s with 0; replicated f2 throughput the same within the noise:
# 2.03/2.49x vs 2.31/2.34x redis-benchmark, interleaved quick runs).
MIN_PUSH_GAP = 0.0
# Payload bytes per push (the coordinator's push_bytes; requests keep sync_chunk_bytes).
# With one push in flight a sustained stream moves one push per round trip: 1 MiB
# pushes (16384 events of 64 B, 32 datagrams) against 256 KiB ones, replicated f2, the
# bench's paced load: leader 0.34 vs 0.44-0.72 us of CPU per event, 1.5-2.7 vs 1.0-1.2
# M events/s (shared machine, interleaved runs); 96 KiB: 0.9 us/event, 0.6-0.8 M/s.
# Two pushes in flight (PUSH_WINDOW = 2) did no better: 1.5-1.9 M/s with 512 KiB
# pushes, 2.2 M/s with 1 MiB (and 2 MiB in flight nears the 4 MiB socket buffer).
PUSH_BYTES = 1 << 20
# ... but at most this many datagrams of the node's max_datagram (never below
# sync_chunk_bytes): a push is lost whole when one datagram is, so links with small
# datagrams (1400 B over a real network) keep 256 KiB pushes; loopback clusters (32 KiB
# datagrams) get 1 MiB.
PUSH_DATAGRAMS = 32


def incarnation_term_floor() -> int:
    """The least term this incarnation of a node may campaign in: the wall clock in
    tenths of a second, times ``TERM_SLOTS`` (2**24; ~2**58 in 2026, below the
    coordinator's ``MAX_TERM // 2`` = 2**61 until about the year 2400).

    A node that lost (or never had) its hard state cannot know the terms it led in an
    earlier life, and one that lost it and learned a lower term from its peers (a
    recovered node) may campaign from below them; reusing a term lets two histories
    share it (issue 10 §2). So every incarnation campaigns above this floor, with
    persisted hard state or without. A term grows by at most ``TERM_SLOTS`` per
    election (terms are owned per node, ``coordinator.term_slot``) and the floor by
    ``TERM_SLOTS`` every 0.1 s, so terms stay below the floor of any later
    incarnation unless elections run faster than ten a second for as long as the
    node lived. Assumes the wall clock does not step back by more than the node's
    downtime and that a node does not restart twice within 0.1 s (Cassandra's gossip
    generation, the start second, makes the same kind of assumption; Raft §5.1
    persists ``currentTerm``, which the hard state keeps too).
    """
    return (time.time_ns() // 100_000_000) * TERM_SLOTS


def push_bytes(node: Any) -> int:
    """The coordinator's ``push_bytes`` for channels on ``node``: :data:`PUSH_BYTES`,
    at most :data:`PUSH_DATAGRAMS` of its ``max_datagram``."""
    datagram = getattr(getattr(node, "config", None), "max_datagram", None)
    if not isinstance(datagram, int):
        return PUSH_BYTES
    return min(PUSH_BYTES, PUSH_DATAGRAMS * datagram)


def probe_payload(size: int) -> bytes:
    """A payload stamped with the current monotonic time, for latency probes."""
    stamp = PROBE_MAGIC + time.monotonic_ns().to_bytes(8, "little")
    return stamp + bytes(max(0, size - len(stamp)))


@dataclass
class ChannelMetrics:
    """One channel's replication metrics (see ReplicationMetrics for the fields)."""

    channel: str
    role: str
    term: int
    tail_seq: int
    commit_seq: int
    sync_bytes_total: int
    sync_requests_total: int
    leader_changes_total: int
    elections_total: int
    under_capacity_total: int
    heartbeats_sent_total: int
    heartbeats_received_total: int
    replica_lag_seconds: float | None
    replica_lag_events: int
    truncated_events_total: int
    log_gaps_total: int
    gap_events_total: int
    quiescent: bool = False
    decode_errors_total: int = 0
    send_errors_total: int = 0
    behind_retention_total: int = 0
    output_errors_total: int = 0
    storage_errors_total: int = 0
    membership_refused_total: int = 0
    elections_withheld_total: int = 0
    votes_withheld_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsSnapshot:
    """``replication_metrics_snapshot()``: channels sorted by name."""

    channels: list[ChannelMetrics]

    def channel(self, name: str) -> ChannelMetrics | None:
        return next((c for c in self.channels if c.channel == name), None)

    def totals(self) -> dict[str, int]:
        keys = [k for k in ChannelMetrics.__dataclass_fields__ if k.endswith("_total")]
        return {k: sum(getattr(c, k) for c in self.channels) for k in keys}


class CoordinatorHandle:
    """What ``Redex.replication_coordinator_for`` returns: a view plus manual control."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self._rt = runtime

    @property
    def role(self) -> ReplicaRole:
        return self._rt.coord.role

    @property
    def tail_seq(self) -> int:
        return self._rt.coord.tail_seq

    @property
    def commit_seq(self) -> int:
        return self._rt.coord.commit_seq

    @property
    def term(self) -> int:
        return self._rt.coord.term

    @property
    def leader_id(self) -> int | None:
        return self._rt.coord.leader_id

    async def transition_to(self, role: ReplicaRole, signal: TransitionSignal) -> None:
        """Apply a role transition by hand; raises InvalidTransition if illegal."""
        rt = self._rt
        now = rt.now()
        rt.coord.refresh(now, rt.hub.beat_at)
        rt.run(rt.coord.transition_to(role, signal, now))


class FileStorage:
    """:class:`~netmesh.replication.executor.LogStorage` over a RedexFile and its hard
    state (``<path>/hardstate``, or the hub's memory for an in-memory file)."""

    def __init__(self, hub: ReplicationHub, name: str, file: RedexFile) -> None:
        self.hub, self.name, self.file = hub, name, file

    @property
    def next_seq(self) -> int:
        return self.file.next_seq

    @property
    def durable_seq(self) -> int:
        """Events below it are fdatasynced (group commit; executor rule 3)."""
        return self.file.durable_seq

    @property
    def failed(self) -> StorageFailed | None:
        return self.file.failed

    def watch_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``durable_seq`` advances or the file fails."""
        self.file.add_durable_listener(callback)

    @property
    def epochs(self) -> tuple[Epoch, ...]:
        """The file's epochs, rebuilt from its batch records (each carries its term)."""
        return self.file.epochs

    def append(self, first_seq: int, payloads: Sequence[bytes], term: int) -> None:
        # raises OutOfOrder (executor resyncs), StorageFailed / PayloadTooLarge
        # (executor fails the channel)
        if isinstance(payloads, PackedPayloads):  # a replicated batch: stored whole
            self.file.apply_packed(payloads, expect_seq=first_seq, term=term)
        else:
            self.file.apply_batch(list(payloads), expect_seq=first_seq, term=term)

    def stamp_local_appends(self, term: int) -> None:
        """Local (leader) appends are written with ``term`` from now on."""
        self.file.append_term = term

    def reset(self, first_seq: int, prev_term: int) -> None:
        """Restart the file at ``first_seq``: needs ``RedexFile.reset_to(first_seq,
        prev_term)`` from netmesh.log (not there yet: NotImplementedError, counted by
        the executor; the replica then waits, backing off, instead of spinning)."""
        reset_to: Callable[[int, int], None] | None = getattr(self.file, "reset_to", None)
        if reset_to is None:
            raise NotImplementedError("RedexFile.reset_to")
        reset_to(first_seq, prev_term)

    def set_retention_floor(self, seq: int | None) -> None:
        self.file.set_retention_floor(seq)

    def truncate(self, from_seq: int) -> int:
        return self.file.truncate_from(from_seq)

    def read(self, from_seq: int, end_seq: int) -> tuple[list[bytes], int]:
        return self.file.read_payloads(from_seq, end_seq)

    def read_records(
        self, from_seq: int, max_bytes: int, end_seq: int
    ) -> tuple[int, bytes, int] | None:
        """Whole batch records from ``from_seq`` as stored (raw catch-up, issue 15 §5):
        (events, bytes, payload bytes), or None to read payloads instead."""
        return self.file.read_records(from_seq, max_bytes, end_seq)

    def append_records(
        self, first_seq: int, count: int, records: bytes, runs: tuple[tuple[int, int, int], ...]
    ) -> None:
        """Check and append the leader's records as they are (OutOfOrder refuses)."""
        self.file.append_records(first_seq, count, records, runs)

    def read_bytes(self, from_seq: int, end_seq: int, max_bytes: int) -> tuple[PackedPayloads, int]:
        """:meth:`read` of at most ``max_bytes`` of payloads (at least one event), packed
        (one buffer, no object per event in memory): a push or sync chunk reads what it
        sends, in the form it sends it."""
        return self.file.read_packed(from_seq, end_seq, max_bytes)

    def save_hard_state(self, state: HardState) -> None:
        """``log.file.write_durably``: tmp, fdatasync, rename, fsync the directory."""
        path = self.file.config.path
        if path is None:
            self.hub.memory_hard_states[self.name] = state
            return
        write_durably(path, HARD_STATE_FILE, hardstate.encode(state))

    def check_hard_state(self, saved: HardState | None) -> None:
        """Refuse a log that holds events (or restarted at a later seq) without a hard
        state: the node's term and vote are lost, and a node that forgot its term
        could lead a term it already led or vote twice (Raft §5.1: currentTerm and
        votedFor live on stable storage). The coordinator saves the hard state before
        the first log change, so no crash leaves that state; only a lost file does.

        Raises:
            LogCorrupt: naming the missing hard state file.
        """
        path = self.file.config.path
        if saved is not None or path is None or self.file.next_seq == 0:
            return
        full = os.path.join(path, HARD_STATE_FILE)
        raise LogCorrupt(
            full,
            0,
            f"missing: the log holds events up to seq {self.file.next_seq - 1} (last term"
            f" {self.file.last_term}) but its replication hard state (term, vote) is gone;"
            " restore the file, or remove the channel's directory so the node rejoins as an"
            " empty replica",
        )

    def load_hard_state(self) -> HardState | None:
        """The saved hard state; None if none was saved. LogCorrupt if unreadable."""
        path = self.file.config.path
        if path is None:
            return self.hub.memory_hard_states.get(self.name)
        full = os.path.join(path, HARD_STATE_FILE)
        try:
            with open(full, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        try:
            return hardstate.decode(data)
        except DecodeError as exc:
            raise LogCorrupt(full, 0, str(exc)) from None


class _Hooks(ExecutorHooks):
    """The runtime's side of the executor: logging, the append guard, quorum waiters."""

    def __init__(self, rt: ChannelRuntime) -> None:
        self.rt = rt
        self.gap_reported = False

    def on_apply(self, out: Apply) -> None:
        if self.rt.probe is not None:
            self.rt.measure(out.payloads)

    def on_truncated(self, from_seq: int, dropped: int) -> None:
        coord = self.rt.coord
        if coord.durable is not None and coord.durable > from_seq:
            coord.durable = from_seq  # what was durable there is gone (group commit)
        log.warning(
            "%s: discarded %d divergent events from seq %d", self.rt.name, dropped, from_seq
        )

    def on_behind_retention(self, to: int, from_seq: int, head: int) -> None:
        log.info(
            "%s: %#x asks from seq %d, below the retained head %d: told to restart there",
            self.rt.name,
            to,
            from_seq,
            head,
        )

    def on_gap(self, out: ResetLog, skipped: int, done: bool) -> None:
        if done:
            log.warning(
                "%s: behind the leader's retained head: log restarts at seq %d (gap of %d"
                " events never held here)",
                self.rt.name,
                out.first_seq,
                skipped,
            )
        elif not self.gap_reported:
            self.gap_reported = True
            log.error(
                "%s: behind the leader's retained head %d and this log cannot restart"
                " there; the replica stays behind (retried every heartbeat)",
                self.rt.name,
                out.first_seq,
            )

    def on_commit(self, commit_seq: int) -> None:
        self.rt.release_waiters()

    def on_role(self, change: RoleChanged) -> None:
        rt = self.rt
        log.info("%s: %s -> %s (term %d)", rt.name, change.old.name, change.new.name, change.term)
        if change.new is ReplicaRole.LEADER:
            rt.storage.stamp_local_appends(change.term)
        rt.update_refusal()
        if change.old is ReplicaRole.LEADER:
            rt.release_waiters(all_of_them=True)  # they learn their fate from is_committed

    def on_failed(self, exc: BaseException, out: Output | None) -> None:
        log.error(
            "%s: storage failed (%s), channel stopped until reopened: %r",
            self.rt.name,
            "local append" if out is None else type(out).__name__,
            exc,
        )
        self.rt.update_refusal()

    def on_resync(self, exc: BaseException, out: Output) -> None:
        log.info("%s: %s met a moved log end (%s); resynced", self.rt.name, type(out).__name__, exc)


#: the chunks of a catch-up stream leave at once, not at the end of the loop turn: the
#: replica applies one while the leader reads and seals the next (issue 15 §5: a turn
#: that sends a whole window at its end made the two nodes take turns instead of
#: working at the same time). A replica's credits go at the end of its turn, together
#: (a datagram each woke the leader once per chunk)
_FLUSHED = (messages.SyncRecords,)
#: any message at least this large leaves at once too (a push of a ring batch: the
#: first follower applies it while the leader reads and seals the next follower's
#: copy, and a quorum commit needs only the first Ack; issue 17 §3, quorum flush of
#: 500 x 64 B: p50 1.20 -> 1.00 ms). Smaller ones wait for the end of the turn,
#: packed with the other channels' messages to that peer.
FLUSH_BYTES = 8192


class ChannelRuntime:
    """The replication shell of one channel on one node."""

    def __init__(
        self,
        hub: ReplicationHub,
        name: str,
        file: RedexFile,
        config: ReplicationConfig,
        members: Sequence[int] | None = None,
    ) -> None:
        self.hub = hub
        self.node = hub.node
        self.name = name
        self.kind = KIND_PREFIX + name
        self.file = file
        self.loop = asyncio.get_running_loop()
        addr = getattr(self.node, "local_addr", None)
        if addr is not None:  # issue 17 §2: "auto" NIC peak from the bound interface
            config = resolve_config(config, addr[0])
        # explicit members: the set ``netmesh.replication.placement`` resolved (the
        # Redex rebuilds the runtime when it re-resolves); else from the config
        members = list(members) if members is not None else self._members(config)
        #: the member list's id (``placement.membership_id``): the first 8 bytes of
        #: every message on the channel stream; a message from a node with another
        #: member list is refused unread (issue 13 §3: no votes across member lists)
        self.membership_id = membership_id(members)
        self._mid = self.membership_id.to_bytes(8, "little")
        self.membership_refused = 0
        self.storage = FileStorage(hub, name, file)
        saved = self.storage.load_hard_state()
        self.storage.check_hard_state(saved)
        self.coord = ReplicationCoordinator(
            self.node.node_id,
            config,
            members,
            now=self.now(),
            tail_seq=file.next_seq,
            hard_state=saved,
            epochs=self.storage.epochs,
            rng=random.Random(),
            max_inflight=PUSH_WINDOW,
            min_push_gap=MIN_PUSH_GAP,
            push_bytes=push_bytes(self.node),
            term_floor=0 if saved is not None else incarnation_term_floor(),
            quiesce=hub.quiesce,
        )
        self.executor = OutputExecutor(self.coord, self.storage, self._send, self.now, _Hooks(self))
        # a round may be pending (a rebuilt runtime); None: every write is durable at once
        # (a follower of such a file never hears local_durable, and an amnesiac one
        # waits for durable >= tail before it counts as recovered)
        self.coord.durable = file.durable_seq if file.syncs_later else None
        # the leader counts itself towards the commit only up to its durable tail
        # (group commit syncs after writing): report every fsync round
        self.file.add_durable_listener(self._durable_advanced)
        self.tick_interval = min(config.heartbeat_ms / 1000.0 / 5, 0.05)
        #: next time the coordinator's tick may act (``next_tick_at``); the hub's one
        #: node-wide tick only ticks channels that are due
        self.due = self.now()
        #: the time of this channel's live entry in the hub's timer heap (inf: none)
        self.heap_at = float("inf")
        #: quiescence as the hub registered it: None (awake) or (role, key, leader)
        self.quiet: tuple[ReplicaRole, int, int | None] | None = None
        #: quiescent follower: its leader's beat listed it since it quiesced
        self.listed = False
        self.decode_errors = 0
        self.send_errors = 0
        self.waiter_errors = 0
        self.tick_errors = 0
        self._push_timer_at: float | None = None
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._waiter_no = 0
        self._closed = False
        #: when a list, replica applies record append-to-apply latencies (ms) of
        #: payloads stamped by ``probe_payload`` (CLOCK_MONOTONIC is system-wide)
        self.probe: list[float] | None = None
        self.update_refusal()
        file.on_append = self._on_local_append
        self.node.subscribe_batch(self.kind, self._on_messages)

    def now(self) -> float:
        return self.loop.time()

    def _members(self, config: ReplicationConfig) -> list[int]:
        if config.placement.kind == "pinned":
            return list(config.placement.nodes)
        me = self.node.node_id
        others = sorted(p for p in self.node.peers() if p != me)
        members = sorted([me, *others[: max(0, config.effective_factor() - 1)]])
        if len(members) < config.effective_factor():
            log.warning(
                "%s: only %d of %d holders reachable at open; the channel runs under-replicated",
                self.name,
                len(members),
                config.effective_factor(),
            )
        return members

    # -- inputs ----------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One timer tick (called by the hub's node-wide tick when ``due``)."""
        if self._closed or self.executor.stopped:
            self.due = float("inf")
            return
        try:
            self.coord.refresh(now, self.hub.beat_at)
            self.run(self.coord.tick(now))
        except Exception:  # a bug, not storage (the executor stops on those)
            self.tick_errors += 1
            self.due = now + self.tick_interval
            if self.tick_errors == 1:  # logged once with its traceback, then counted
                log.exception("%s: replication tick failed", self.name)
            else:
                log.debug("%s: replication tick failed again", self.name, exc_info=True)

    def on_heartbeat(self, from_id: int, msg: messages.Heartbeat, now: float) -> None:
        """A heartbeat from a bundle (the hub decoded it)."""
        if not self._closed:
            self.coord.refresh(now, self.hub.beat_at)
            self.run(self.coord.step(from_id, msg, now))

    def _on_messages(self, from_id: int, msgs: list[bytes]) -> None:
        now = self.now()
        mid = self._mid
        for raw in msgs:
            if raw[:8] != mid:
                self.membership_refused += 1
                log.debug(
                    "%s: message from %#x with another member list refused", self.name, from_id
                )
                continue
            try:
                msg = messages.decode(raw, 8)  # a SyncResponse's events stay in raw
            except DecodeError as exc:
                self.decode_errors += 1
                log.debug("%s: undecodable message from %#x: %s", self.name, from_id, exc)
                continue
            self.coord.refresh(now, self.hub.beat_at)
            self.run(self.coord.step(from_id, msg, now))

    def update_refusal(self) -> None:
        """Set the file's append guard from the role: None on the leader (or once
        closed), StorageFailed once FAILED, else NotLeader naming the believed leader."""
        if self._closed:
            self.file.refusal = None
        elif self.executor.failed is not None:
            failed = self.executor.failed
            self.file.refusal = (
                failed if isinstance(failed, StorageFailed) else StorageFailed(self.name, failed)
            )
        elif self.coord.role is ReplicaRole.LEADER:
            self.file.refusal = None
        else:
            self.file.refusal = NotLeader(self.name, self.coord.leader_id)

    def measure(self, payloads: Sequence[bytes]) -> None:
        """Latency probe: payloads that start with PROBE_MAGIC carry their append time."""
        now = time.monotonic_ns()
        probe = self.probe
        assert probe is not None
        for p in payloads:
            if p[:4] == PROBE_MAGIC:
                probe.append((now - int.from_bytes(p[4:12], "little")) / 1e6)

    def _on_local_append(self) -> None:
        self.loop.call_soon(self._push)

    def _deferred_push(self) -> None:
        self._push_timer_at = None
        self._push()

    def _push(self) -> None:
        self.file.append_pending = False
        if not self._closed:
            now = self.now()
            self.coord.refresh(now, self.hub.beat_at)
            durable = self.file.durable_seq if self.file.syncs_later else None
            self.run(self.coord.local_appended(self.file.next_seq, now, durable))

    def _durable_advanced(self) -> None:
        """A group-commit round made more of the log durable (or the file failed)."""
        if self._closed or self.file.failed is not None:
            return
        durable = self.file.durable_seq
        now = self.now()
        self.coord.refresh(now, self.hub.beat_at)
        self.run(self.coord.local_durable(durable, now))

    # -- outputs ---------------------------------------------------------------------
    def run(self, outputs: Sequence[Output]) -> None:
        """Execute coordinator outputs through the channel's :class:`OutputExecutor`
        (the one implementation, shared with the simulation), after arming the push
        timer the coordinator asked for."""
        if self.file.failed is not None and not self.executor.stopped:
            self.executor.fail(self.file.failed)  # a local append failed in the file
        due = self.coord.push_due
        if due is not None and (self._push_timer_at is None or due < self._push_timer_at):
            self._push_timer_at = due
            self.loop.call_at(due, self._deferred_push)
        if outputs:  # most idle ticks and heartbeats change nothing
            self.executor.run(outputs)
        self.due = float("inf") if self.executor.stopped else self.coord.next_tick_at()
        if (self.quiet is not None) != self.coord.quiescent:
            self.hub.quiet_changed(self)
        if self.due < self.heap_at:
            self.hub.schedule(self)

    def wake(self, heard: dict[int, float]) -> None:
        """Wake the quiescent coordinator (the hub decided: see the module doc)."""
        if not self._closed and not self.executor.stopped:
            self.run(self.coord.wake(self.now(), heard))

    def _send(self, to: int, msg: messages.Message) -> None:
        if type(msg) is messages.Heartbeat:  # coalesced per peer (one bundle a turn)
            self.hub.queue_heartbeat(to, self.name, self.membership_id, msg)
            return
        try:
            data = messages.encode(msg, self._mid)
            self.node.send(to, self.kind, data)
            if type(msg) in _FLUSHED or len(data) >= FLUSH_BYTES:
                flush = getattr(self.node, "flush", None)
                if flush is not None:
                    flush()
        except (LocalProtocolError, NetmeshError) as exc:
            self.send_errors += 1
            log.debug("%s: send to %#x failed: %s", self.name, to, exc)

    # -- quorum acknowledgements -----------------------------------------------------
    def is_committed(self, seq_exclusive: int) -> bool | None:
        """True once ``commit_seq >= seq_exclusive``; None if it cannot happen here any
        more (this node stopped leading, or the events were truncated)."""
        if self.coord.commit_seq >= seq_exclusive and self.file.next_seq >= seq_exclusive:
            return True
        if self.coord.role is not ReplicaRole.LEADER or self._closed:
            return None
        return False

    def on_commit(self, seq_exclusive: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``is_committed(seq_exclusive)`` is no longer False."""
        self._waiter_no += 1
        heapq.heappush(self._waiters, (seq_exclusive, self._waiter_no, callback))

    def release_waiters(self, all_of_them: bool = False) -> None:
        commit = self.coord.commit_seq
        while self._waiters and (all_of_them or self._waiters[0][0] <= commit):
            _, _, cb = heapq.heappop(self._waiters)
            try:
                cb()
            except Exception:  # one bad waiter must not strand the others
                self.waiter_errors += 1
                log.exception("%s: commit waiter failed", self.name)

    # -- lifetime --------------------------------------------------------------------
    def metrics(self) -> ChannelMetrics:
        m = asdict(self.coord.metrics)
        m["role"] = self.coord.role.name
        return ChannelMetrics(
            channel=self.name,
            decode_errors_total=self.decode_errors,
            send_errors_total=self.send_errors,
            behind_retention_total=self.executor.behind_retention,
            output_errors_total=self.executor.resyncs + self.waiter_errors + self.tick_errors,
            storage_errors_total=self.executor.storage_errors,
            membership_refused_total=self.membership_refused,
            **m,
        )

    def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(NetmeshError):
            if self.coord.role is not ReplicaRole.IDLE:
                self.coord.refresh(self.now(), self.hub.beat_at)
                self.run(
                    self.coord.transition_to(
                        ReplicaRole.IDLE, TransitionSignal.CHANNEL_CLOSE, self.now()
                    )
                )
        self._closed = True
        self.due = float("inf")
        self.hub.forget(self)
        self.node.unsubscribe(self.kind, self._on_messages)
        self.file.refusal = None
        self.file.on_append = None
        # the file outlives this runtime (placement rebuilds it, disable_replication
        # keeps the file): drop the durability callback, which holds the executor and,
        # through it, the hub and the node
        self.file.remove_durable_listener(self.executor.durable_advanced)
        self.file.remove_durable_listener(self._durable_advanced)
        self.release_waiters(all_of_them=True)


class ReplicationHub:
    """All replication runtimes of one Redex, over one MeshNode.

    Scale (issue 10 §6): thousands of idle channels cost per-channel timers and
    per-channel datagrams; so one node-wide tick (every ``tick_interval``, the
    smallest channel's heartbeat / 5, at most 50 ms) ticks only the channels whose
    coordinator is due (``next_tick_at``), and every heartbeat queued in one loop turn
    to one peer travels in bundles of :data:`BUNDLE_ROWS` channels on stream
    :data:`HEARTBEAT_STREAM` (one msgpack call per bundle; MeshNode packs the
    bundles into as few datagrams as fit). CockroachDB coalesces the Raft heartbeats
    of all ranges between two stores the same way.

    Quiescence (module doc): due channels are popped from a heap (a quiescent one is
    never due), one liveness beat per peer per heartbeat interval replaces the
    heartbeats of quiescent channels, and the hub wakes quiescent channels on node
    liveness. ``quiesce = False`` before the first ``attach`` keeps every channel
    heartbeating (tests of the bundles).
    """

    def __init__(self, node: Any) -> None:
        self.node = node
        #: channels may quiesce (set before attaching them)
        self.quiesce = True
        #: timer heap of (due, n, runtime); an entry is live iff due == rt.heap_at
        self._heap: list[tuple[float, int, ChannelRuntime]] = []
        self._heap_n = 0
        #: peer node id -> when its last beat with a known quiescent set arrived
        #: (every coordinator input gets it through ``refresh``)
        self.beat_at: dict[int, float] = {}
        #: peer -> (incarnation, generation, its quiescent-leader keys, their bytes)
        self._listing: dict[int, tuple[int, int, frozenset[int], bytes]] = {}
        #: quiescent followers by leader and key; quiescent leaders by name
        self._following: dict[int, dict[int, ChannelRuntime]] = {}
        self._quiet_leaders: dict[str, ChannelRuntime] = {}
        #: quiescent followers not yet listed by their leader, oldest first
        self._unlisted: dict[str, tuple[float, ChannelRuntime]] = {}
        #: peers silent for a window (edges wake quiescent leaders)
        self._silent: set[int] = set()
        #: what this node leads quiescently, as beats carry it
        self._led: set[int] = set()
        self._led_bytes = b""
        self._generation = 0
        self._led_changed_at = float("-inf")
        self._incarnation = random.getrandbits(63)
        self._beats_sent = 0
        self._next_beat_at = float("-inf")
        self._beat_peers: set[int] = set()
        self._silence = float("inf")
        self._beat_interval = float("inf")
        #: when the first channel attached: a peer never heard counts as heard then
        self._t0: float | None = None
        #: when ``_liveness`` last ran (a late run means our own loop stalled)
        self._last_liveness = float("inf")
        self.runtimes: dict[str, ChannelRuntime] = {}
        self.memory_hard_states: dict[str, HardState] = {}
        self.closed_metrics: dict[str, ChannelMetrics] = {}
        self._hb_out: dict[int, list[tuple[str, int, messages.Heartbeat]]] = {}
        self._hb_flush_scheduled = False
        self._ticker: asyncio.Task[None] | None = None
        self.tick_interval = 0.05
        #: node-wide counters (bundles are not any one channel's)
        self.counters = {
            "bundles_out": 0,
            "bundles_in": 0,
            "bundle_errors": 0,
            "ticks": 0,
            "beats_out": 0,
            "beats_in": 0,
            "beat_errors": 0,
            "wakes": 0,
        }
        node.subscribe_batch(HEARTBEAT_STREAM, self._on_bundles)
        node.subscribe_batch(LIVENESS_STREAM, self._on_beats)

    def attach(
        self,
        name: str,
        file: RedexFile,
        config: ReplicationConfig,
        members: Sequence[int] | None = None,
    ) -> None:
        """Start ``name``'s runtime; ``members``: its replica set (None: from the
        config's placement, see ``ChannelRuntime._members``)."""
        rt = ChannelRuntime(self, name, file, config, members)
        self.runtimes[name] = rt
        self.tick_interval = min(self.tick_interval, rt.tick_interval)
        self._beat_peers.update(p for p in rt.coord.members if p != self.node.node_id)
        self._silence = min(self._silence, rt.coord.silence)
        self._beat_interval = min(self._beat_interval, rt.coord.hb)
        if self._t0 is None:  # the first beats carry the (empty) set: a restarted
            self._t0 = self._led_changed_at = rt.now()  # node is known at once
        self.schedule(rt)
        t = self._ticker
        if t is None or t.done() or t.get_loop() is not rt.loop:
            self._ticker = rt.loop.create_task(self._tick_loop(), name="repl-tick")

    async def _tick_loop(self) -> None:
        """The node-wide tick: every due channel, in one loop turn (so their
        heartbeats leave in one bundle per peer). Ends when no channel is open."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # let the opener drive manual transitions first
        while self.runtimes:
            now = loop.time()
            self.counters["ticks"] += 1
            heap = self._heap
            while heap and heap[0][0] <= now:
                at, _, rt = heapq.heappop(heap)
                if at != rt.heap_at:
                    continue  # superseded by an earlier entry
                rt.heap_at = float("inf")
                if rt.due <= now:
                    rt.tick(now)  # reschedules itself (run)
                else:
                    self.schedule(rt)
            self._liveness(now)
            await asyncio.sleep(self.tick_interval)

    def schedule(self, rt: ChannelRuntime) -> None:
        """Put ``rt`` on the timer heap at ``rt.due`` if that is earlier than its entry."""
        if rt.due < rt.heap_at:
            rt.heap_at = rt.due
            self._heap_n += 1
            heapq.heappush(self._heap, (rt.due, self._heap_n, rt))

    # -- quiescence ------------------------------------------------------------------
    def quiet_changed(self, rt: ChannelRuntime) -> None:
        """``rt``'s coordinator went quiescent or woke (called by ``rt.run``): register
        or unregister it (per-channel work only on such a change)."""
        now = rt.now()
        if rt.quiet is not None:
            self._unregister(rt, now)
        c = rt.coord
        if not c.quiescent or rt._closed:
            return
        key = messages.quiet_key(rt.name, c.term)
        if c.role is ReplicaRole.LEADER:
            rt.quiet = (ReplicaRole.LEADER, key, None)
            self._quiet_leaders[rt.name] = rt
            self._led.add(key)
            self._led_changed(now)
            return
        lead = c.leader_id
        if lead is None:  # cannot happen (a quiescent follower follows); stay safe
            rt.run(c.wake(now, self.beat_at))
            return
        rt.quiet = (ReplicaRole.REPLICA, key, lead)
        self._following.setdefault(lead, {})[key] = rt
        listing = self._listing.get(lead)
        rt.listed = listing is not None and key in listing[2]
        if not rt.listed:
            self._unlisted[rt.name] = (now, rt)

    def _unregister(self, rt: ChannelRuntime, now: float) -> None:
        assert rt.quiet is not None
        role, key, lead = rt.quiet
        rt.quiet = None
        if role is ReplicaRole.LEADER:
            self._quiet_leaders.pop(rt.name, None)
            self._led.discard(key)
            self._led_changed(now)
        else:
            following = self._following.get(lead) if lead is not None else None
            if following is not None and following.get(key) is rt:
                del following[key]
            if self._unlisted.get(rt.name, (0.0, None))[1] is rt:
                del self._unlisted[rt.name]

    def forget(self, rt: ChannelRuntime) -> None:
        """``rt`` closed: drop it from the quiescence registers."""
        if rt.quiet is not None:
            self._unregister(rt, rt.now())

    def _led_changed(self, now: float) -> None:
        self._generation += 1
        self._led_changed_at = now
        self._led_bytes = b""  # packed again at the next beat that carries it

    def _wake(self, rt: ChannelRuntime, heard: dict[int, float]) -> None:
        self.counters["wakes"] += 1
        rt.wake(heard)
        if rt.quiet is not None and not rt.coord.quiescent:  # closed: forget it anyway
            self._unregister(rt, rt.now())

    def _liveness(self, now: float) -> None:
        """Per tick: send the beats when due; wake quiescent followers whose leader's
        node fell silent for the window (or that no beat listed within one) and, once
        per silence, quiescent leaders of which the silent node is a member. Per-peer
        work, plus per-channel work only for channels that wake."""
        if now >= self._next_beat_at and self._beat_peers:
            self._next_beat_at = now + self._beat_interval
            self._send_beats(now)
        late, self._last_liveness = now - self._last_liveness > self._silence / 2, now
        if late:  # this loop itself stalled: read what arrived meanwhile before judging
            return
        silence, t0 = self._silence, self._t0 if self._t0 is not None else now
        for p in self._beat_peers:
            if now - self.beat_at.get(p, t0) < silence:
                self._silent.discard(p)
                continue
            following = self._following.get(p)
            if following:
                for rt in list(following.values()):
                    self._wake(rt, self.beat_at)
            if p not in self._silent:
                self._silent.add(p)
                for rt in list(self._quiet_leaders.values()):
                    if p in rt.coord.members:
                        self._wake(rt, self.beat_at)
        unlisted = self._unlisted
        while unlisted:
            name = next(iter(unlisted))
            since, rt = unlisted[name]
            if now - since < silence:
                break
            del unlisted[name]
            lead = rt.quiet[2] if rt.quiet is not None else None
            self._wake(rt, {p: t for p, t in self.beat_at.items() if p != lead})

    def _send_beats(self, now: float) -> None:
        self._beats_sent += 1
        full = (
            now - self._led_changed_at < self._silence + self._beat_interval
            or self._beats_sent % BEAT_FULL_EVERY == 0
        )
        keys = None
        if full:
            if not self._led_bytes and self._led:
                self._led_bytes = messages.pack_keys(self._led)
            keys = self._led_bytes
        data = messages.encode_liveness(
            messages.LivenessBeat(self._incarnation, self._generation, keys)
        )
        for p in self._beat_peers:
            try:
                self.node.send(p, LIVENESS_STREAM, data)
                self.counters["beats_out"] += 1
            except (LocalProtocolError, NetmeshError) as exc:
                self.counters["beat_errors"] += 1
                log.debug("liveness beat to %#x not sent: %s", p, exc)

    def _on_beats(self, from_id: int, raws: list[bytes]) -> None:
        now = asyncio.get_running_loop().time()
        for raw in raws:
            try:
                beat = messages.decode_liveness(raw)
            except DecodeError as exc:
                self.counters["beat_errors"] += 1
                log.debug("undecodable liveness beat from %#x: %s", from_id, exc)
                continue
            self.counters["beats_in"] += 1
            self._on_beat(from_id, beat, now)

    def _on_beat(self, frm: int, beat: messages.LivenessBeat, now: float) -> None:
        """Note a beat. Its set is known if it carries it, or if its generation is the
        one we hold; an unknown set (its carriers were lost) does not count as a beat,
        so followers of ``frm`` wake after a window unless a full beat arrives."""
        old = self._listing.get(frm)
        restarted = old is not None and old[0] != beat.incarnation
        same_life = old is not None and not restarted
        if beat.keys is None:
            if not (same_life and old is not None and old[1] == beat.generation):
                return
            self.beat_at[frm] = now
            return
        if same_life and old is not None and beat.generation < old[1]:
            return  # an older beat overtaken by a newer one
        prev_at = self.beat_at.get(frm)
        self.beat_at[frm] = now
        if old is not None and same_life and old[3] == beat.keys:
            if old[1] != beat.generation:
                self._listing[frm] = (beat.incarnation, beat.generation, old[2], old[3])
            return
        keys = messages.unpack_keys(beat.keys)
        self._listing[frm] = (beat.incarnation, beat.generation, keys, beat.keys)
        following = self._following.get(frm)
        if not following:
            return
        if old is not None:  # confirm the newly listed
            for key in keys - old[2]:
                rt = following.get(key)
                if rt is not None and not rt.listed:
                    rt.listed = True
                    self._unlisted.pop(rt.name, None)
        else:
            for key in keys & following.keys():
                rt = following[key]
                rt.listed = True
                self._unlisted.pop(rt.name, None)
        # wake the followers it stopped listing (all of them, if it restarted)
        gone = following.keys() - keys
        for key in gone:
            rt = following[key]
            if rt.listed or restarted:
                heard = dict(self.beat_at)
                if prev_at is not None and not restarted:
                    heard[frm] = prev_at
                else:
                    heard.pop(frm, None)
                self._wake(rt, heard)

    def queue_heartbeat(self, to: int, channel: str, mid: int, hb: messages.Heartbeat) -> None:
        """Queue ``hb`` of ``channel`` (run with member list id ``mid``) for peer ``to``;
        flushed at the end of this loop turn."""
        beats = self._hb_out.get(to)
        if beats is None:
            beats = self._hb_out[to] = []
        beats.append((channel, mid, hb))
        if not self._hb_flush_scheduled:
            self._hb_flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_heartbeats)

    def _flush_heartbeats(self) -> None:
        self._hb_flush_scheduled = False
        out, self._hb_out = self._hb_out, {}
        for to, beats in out.items():
            bundles = [
                messages.encode_heartbeats(beats[i : i + BUNDLE_ROWS])
                for i in range(0, len(beats), BUNDLE_ROWS)
            ]
            try:
                self.node.send_many(to, HEARTBEAT_STREAM, bundles)
                self.counters["bundles_out"] += len(bundles)
            except (LocalProtocolError, NetmeshError) as exc:
                self.counters["bundle_errors"] += 1
                log.debug("heartbeats to %#x not sent: %s", to, exc)

    def _on_bundles(self, from_id: int, bundles: list[bytes]) -> None:
        now = asyncio.get_running_loop().time()
        runtimes = self.runtimes
        for raw in bundles:
            try:
                beats = messages.decode_heartbeats(raw)
            except DecodeError as exc:
                self.counters["bundle_errors"] += 1
                log.debug("undecodable heartbeat bundle from %#x: %s", from_id, exc)
                continue
            self.counters["bundles_in"] += 1
            for name, mid, hb in beats:
                rt = runtimes.get(name)
                if rt is None:
                    continue
                if mid != rt.membership_id:  # another member list: as _on_messages
                    rt.membership_refused += 1
                    continue
                rt.on_heartbeat(from_id, hb, now)

    def detach(self, name: str) -> None:
        rt = self.runtimes.pop(name, None)
        if rt is not None:
            rt.close()
            self.closed_metrics[name] = rt.metrics()  # metrics survive close

    def runtime(self, name: str) -> ChannelRuntime | None:
        return self.runtimes.get(name)

    def coordinator_for(self, name: str) -> CoordinatorHandle | None:
        rt = self.runtimes.get(name)
        return None if rt is None else CoordinatorHandle(rt)

    def runtime_count(self) -> int:
        return len(self.runtimes)

    def metrics_snapshot(self) -> MetricsSnapshot:
        chans = {**self.closed_metrics, **{n: rt.metrics() for n, rt in self.runtimes.items()}}
        return MetricsSnapshot([chans[n] for n in sorted(chans)])

    def close(self) -> None:
        """Stop every runtime (each goes Idle, ``detach``), stop the node-wide tick and
        unsubscribe from the node: nothing of this hub is called by the node any more
        (``Redex.disable_replication``). Idempotent."""
        for name in list(self.runtimes):
            self.detach(name)
        self.node.unsubscribe(HEARTBEAT_STREAM, self._on_bundles)
        self.node.unsubscribe(LIVENESS_STREAM, self._on_beats)
        t, self._ticker = self._ticker, None
        if t is not None and not t.done():
            t.cancel()

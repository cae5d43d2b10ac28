"""SimCluster: N replication coordinators over a seeded, simulated network.

Theory of operation
-------------------
Everything is driven by one ``random.Random(seed)`` and a simulated clock, so a seed
replays exactly. Time advances in steps of ``heartbeat/4``: each :meth:`step`
delivers the datagrams due by then and ticks every live node. Every message is
encoded and decoded with ``netmesh.replication.messages`` on the way (the codec is tested
too and messages never alias). The network can drop, duplicate, delay (hence
reorder) datagrams, cut links both ways (``partition``/``isolate``) or one way
(``cut(a, b)``), ``heal`` them all, and crash nodes; a crashed node keeps its log and
its last saved HardState, and ``restart`` builds a fresh coordinator from them
(exactly what a real node restores: the log's epochs rebuilt from its records, the
hard state's term and vote).

Each node's shell is the shipped :class:`~netmesh.replication.executor.OutputExecutor`
(the one the node runtime uses) over a :class:`FaultyStorage` (a list-of-payloads log
with a term per batch, retention and log restarts, a saved HardState, and injected
OSErrors before or after a write reaches it) and a send callable into the simulated
network, so every seed exercises the executor that ships. Quiescence runs as in the
node (``ReplicationHub``): every node sends a liveness beat to every peer each
heartbeat (a simulated datagram, dropped, delayed and cut like the others) listing
the channel's :func:`~netmesh.replication.messages.quiet_key` while it leads it
quiescently; every coordinator gets ``refresh`` with the beat times before any input,
and a quiescent one ``wake`` when its leader's node fell silent for the window, stopped listing
the channel (or restarted), never listed it within a window of quiescing, or (a
leader) a member's node fell silent. Its crash hook places power
cuts at output boundaries (``crash_mid_output``, ``crash_points``; every boundary:
:data:`EVERY_BOUNDARY`). A storage error stops the node (role FAILED) until
``restart`` reopens it; ``down()`` lists crashed and failed nodes.

Invariants, checked after every step (the seed is in every failure message):

* at most one leader per term (ever);
* the local log's length equals the coordinator's ``tail_seq`` (running nodes);
* quorum mode: a node's commit never goes backwards, and every node's log agrees
  with the longest committed prefix seen so far (so nothing committed, i.e.
  acknowledged to a producer, is ever lost or rewritten). Seqs a log does not hold
  (retention, a restart at the leader's head) are ``None`` and match anything.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from netmesh.config import AckMode, PlacementStrategy, ReplicationConfig
from netmesh.errors import OutOfOrder
from netmesh.log.hardstate import Epoch, HardState
from netmesh.replication.coordinator import (
    TERM_SLOTS,
    Apply,
    Output,
    ReplicationCoordinator,
    SaveHardState,
    Send,
    Truncate,
)
from netmesh.replication.executor import CrashPoint, ExecutorHooks, OutputExecutor
from netmesh.replication.messages import (
    LivenessBeat,
    Message,
    decode,
    decode_liveness,
    encode,
    encode_liveness,
    pack_keys,
    quiet_key,
    unpack_keys,
)
from netmesh.replication.roles import ReplicaRole

#: the output boundaries where ``crash_mid_output`` may cut power, by default: just
#: before a log change (the rest of the output list is lost)
LOG_CHANGE_CRASHES: frozenset[tuple[CrashPoint, type]] = frozenset(
    {("before", Apply), ("before", Truncate)}
)
#: every output boundary: before and after each Apply, Truncate, SaveHardState, Send
EVERY_BOUNDARY: frozenset[tuple[CrashPoint, type]] = frozenset(
    (when, kind) for when in ("before", "after") for kind in (Apply, Truncate, SaveHardState, Send)
)


def agree(a: Sequence[bytes | None], b: Sequence[bytes | None]) -> bool:
    """Two logs (or prefixes) hold the same event at every seq both hold (None: a seq
    not held, dropped by retention or skipped by a log restart)."""
    return all(x == y for x, y in zip(a, b, strict=False) if x is not None and y is not None)


def _fill(known: list[bytes | None], log: Sequence[bytes | None], end: int) -> list[bytes | None]:
    """``known`` extended to ``end`` with ``log``, holes filled from ``log``."""
    out = [k if k is not None else v for k, v in zip(known, log, strict=False)]
    out += known[len(out) :]
    return out + list(log[len(out) : end])


class InvariantViolation(AssertionError):
    """A replication safety invariant failed in the simulation."""


@dataclass
class MemoryStorage:
    """:class:`~netmesh.replication.executor.LogStorage` in memory: what survives a
    simulated crash (the log and the last saved hard state)."""

    #: payload per seq; None below ``head`` (dropped by retention or never held)
    log: list[bytes | None] = field(default_factory=list)
    #: None until the first save (a fresh or wiped node starts amnesiac)
    hard_state: HardState | None = None
    #: (term, first seq) runs of the log, as a log with a term per batch record
    #: rebuilds them on open; ``terms=False`` models a log without terms
    runs: list[Epoch] = field(default_factory=list)
    terms: bool = True
    #: keep at most this many events (None: all), never any at or above ``floor``
    retention_max_events: int | None = None
    floor: int | None = None
    head: int = 0

    @property
    def next_seq(self) -> int:
        return len(self.log)

    def set_retention_floor(self, seq: int | None) -> None:
        self.floor = seq
        self._retain()

    def _retain(self) -> None:
        if self.retention_max_events is None:
            return
        new_head = max(self.head, len(self.log) - self.retention_max_events)
        if self.floor is not None:
            new_head = min(new_head, max(self.head, self.floor))
        for seq in range(self.head, new_head):
            self.log[seq] = None
        self.head = new_head

    def reset(self, first_seq: int, prev_term: int) -> None:
        self.log[:] = [None] * first_seq
        self.runs[:] = [(prev_term, 0)] if prev_term else []
        self.head = first_seq

    @property
    def epochs(self) -> tuple[Epoch, ...] | None:
        return tuple(self.runs) if self.terms else None

    def append(self, first_seq: int, payloads: Sequence[bytes], term: int) -> None:
        if first_seq != len(self.log):
            raise OutOfOrder(f"Apply at {first_seq}, log has {len(self.log)}")
        if self.runs and term < self.runs[-1][0]:
            raise OutOfOrder(f"batch of term {term} after term {self.runs[-1][0]}")
        if payloads and (not self.runs or self.runs[-1][0] != term):
            self.runs.append((term, first_seq))
        self.log.extend(payloads)
        self._retain()

    def truncate(self, from_seq: int) -> int:
        from_seq = max(from_seq, self.head)
        dropped = max(0, len(self.log) - from_seq)
        del self.log[from_seq:]
        while self.runs and self.runs[-1][1] >= from_seq:
            self.runs.pop()
        return dropped

    def read(self, from_seq: int, end_seq: int) -> tuple[list[bytes], int]:
        first = max(from_seq, self.head)
        held = [p for p in self.log[first:end_seq] if p is not None]
        return held, first

    def save_hard_state(self, state: HardState) -> None:
        self.hard_state = state


class FaultyStorage(MemoryStorage):
    """MemoryStorage whose writes fail with OSError at the simulation's
    ``storage_errors`` rate, in one of two ways picked at random: before anything
    changed (a failed write or rename) or after the change reached storage (a failed
    fsync or directory sync: the data is there on reopen, the caller was told no)."""

    def __init__(self, sim: SimCluster, terms: bool = True) -> None:
        super().__init__(terms=terms)
        self.sim = sim
        self.failures = 0

    def _fault(self, op: str) -> str | None:
        sim = self.sim
        if not sim.storage_errors or sim.rng.random() >= sim.storage_errors:
            return None
        self.failures += 1
        return sim.rng.choice(["before", "after"])

    def _raise(self, op: str) -> None:
        raise OSError(5, f"injected {op} failure")

    def append(self, first_seq: int, payloads: Sequence[bytes], term: int) -> None:
        fault = self._fault("write")
        if fault == "before":
            self._raise("write")
        super().append(first_seq, payloads, term)
        if fault == "after":
            self._raise("fsync")

    def truncate(self, from_seq: int) -> int:
        fault = self._fault("truncate")
        if fault == "before":
            self._raise("truncate")
        dropped = super().truncate(from_seq)
        if fault == "after":
            self._raise("fsync after truncate")
        return dropped

    def save_hard_state(self, state: HardState) -> None:
        fault = self._fault("save")
        if fault == "before":
            self._raise("write of hardstate.tmp")
        super().save_hard_state(state)
        if fault == "after":
            self._raise("directory fsync")


class _SimHooks(ExecutorHooks):
    def __init__(self, sim: SimCluster, node_id: int) -> None:
        self.sim, self.node_id = sim, node_id

    def crash_point(self, when: CrashPoint, out: Output) -> bool:
        sim = self.sim
        if (
            sim.crash_mid_output
            and (when, type(out)) in sim.crash_points
            and sim.rng.random() < sim.crash_mid_output
        ):
            sim.crashes_at.append((when, type(out)))
            sim.crash(self.node_id)  # a power cut at this output boundary
            return True
        return False

    def on_commit(self, commit_seq: int) -> None:
        self.sim.on_commit(self.sim.nodes[self.node_id], commit_seq)

    def on_resync(self, exc: BaseException, out: Output) -> None:
        raise self.sim.fail(f"node {self.node_id}: {exc}")


def _timer_state(c: ReplicationCoordinator) -> tuple[object, ...]:
    """What a tick may change besides metrics (see ``next_tick_at``)."""
    return (
        c.role, c.term, c.voted_for, c.leader_id, c.tail, c.commit, c.epochs,
        c._deferred, c._leader_heard_at, c._extra_wait, c._last_campaign_at,
        c._outstanding, c._next_hb_at, c._campaign.term, c._campaign.kind, c.quiescent,
    )  # fmt: skip


#: the channel name the simulated nodes list in their liveness beats
CHANNEL = "sim"


@dataclass
class SimNode:
    node_id: int
    coord: ReplicationCoordinator
    executor: OutputExecutor
    storage: MemoryStorage
    alive: bool = True
    last_commit: int = 0
    #: liveness (the node's ReplicationHub in the runtime): this process start's id,
    #: when each peer's last beat arrived, its incarnation, the peers silent for a
    #: window (edges wake leaders), when the follower last saw its leader list the
    #: channel since it quiesced (None: not yet), when it quiesced
    incarnation: int = 0
    beat_at: dict[int, float] = field(default_factory=dict)
    peer_incarnation: dict[int, int] = field(default_factory=dict)
    silent: set[int] = field(default_factory=set)
    listed_at: float | None = None
    quiet_since: float | None = None
    next_beat_at: float = 0.0

    @property
    def running(self) -> bool:
        """Alive and not stopped by a storage failure (role FAILED)."""
        return self.alive and not self.executor.stopped

    @property
    def log(self) -> list[bytes | None]:
        return self.storage.log

    @property
    def hard_state(self) -> HardState:
        return self.storage.hard_state or HardState()


class SimCluster:
    """N coordinators + simulated network; see the module docstring.

    Args:
        n: number of members.
        seed: seeds the network, the node ids and the coordinators' request ids.
        ack: ``"leader"`` or ``"quorum"``.
        heartbeat_ms: heartbeat period (time only exists in the simulation).
        pinned: index (into :attr:`ids`) of the pinned leader, or None.
        drop / duplicate: per-datagram probabilities.
        max_delay: max one-way delay in seconds (default: a quarter heartbeat).
        budget_bytes_per_s: leader sync budget (fraction 1.0 of this NIC peak).
        sync_chunk_bytes: max bytes per SyncResponse.
        crash_mid_output: probability that a node crashes at each of the
            ``crash_points`` it meets (the rest of that output list is lost).
        crash_points: ``(when, output type)`` boundaries where crashes may happen
            (``when`` is ``"before"`` or ``"after"``); default: before log changes;
            :data:`EVERY_BOUNDARY` for all of them.
        storage_errors: probability that a storage write (append, truncate, hard-state
            save) raises OSError (:class:`FaultyStorage`); the node's executor then
            stops the channel (role FAILED) until :meth:`restart` reopens it.
        log_terms: the log records the term of every batch and rebuilds the epochs on
            open (True, as ``RedexFile`` does); False models the old log whose epochs
            lived only in the hard state (issue 10 §1's crash window).
        retention_max_events: each node's log keeps at most this many events, never
            one at or above the coordinator's ``retention_floor`` (quorum: commit).
    """

    def __init__(
        self,
        n: int = 3,
        seed: int = 0,
        *,
        ack: AckMode = "quorum",
        heartbeat_ms: int = 100,
        pinned: int | None = None,
        drop: float = 0.0,
        duplicate: float = 0.0,
        max_delay: float | None = None,
        budget_bytes_per_s: int = 125_000_000,
        sync_chunk_bytes: int = 4096,
        auto_bootstrap: bool = True,
        crash_mid_output: float = 0.0,
        crash_points: frozenset[tuple[CrashPoint, type]] = LOG_CHANGE_CRASHES,
        storage_errors: float = 0.0,
        log_terms: bool = True,
        retention_max_events: int | None = None,
        quiesce: bool = True,
    ) -> None:
        self.seed = seed
        self.quiesce = quiesce
        self._incarnations = 0
        self.storage_errors = storage_errors
        self.log_terms = log_terms
        #: (when, output type) of every crash the crash hook placed, in order
        self.crashes_at: list[tuple[CrashPoint, type]] = []
        self.crash_mid_output = crash_mid_output
        self.crash_points = crash_points
        self.rng = random.Random(seed)
        self.ids = sorted(self.rng.sample(range(1, 1 << 20), n))
        self.config = ReplicationConfig(
            factor=n,
            heartbeat_ms=heartbeat_ms,
            placement=PlacementStrategy.pinned(self.ids),
            leader_pinned=None if pinned is None else self.ids[pinned],
            ack=ack,
            replication_budget_fraction=1.0,
            nic_peak_bytes_per_s=budget_bytes_per_s,
            sync_chunk_bytes=sync_chunk_bytes,
        )
        self.config.validate()
        self.quorum = ack == "quorum"
        self.dt = heartbeat_ms / 4000.0
        self.drop, self.duplicate = drop, duplicate
        self.max_delay = self.dt if max_delay is None else max_delay
        self.auto_bootstrap = auto_bootstrap
        self.now = 0.0
        self.steps = 0
        self.nodes: dict[int, SimNode] = {}
        for i in self.ids:
            storage = FaultyStorage(self, log_terms)
            storage.retention_max_events = retention_max_events
            self.nodes[i] = self._node(i, storage)
        self._queue: list[tuple[float, int, int, int, bytes, bool]] = []
        self._counter = 0
        self._cut: set[tuple[int, int]] = set()  # (from, to): datagrams from -> to drop
        self.leaders_by_term: dict[int, int] = {}
        self.committed: list[bytes | None] = []
        self.delivered = 0

    # ------------------------------------------------------------------ building

    def _node(self, node_id: int, storage: MemoryStorage) -> SimNode:
        """A fresh coordinator and executor over what ``storage`` kept (a (re)start)."""
        coord = ReplicationCoordinator(
            node_id,
            self.config,
            self.ids,
            now=self.now,
            tail_seq=storage.next_seq,
            hard_state=storage.hard_state,
            epochs=storage.epochs,
            rng=random.Random(self.rng.getrandbits(32)),
            auto_bootstrap=self.auto_bootstrap,
            quiesce=self.quiesce,
            # as ChannelRuntime: every incarnation campaigns above the clock's floor
            # (runtime.incarnation_term_floor: tenths of a second x TERM_SLOTS)
            term_floor=(int(self.now * 10) + 1) * TERM_SLOTS,
        )

        def send(to: int, msg: Message) -> None:
            self._transmit(node_id, to, encode(msg))

        executor = OutputExecutor(coord, storage, send, lambda: self.now, _SimHooks(self, node_id))
        self._incarnations += 1
        return SimNode(node_id, coord, executor, storage, incarnation=self._incarnations)

    def fail(self, what: str) -> InvariantViolation:
        return InvariantViolation(f"seed={self.seed} step={self.steps} t={self.now:.3f}: {what}")

    # ------------------------------------------------------------------ the shell

    def _execute(self, node: SimNode, outputs: list[Output]) -> None:
        node.executor.run(outputs)

    def on_commit(self, node: SimNode, commit: int) -> None:
        """CommitAdvanced on ``node``: its new committed prefix must extend the known one."""
        if not self.quorum:
            return
        if commit > len(self.committed):
            if not agree(node.log[: len(self.committed)], self.committed):
                raise self.fail(f"node {node.node_id} commits {commit} over a rewritten prefix")
            self.committed = _fill(self.committed, node.log, commit)

    # ------------------------------------------------------------------ network

    def _linked(self, frm: int, to: int) -> bool:
        return (frm, to) not in self._cut

    def _transmit(self, frm: int, to: int, data: bytes, beat: bool = False) -> None:
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < self.drop or not self._linked(frm, to):
                continue
            self._counter += 1
            at = self.now + self.rng.uniform(0.0, self.max_delay)
            heapq.heappush(self._queue, (at, self._counter, frm, to, data, beat))

    def _deliver_due(self) -> None:
        while self._queue and self._queue[0][0] <= self.now:
            _, _, frm, to, data, beat = heapq.heappop(self._queue)
            node = self.nodes[to]
            if not node.alive or not self._linked(frm, to):
                continue
            if beat:
                self._on_beat(node, frm, decode_liveness(data))
                continue
            self.delivered += 1
            node.coord.refresh(self.now, node.beat_at)
            self._execute(node, node.coord.step(frm, decode(data), self.now))

    # ------------------------------------------------------------------ liveness

    def _send_beats(self, node: SimNode) -> None:
        """Every heartbeat: a beat to each peer, listing the channel if this node leads
        it quiescently (the generation is not modelled: every beat carries its set)."""
        if self.now < node.next_beat_at:
            return
        node.next_beat_at = self.now + self.config.heartbeat_ms / 1000.0
        c = node.coord
        led = c.quiescent and c.role is ReplicaRole.LEADER and node.running
        keys = pack_keys({quiet_key(CHANNEL, c.term)} if led else set())
        data = encode_liveness(LivenessBeat(node.incarnation, 0, keys))
        for p in self.ids:
            if p != node.node_id:
                self._transmit(node.node_id, p, data, beat=True)

    def _on_beat(self, node: SimNode, frm: int, beat: LivenessBeat) -> None:
        """A peer's beat: note the time; a follower quiescent with ``frm`` wakes when
        the beat no longer lists the channel in its term (or ``frm`` restarted), its
        election timer counting from the last listing."""
        restarted = node.peer_incarnation.get(frm, beat.incarnation) != beat.incarnation
        node.peer_incarnation[frm] = beat.incarnation
        node.beat_at[frm] = self.now
        c = node.coord
        if not (node.running and c.quiescent and c.role is ReplicaRole.REPLICA):
            return
        if c.leader_id != frm:
            return
        if quiet_key(CHANNEL, c.term) in unpack_keys(beat.keys or b"") and not restarted:
            node.listed_at = self.now
        elif node.listed_at is not None or restarted:
            heard = {p: t for p, t in node.beat_at.items() if p != frm}
            if node.listed_at is not None:
                heard[frm] = node.listed_at
            self._execute(node, c.wake(self.now, heard))

    def _liveness(self, node: SimNode) -> None:
        """The hub's periodic check: wake a quiescent follower whose leader's node fell
        silent for a window (or that was never listed within one), a quiescent leader
        when a member's node falls silent (check-quorum counts live peers)."""
        c = node.coord
        if c.quiescent and node.quiet_since is None:
            node.quiet_since, node.listed_at = self.now, None
        elif not c.quiescent:
            node.quiet_since = None
        newly = set()
        for p in self.ids:
            if p == node.node_id:
                continue
            if self.now - node.beat_at.get(p, float("-inf")) >= c.silence:
                if p not in node.silent:
                    newly.add(p)
                    node.silent.add(p)
            else:
                node.silent.discard(p)
        if not (node.running and c.quiescent):
            return
        if c.role is ReplicaRole.LEADER:
            wake = bool(newly)
            heard = node.beat_at
        else:
            lead = c.leader_id
            wake = lead in node.silent
            heard = node.beat_at
            unlisted = not wake and node.listed_at is None and node.quiet_since is not None
            if unlisted and self.now - (node.quiet_since or 0.0) >= c.silence:
                wake = True
                heard = {p: t for p, t in node.beat_at.items() if p != lead}
        if wake:
            self._execute(node, c.wake(self.now, heard))
            node.quiet_since = None

    # ------------------------------------------------------------------ verbs

    def step(self, k: int = 1) -> None:
        """Advance ``k`` time steps (deliver due datagrams, tick every live node)."""
        for _ in range(k):
            self.steps += 1
            self.now += self.dt
            self._deliver_due()
            for node in self.nodes.values():
                if node.alive:
                    self._send_beats(node)
                    self._liveness(node)
                    self._tick(node)
            self.check()

    def _tick(self, node: SimNode) -> None:
        """Tick ``node``; a tick before the coordinator's ``next_tick_at`` must do
        nothing (nodes tick only their due channels), else an invariant fails."""
        coord = node.coord
        coord.refresh(self.now, node.beat_at)
        due = coord.next_tick_at()
        before = _timer_state(coord) if self.now < due else None
        outputs = coord.tick(self.now)
        if before is not None and (outputs or _timer_state(coord) != before):
            raise self.fail(
                f"node {node.node_id} ticked at {self.now:.3f} before its next_tick_at"
                f" {due:.3f} and acted: {outputs}"
            )
        self._execute(node, outputs)

    def run_heartbeats(self, beats: float) -> None:
        self.step(max(1, round(beats * 4)))

    def propose(self, payloads: list[bytes], node_id: int | None = None) -> int | None:
        """Append on ``node_id`` (default: the current leader); returns the first seq."""
        target = node_id if node_id is not None else self.leader()
        if target is None or not self.nodes[target].running:
            return None
        node = self.nodes[target]
        first = len(node.log)
        MemoryStorage.append(node.storage, first, payloads, node.coord.term)  # no faults
        node.coord.refresh(self.now, node.beat_at)
        self._execute(node, node.coord.local_appended(len(node.log), self.now))
        self.check()
        return first

    def partition(self, *groups: list[int]) -> None:
        """Cut every link, both ways, between nodes of different groups (node ids)."""
        for gi, a_group in enumerate(groups):
            for b_group in groups[gi + 1 :]:
                for a in a_group:
                    for b in b_group:
                        self.cut(a, b, both=True)

    def cut(self, a: int, b: int, both: bool = False) -> None:
        """Drop datagrams from ``a`` to ``b`` (and ``b`` to ``a`` with ``both``), also
        those already in flight; ``heal`` restores every link."""
        self._cut.add((a, b))
        if both:
            self._cut.add((b, a))

    def isolate(self, node_id: int) -> None:
        self.partition([node_id], [i for i in self.ids if i != node_id])

    def heal(self) -> None:
        self._cut.clear()

    def crash(self, node_id: int) -> None:
        self.nodes[node_id].alive = False

    def restart(self, node_id: int) -> None:
        """Start a crashed node again: a new coordinator and executor over its storage."""
        self.nodes[node_id] = self._node(node_id, self.nodes[node_id].storage)

    def wipe(self, node_id: int) -> None:
        """Crash ``node_id`` and lose everything it stored (log and hard state): a
        disk replaced, a data directory deleted. :meth:`restart` starts it empty."""
        self.crash(node_id)
        old = self.nodes[node_id].storage
        storage = FaultyStorage(self, self.log_terms)
        storage.retention_max_events = old.retention_max_events
        self.nodes[node_id].storage = storage

    def down(self) -> list[int]:
        """Nodes that are crashed or stopped by a storage failure (restart reopens them)."""
        return [i for i, n in self.nodes.items() if not n.running]

    def quiet(self) -> None:
        """Stop injecting faults (drops, duplicates, long delays, crashes, storage
        errors); heal and restart (reopen) every node that is down."""
        self.drop = self.duplicate = 0.0
        self.crash_mid_output = self.storage_errors = 0.0
        self.max_delay = self.dt
        self.heal()
        for node_id in self.down():
            self.restart(node_id)

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.alive and n.coord.role is ReplicaRole.LEADER]

    def leader(self) -> int | None:
        """The live leader with the highest term, if any."""
        leaders = self.leaders()
        return max(leaders, key=lambda i: self.nodes[i].coord.term) if leaders else None

    def wait_for_leader(self, max_heartbeats: float = 30) -> int:
        for _ in range(round(max_heartbeats * 4)):
            if len(self.leaders()) == 1:
                return self.leaders()[0]
            self.step()
        raise self.fail(f"no single leader after {max_heartbeats} heartbeats: {self.leaders()}")

    def wait_converged(self, max_heartbeats: float = 60) -> int:
        """Step until one leader, all live logs equal and all commits at the tail."""
        for _ in range(round(max_heartbeats * 4)):
            if self.converged():
                return self.leaders()[0]
            self.step()
        raise self.fail(f"not converged: {self.describe()}")

    def converged(self) -> bool:
        leaders = self.leaders()
        if len(leaders) != 1:
            return False
        lead = self.nodes[leaders[0]]
        return all(
            len(n.log) == len(lead.log)
            and agree(n.log, lead.log)
            and n.coord.term == lead.coord.term
            and (not self.quorum or n.coord.commit_seq == len(lead.log))
            for n in self.nodes.values()
            if n.alive
        )

    def describe(self) -> str:
        return "; ".join(
            f"{i}:{n.coord.role.name}{'' if n.running else '(down)'} t{n.coord.term} "
            f"tail{len(n.log)} c{n.coord.commit_seq} ep{list(n.coord.epochs)}"
            for i, n in self.nodes.items()
        )

    # ------------------------------------------------------------------ invariants

    def check(self) -> None:
        for node_id, node in self.nodes.items():
            coord = node.coord
            if node.running and coord.tail_seq != len(node.log):
                raise self.fail(
                    f"node {node_id} coordinator tail {coord.tail_seq} "
                    f"!= log length {len(node.log)}"
                )
            if coord.role is ReplicaRole.LEADER:
                first = self.leaders_by_term.setdefault(coord.term, node_id)
                if first != node_id:
                    raise self.fail(f"two leaders in term {coord.term}: {first} and {node_id}")
            if self.quorum and node.running:
                self._check_commit(node)

    def _check_commit(self, node: SimNode) -> None:
        commit = node.coord.commit_seq
        if commit < node.last_commit:
            raise self.fail(f"node {node.node_id} commit went back {node.last_commit}->{commit}")
        node.last_commit = commit
        held = min(commit, len(self.committed))
        if not agree(node.log[:held], self.committed[:held]):
            raise self.fail(
                f"node {node.node_id} disagrees with the committed prefix "
                f"below {held}: {self.describe()}"
            )
        if commit > len(self.committed):
            self.committed = _fill(self.committed, node.log, commit)

    def assert_committed_kept(self) -> None:
        """Every committed event is in the live leader's log, in place."""
        lead = self.leader()
        if lead is None:
            raise self.fail("no leader")
        log = self.nodes[lead].log
        if len(log) < len(self.committed) or not agree(log, self.committed):
            raise self.fail(f"leader {lead} lost committed events: {self.describe()}")

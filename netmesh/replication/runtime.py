"""Replication runtime: binds each channel's pure coordinator to a MeshNode and a RedexFile.

One :class:`ChannelRuntime` per replicated channel; it is the shell of etcd's Ready
loop: every input (a timer tick, a received message, a local append) goes to the
coordinator, and the outputs are executed in order: SaveHardState (written before
anything after it is sent), Truncate/Apply (the local log), Send, ServeSync (read the
log, hand the events back to the coordinator), CommitAdvanced (release quorum waiters).

Messages travel on the MeshNode channel ``"redex/<channel name>"``. Local appends are
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from netmesh.config import ReplicationConfig
from netmesh.errors import (
    DecodeError,
    LocalProtocolError,
    LogCorrupt,
    NetmeshError,
    NotLeader,
)
from netmesh.log import hardstate
from netmesh.log.file import RedexFile
from netmesh.log.hardstate import HardState
from netmesh.replication import messages
from netmesh.replication.coordinator import (
    Apply,
    CommitAdvanced,
    ReplicationCoordinator,
    RoleChanged,
    SaveHardState,
    Send,
    ServeSync,
    Truncate,
)
from netmesh.replication.roles import ReplicaRole, TransitionSignal

log = logging.getLogger(__name__)
KIND_PREFIX = "redex/"
HARD_STATE_FILE = "hardstate"
READ_CHUNK = 4096
PROBE_MAGIC = b"NMTS"
# Unacknowledged pushes per follower. One keeps a push in flight per round trip: at
# low rates every append goes out at once, under load appends pile up behind the ack
# and travel together (Nagle-like), so pushes and acks per event fall as load rises.
PUSH_WINDOW = 1
# At most one push per follower per MIN_PUSH_GAP: at 10k events/s (a batch a
# millisecond) every batch still goes at once; a saturating producer's events travel
# in pushes of hundreds, which keeps the leader's replication cost per event low.
MIN_PUSH_GAP = 0.001


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
    decode_errors_total: int = 0
    send_errors_total: int = 0
    behind_retention_total: int = 0
    output_errors_total: int = 0
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
        rt.run(rt.coord.transition_to(role, signal, rt.now()))


class ChannelRuntime:
    """The replication shell of one channel on one node."""

    def __init__(
        self, hub: ReplicationHub, name: str, file: RedexFile, config: ReplicationConfig
    ) -> None:
        self.hub = hub
        self.node = hub.node
        self.name = name
        self.kind = KIND_PREFIX + name
        self.file = file
        self.loop = asyncio.get_running_loop()
        members = self._members(config)
        self.coord = ReplicationCoordinator(
            self.node.node_id,
            config,
            members,
            now=self.now(),
            tail_seq=file.next_seq,
            hard_state=self._load_hard_state(),
            rng=random.Random(),
            max_inflight=PUSH_WINDOW,
            min_push_gap=MIN_PUSH_GAP,
        )
        self.tick_interval = min(config.heartbeat_ms / 1000.0 / 5, 0.05)
        self.decode_errors = 0
        self.send_errors = 0
        self.behind_retention = 0
        self.output_errors = 0
        self._resyncing = False
        self._push_timer_at: float | None = None
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._waiter_no = 0
        self._closed = False
        #: when a list, replica applies record append-to-apply latencies (ms) of
        #: payloads stamped by ``probe_payload`` (CLOCK_MONOTONIC is system-wide)
        self.probe: list[float] | None = None
        self._update_refusal()
        file.on_append = self._on_local_append
        self.node.subscribe_batch(self.kind, self._on_messages)
        self._ticker = self.loop.create_task(self._tick_loop(), name=f"repl-{name}")

    def now(self) -> float:
        return self.loop.time()

    def _members(self, config: ReplicationConfig) -> list[int]:
        if config.placement.kind == "pinned":
            return list(config.placement.nodes)
        me = self.node.node_id
        others = sorted(p for p in self.node.peers() if p != me)
        return sorted([me, *others[: max(0, config.factor - 1)]])

    # -- inputs ----------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        await asyncio.sleep(0)  # let the opener drive manual transitions first
        while not self._closed:
            try:
                self.run(self.coord.tick(self.now()))
            except Exception:
                log.exception("%s: replication tick failed", self.name)
            await asyncio.sleep(self.tick_interval)

    def _on_messages(self, from_id: int, msgs: list[bytes]) -> None:
        now = self.now()
        for raw in msgs:
            try:
                msg = messages.decode(raw)
            except DecodeError as exc:
                self.decode_errors += 1
                log.debug("%s: undecodable message from %#x: %s", self.name, from_id, exc)
                continue
            self.run(self.coord.step(from_id, msg, now))

    def _update_refusal(self) -> None:
        if self.coord.role is ReplicaRole.LEADER or self._closed:
            self.file.refusal = None
        else:
            self.file.refusal = NotLeader(self.name, self.coord.leader_id)

    def _on_local_append(self) -> None:
        self.loop.call_soon(self._push)

    def _deferred_push(self) -> None:
        self._push_timer_at = None
        self._push()

    def _push(self) -> None:
        self.file.append_pending = False
        if not self._closed:
            self.run(self.coord.local_appended(self.file.next_seq, self.now()))

    # -- outputs ---------------------------------------------------------------------
    def run(self, outputs: list[Any]) -> None:
        """Execute coordinator outputs in order (outputs may produce more outputs).

        If one fails (a disk error, a log that refuses the append), the rest of the
        list is dropped: an Ack or a vote must not leave after a log change or hard
        state save that did not happen. The coordinator is told the log's real tail;
        the next tick or message retries.
        """
        due = self.coord.push_due
        if due is not None and (self._push_timer_at is None or due < self._push_timer_at):
            self._push_timer_at = due
            self.loop.call_at(due, self._deferred_push)
        for out in outputs:
            handler = self._output_handlers.get(type(out))
            if handler is None:
                continue
            try:
                handler(self, out)
            except Exception:
                self.output_errors += 1
                log.exception(
                    "%s: %s failed; dropping the rest of this step", self.name, type(out).__name__
                )
                if not self._resyncing:
                    self._resyncing = True
                    try:
                        self.run(self.coord.applied(self.file.next_seq))
                    finally:
                        self._resyncing = False
                return

    def _do_send(self, out: Send) -> None:
        try:
            self.node.send(out.to, self.kind, messages.encode(out.msg))
        except (LocalProtocolError, NetmeshError) as exc:
            self.send_errors += 1
            log.debug("%s: send to %#x failed: %s", self.name, out.to, exc)

    def _do_serve(self, out: ServeSync) -> None:
        payloads, first = self.file.read_payloads(out.from_seq, out.from_seq + READ_CHUNK)
        if first != out.from_seq:
            # Retention dropped what the follower needs: it cannot catch up from here
            # (replicas hold the leader's seqs, without gaps). Known limitation: keep
            # retention larger than any replica's lag.
            self.behind_retention += 1
            log.warning(
                "%s: %#x asks from seq %d, below the retained head %d",
                self.name,
                out.to,
                out.from_seq,
                first,
            )
            payloads = []
        size, n = 0, 0
        for p in payloads:
            size += len(p)
            if n and size > out.max_bytes:
                break
            n += 1
        self.run(self.coord.serve(out, payloads[:n], self.now()))

    def _do_apply(self, out: Apply) -> None:
        if self.probe is not None:
            self._measure(out.payloads)
        # raises OutOfOrder / OSError / PayloadTooLarge: run() drops the rest (the Ack)
        self.file.apply_batch(list(out.payloads), expect_seq=out.first_seq)

    def _measure(self, payloads: tuple[bytes, ...]) -> None:
        """Latency probe: payloads that start with PROBE_MAGIC carry their append time."""
        now = time.monotonic_ns()
        probe = self.probe
        assert probe is not None
        for p in payloads:
            if p[:4] == PROBE_MAGIC:
                probe.append((now - int.from_bytes(p[4:12], "little")) / 1e6)

    def _do_truncate(self, out: Truncate) -> None:
        dropped = self.file.truncate_from(out.from_seq)
        if dropped:
            log.warning(
                "%s: discarded %d divergent events from seq %d", self.name, dropped, out.from_seq
            )
        self.run(self.coord.applied(self.file.next_seq))

    def _do_commit(self, out: CommitAdvanced) -> None:
        self._release_waiters()

    def _do_role(self, out: RoleChanged) -> None:
        log.info("%s: %s -> %s (term %d)", self.name, out.old.name, out.new.name, out.term)
        self._update_refusal()
        if out.old is ReplicaRole.LEADER:
            self._release_waiters(all_of_them=True)  # they learn their fate from is_committed

    def _do_save(self, out: SaveHardState) -> None:
        """Persist the hard state before anything after it is sent (tmp, fsync, rename,
        fsync the directory)."""
        path = self.file.config.path
        if path is None:
            self.hub.memory_hard_states[self.name] = out.state
            return
        tmp = os.path.join(path, HARD_STATE_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(hardstate.encode(out.state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(path, HARD_STATE_FILE))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    _output_handlers: dict[type, Callable[[ChannelRuntime, Any], None]] = {
        Send: _do_send,
        ServeSync: _do_serve,
        Apply: _do_apply,
        Truncate: _do_truncate,
        CommitAdvanced: _do_commit,
        RoleChanged: _do_role,
        SaveHardState: _do_save,
    }

    def _load_hard_state(self) -> HardState | None:
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

    def _release_waiters(self, all_of_them: bool = False) -> None:
        commit = self.coord.commit_seq
        while self._waiters and (all_of_them or self._waiters[0][0] <= commit):
            _, _, cb = heapq.heappop(self._waiters)
            try:
                cb()
            except Exception:  # one bad waiter must not strand the others
                self.output_errors += 1
                log.exception("%s: commit waiter failed", self.name)

    # -- lifetime --------------------------------------------------------------------
    def metrics(self) -> ChannelMetrics:
        m = asdict(self.coord.metrics)
        m["role"] = self.coord.role.name
        return ChannelMetrics(
            channel=self.name,
            decode_errors_total=self.decode_errors,
            send_errors_total=self.send_errors,
            behind_retention_total=self.behind_retention,
            output_errors_total=self.output_errors,
            **m,
        )

    def close(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(NetmeshError):
            if self.coord.role is not ReplicaRole.IDLE:
                self.run(
                    self.coord.transition_to(
                        ReplicaRole.IDLE, TransitionSignal.CHANNEL_CLOSE, self.now()
                    )
                )
        self._closed = True
        self._ticker.cancel()
        self.node.unsubscribe(self.kind, self._on_messages)
        self.file.refusal = None
        self.file.on_append = None
        self._release_waiters(all_of_them=True)


class ReplicationHub:
    """All replication runtimes of one Redex, over one MeshNode."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.runtimes: dict[str, ChannelRuntime] = {}
        self.memory_hard_states: dict[str, HardState] = {}
        self.closed_metrics: dict[str, ChannelMetrics] = {}

    def attach(self, name: str, file: RedexFile, config: ReplicationConfig) -> None:
        self.runtimes[name] = ChannelRuntime(self, name, file, config)

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

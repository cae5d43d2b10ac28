"""Redex: the registry of a node's event files (channel name -> RedexFile).

Opening a name that is already open returns the same live handle; its replication
settings must match (otherwise ConfigError), other settings of the second call are
ignored. Replication is wired in by :meth:`Redex.enable_replication` (see
``netmesh.replication.runtime``) and out by :meth:`Redex.disable_replication`.

Placement (upstream net-mesh, later versions). A channel opened with pinned
placement runs its replication runtime at once, with the pinned set. A channel opened
with ``standard()`` or ``colocation_strict(key)`` placement is announced to the other
nodes (capability announcements, :mod:`netmesh.replication.placement`, at most one
broadcast per ``MeshNodeConfig.min_announce_interval``); every node resolves the same
replica set from the announcements it holds, and re-resolves whenever one changes (a
node opened or closed the channel, announced or withdrew a chain) or a peer's session
goes down. A node in the set runs the channel's runtime with that set (rebuilt when
the set changes; its term, vote and log survive, so a newly selected replica catches
up from the leader); a node outside it is Idle: its coordinator handle reports IDLE,
appends raise NotLeader, and it stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from netmesh.channel import ChannelName
from netmesh.config import RedexFileConfig, ReplicationConfig
from netmesh.errors import (
    ConfigError,
    DecodeError,
    InvalidTransition,
    LocalProtocolError,
    NetmeshError,
    NotLeader,
)
from netmesh.log.file import RedexFile, write_durably
from netmesh.replication import placement as pl
from netmesh.replication.roles import ReplicaRole, TransitionSignal

if TYPE_CHECKING:
    from netmesh.replication.runtime import ReplicationHub

log = logging.getLogger(__name__)
#: the MeshNode stream of peer up/down events (``netmesh.link.node.PEER_EVENTS``)
PEER_EVENTS = "peer"
DEFAULT_MIN_ANNOUNCE_INTERVAL = 10.0
#: a node that holds candidacies re-broadcasts its announcement every this many
#: announce windows (at least MIN_REANNOUNCE_S): announcements are datagrams, and a
#: lost one must not leave a peer's view stale for ever (upstream re-announces too)
REANNOUNCE_WINDOWS = 15
MIN_REANNOUNCE_S = 1.0
#: a learner re-asks after max(this, 2 heartbeats) without an answer
MIN_LEARN_RETRY_S = 0.2
#: quorum placement: the version of the set a node ran a channel with last, in the
#: channel's directory (``placement.encode_version``)
PLACEMENT_FILE = "placement"
#: quorum placement on node daemons: this node's Paxos vote on the channel's first set
#: (``placement.encode_form``), beside ``PLACEMENT_FILE``
FORM_FILE = "placement-form"
#: quorum placement: a pending step is re-checked at most this often (seconds)
MIN_STEP_RECHECK_S = 0.05


#: no vote on a first set yet
NO_VOTE = pl.FormVote()
_R = TypeVar("_R")


def _read_record(directory: str, name: str, decode: Callable[[bytes, str], _R]) -> _R | None:
    """``decode(bytes, path)`` of the record ``directory/name`` (None: there is none);
    raises what ``decode`` raises (LogCorrupt, naming the path)."""
    full = os.path.join(directory, name)
    try:
        with open(full, "rb") as fh:
            return decode(fh.read(), full)
    except FileNotFoundError:
        return None


class Redex:
    """A node's set of open event files, optionally replicated over a MeshNode."""

    def __init__(self) -> None:
        self._files: dict[ChannelName, RedexFile] = {}
        self._hub: ReplicationHub | None = None
        self._placement: _Placement | None = None
        #: quorum placement of in-memory files: channel -> the set this process ran it
        #: with last and its version (persisted files keep it in ``PLACEMENT_FILE``)
        self._set_versions: dict[str, tuple[tuple[int, ...], int]] = {}
        #: the same for the first-set votes of in-memory files (``FORM_FILE``)
        self._form_votes: dict[str, pl.FormVote] = {}
        self._chains: set[str] = set()
        self._metadata: dict[str, str] = {}

    def open_file(
        self, name: str | ChannelName, config: RedexFileConfig | None = None
    ) -> RedexFile:
        """Open (or return the already open) file ``name``.

        Raises ChannelNameError, ConfigError (bad config, replication without
        ``enable_replication``, reopen with different replication), LogCorrupt.
        """
        cname = ChannelName(name)
        cfg = config or RedexFileConfig()
        live = self._files.get(cname)
        if live is not None:
            if live.config.replication != cfg.replication:
                raise ConfigError(
                    f"{cname!r} is open with replication={live.config.replication!r};"
                    " reopen must use the same replication config"
                )
            return live
        cfg.validate()
        if cfg.replication is not None and self._hub is None:
            raise ConfigError("RedexFileConfig.replication requires Redex.enable_replication(node)")
        f = RedexFile(cname, cfg)
        repl = cfg.replication
        if repl is not None and self._hub is not None:
            try:
                if repl.placement.kind == "pinned" or self._placement is None:
                    self._hub.attach(cname, f, repl)
                else:
                    self._placement.open(cname, f, repl)
            except BaseException:
                if self._placement is not None:
                    self._placement.close_channel(cname)
                self._hub.detach(cname)
                f.close()  # never leave an unreplicated, writable file registered
                raise
        self._files[cname] = f
        return f

    def get_file(self, name: str) -> RedexFile | None:
        return self._files.get(ChannelName(name))

    def open_files(self) -> list[RedexFile]:
        return list(self._files.values())

    def close_file(self, name: str) -> None:
        """Stop the channel's replication runtime and close the file; unknown: no-op."""
        cname = ChannelName(name)
        f = self._files.pop(cname, None)
        if f is None:
            return
        if self._placement is not None:
            self._placement.close_channel(cname)
        if self._hub is not None:
            self._hub.detach(cname)
        f.close()

    def close(self) -> None:
        for name in list(self._files):
            self.close_file(name)

    # -- replication -----------------------------------------------------------------
    def enable_replication(self, node: Any) -> None:
        """Route replication traffic of this Redex over ``node`` (a MeshNode). Idempotent.

        Files that are already open (e.g. left open by :meth:`disable_replication`)
        stay local logs: enabling does not start runtimes for them.
        """
        if self._hub is not None:
            return
        from netmesh.replication.runtime import ReplicationHub

        self._hub = ReplicationHub(node)
        self._placement = _Placement(self, node)

    def disable_replication(self) -> None:
        """Stop replicating (upstream ``Redex::disable_replication``). Idempotent.

        Every replication runtime stops (``replication_runtime_count()`` is 0) and its
        coordinator goes Idle at once (handles already taken report IDLE); the
        candidacies this node announced are withdrawn (one last announcement, not
        rate-limited); nothing of this Redex stays subscribed to the node or holds a
        reference to it. Open files stay open as local logs: appends succeed on
        every node. A later :meth:`enable_replication` does not restart replication
        for them (reopen the file for that).
        """
        hub, self._hub = self._hub, None
        placement, self._placement = self._placement, None
        if placement is not None:
            placement.close()
        if hub is not None:
            hub.close()
        for f in self._files.values():
            f.refusal = None  # a local log now, on leaders and replicas alike

    def replication_coordinator_for(self, name: str) -> Any:
        """The channel's coordinator handle, or None (not replicated / not open).

        A channel whose placement did not select this node gets an
        :class:`IdleCoordinator` (role IDLE)."""
        if self._hub is None:
            return None
        cname = ChannelName(name)
        handle = self._hub.coordinator_for(cname)
        if handle is None and self._placement is not None:
            return self._placement.idle_handle(cname)
        return handle

    # -- placement ---------------------------------------------------------------------
    def announce_chain(self, key: str) -> None:
        """Announce that this node holds chain ``key``: it becomes eligible for
        ``colocation_strict(key)`` channels it opens (upstream ``announce_chain``).
        Travels with the next capability announcement."""
        if key not in self._chains:
            self._chains.add(str(key))
            if self._placement is not None:
                self._placement.changed()

    def withdraw_chain(self, key: str) -> None:
        """Stop announcing chain ``key`` (its colocation_strict channels re-resolve)."""
        if key in self._chains:
            self._chains.discard(key)
            if self._placement is not None:
                self._placement.changed()

    def set_placement_metadata(self, metadata: Mapping[str, str]) -> None:
        """Replace this node's placement metadata (``str -> str``, announced with its
        capabilities; visible to peers in :meth:`placement_view`)."""
        new = {str(k): str(v) for k, v in metadata.items()}
        if new != self._metadata:
            self._metadata = new
            if self._placement is not None:
                self._placement.changed()

    def set_placement_policy(
        self,
        *,
        retain: Iterable[int] | None = None,
        min_announce_interval: float | None = None,
        form_majority: bool | None = None,
    ) -> None:
        """Placement settings of a node daemon (None: unchanged); needs
        :meth:`enable_replication` first (ConfigError otherwise).

        Args:
            retain: node ids whose announcements are kept when their session goes
                down (a daemon's configured peers: a crashed host stays a candidate,
                and a member, until it is removed from the configuration, as with a
                pinned set; a partitioned minority cannot shrink itself into a
                quorum). A node dropped from ``retain`` while down is forgotten now
                and every channel re-resolves.
            min_announce_interval: seconds, replaces ``MeshNodeConfig``'s (the rate
                limit, the settle window and the re-announce period follow it).
            form_majority: a set smaller than a majority of ``factor`` is never
                formed (applies to channels opened afterwards).
        """
        p = self._placement
        if p is None:
            raise ConfigError("set_placement_policy requires Redex.enable_replication(node)")
        if min_announce_interval is not None:
            p.set_interval(float(min_announce_interval))
        if form_majority is not None:
            p.form_majority = bool(form_majority)
        if retain is not None:
            p.retain = {int(n) for n in retain}
            up = set(p.node.peers())
            gone = [n for n in p.view if n not in p.retain and n not in up]
            for n in gone:
                del p.view[n]
            if gone:
                p._resolve_all()

    def placement_members(self, name: str) -> tuple[int, ...] | None:
        """The replica set this node runs ``name`` with (sorted node ids; pinned: the
        pinned set), or None when this node is not a member (Idle) or the channel is
        not open / not replicated."""
        cname = ChannelName(name)
        rt = self._hub.runtime(cname) if self._hub is not None else None
        if rt is not None:
            return tuple(rt.coord.members)
        return None

    def placement_changes(self, name: str) -> list[tuple[int, ...] | None]:
        """The member sets placement ran ``name`` with on this node, oldest first (the
        last 16; None: Idle); [] for a pinned, closed or unknown channel."""
        if self._placement is None:
            return []
        ch = self._placement.channels.get(ChannelName(name))
        return [] if ch is None else list(ch.changes)

    def placement_view(self) -> dict[int, pl.Announcement]:
        """The latest capability announcement of every node this node heard from, and
        its own (node id -> :class:`~netmesh.replication.placement.Announcement`)."""
        return {} if self._placement is None else self._placement.snapshot()

    def placement_stats(self) -> dict[str, int]:
        """Counters: announcements broadcast / sent directly / received / refused
        (undecodable or naming another node), re-resolutions that changed a set."""
        return {} if self._placement is None else dict(self._placement.stats)

    def replication_runtime(self, name: str) -> Any:
        """The channel's ChannelRuntime (replication shell), or None."""
        return None if self._hub is None else self._hub.runtime(ChannelName(name))

    def replication_runtime_count(self) -> int:
        """Replicated channels open here: running runtimes plus channels that
        placement left Idle (upstream runs an inert runtime for those); 0 when
        replication is disabled."""
        if self._hub is None:
            return 0
        idle = 0 if self._placement is None else self._placement.idle_count()
        return self._hub.runtime_count() + idle

    # -- helpers for node processes ---------------------------------------------------
    def append(self, name: str, payloads: list[bytes]) -> int:
        """Append to an open file (NotLeader on a replica); returns the first seq."""
        f = self.get_file(name)
        if f is None:
            raise ConfigError(f"channel {name!r} is not open")
        return f.append_batch(payloads)

    def commit_target(self, name: str, last_seq: int) -> int:
        """The commit_seq an append ending at ``last_seq`` must wait for, or -1 when the
        channel acknowledges on the leader alone."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None or rt.coord.config.ack != "quorum":
            return -1
        return last_seq + 1

    def is_committed(self, name: str, commit_target: int) -> bool | None:
        """See ChannelRuntime.is_committed; None for a channel that is not replicated."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        return None if rt is None else rt.is_committed(commit_target)

    def on_commit(self, name: str, commit_target: int, callback: Any) -> None:
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None:
            callback()
        else:
            rt.on_commit(commit_target, callback)

    def channel_metrics(self, name: str) -> dict[str, Any]:
        """Replication metrics of one channel as a plain dict ({} if not replicated)."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None:
            return {}
        m = rt.metrics()
        d = dict(m.__dict__)
        d.pop("extra", None)
        return d

    def replication_metrics_snapshot(self) -> Any:
        """Per-channel replication metrics, or None when replication is not enabled."""
        return None if self._hub is None else self._hub.metrics_snapshot()


class IdleCoordinator:
    """The coordinator handle of a channel that placement did not select on this
    node: role IDLE, no term, no leader; it stores nothing (appends raise NotLeader)
    and manual transitions are refused."""

    def __init__(self, file: RedexFile) -> None:
        self._file = file

    @property
    def role(self) -> ReplicaRole:
        return ReplicaRole.IDLE

    @property
    def tail_seq(self) -> int:
        return self._file.next_seq

    @property
    def commit_seq(self) -> int:
        return 0

    @property
    def term(self) -> int:
        return 0

    @property
    def leader_id(self) -> int | None:
        return None

    async def transition_to(self, role: ReplicaRole, signal: TransitionSignal) -> None:
        """Raises InvalidTransition: placement decides whether this node holds the
        channel."""
        raise InvalidTransition(
            f"{self._file.name!r}: this node is not in the channel's replica set"
            f" (placement), so it stays IDLE; cannot go {role.name} on {signal.name}"
        )


@dataclass
class _Channel:
    file: RedexFile
    config: ReplicationConfig
    placement: pl.ChannelPlacement
    #: when a settling short set is to be re-checked (inf: nothing settling)
    due: float = math.inf
    #: the member sets this node ran the channel with, oldest first (None: Idle)
    changes: list[tuple[int, ...] | None] = field(default_factory=list)
    #: quorum learner state: caught up (announced ``ready``), copied events here,
    #: the member it learns from and when it last asked
    ready: bool = False
    learned: bool = False
    learn_from: int | None = None
    learn_asked_at: float = -math.inf
    #: quorum: the step this node ordered as the leader of its set (announced while it
    #: runs the step's source or the step, so stragglers follow it and the first to
    #: follow is not pulled back)
    step: pl.Step | None = None
    #: quorum: the version of the set this node runs, or ran last (``PLACEMENT_FILE``)
    version: int = 0
    #: quorum: this node ran the channel before (a placement record exists): it never
    #: forms a first set; ``resume``: the set it ran last, joined at once on open
    ran: bool = False
    resume: tuple[int, ...] | None = None
    #: quorum on node daemons: this node's vote on the first set (``FORM_FILE``)
    form: pl.FormVote = field(default_factory=pl.FormVote)
    #: (node, ballot) -> when this node first saw that node run that ballot
    ballots_seen: dict[tuple[int, pl.Ballot], float] = field(default_factory=dict)


class _Placement:
    """The shell of :mod:`netmesh.replication.placement` for one Redex over one
    MeshNode: sends and receives capability announcements, resolves the replica set
    of every non-pinned channel and starts, rebuilds or stops its runtime.

    One timer (``_wake``) serves the rate-limited broadcast, the periodic
    re-announcement and settling short sets. Everything runs in the node's event
    loop; the handlers never block.
    """

    def __init__(self, redex: Redex, node: Any) -> None:
        self.redex = redex
        self.node = node
        self.self_id: int = node.node_id
        cfg = getattr(node, "config", None)
        interval = getattr(cfg, "min_announce_interval", DEFAULT_MIN_ANNOUNCE_INTERVAL)
        self.set_interval(float(interval))
        #: nodes whose announcements outlive their sessions (Redex.set_placement_policy)
        self.retain: set[int] = set()
        self.form_majority = False
        self.incarnation = time.time_ns()
        self.version = 0
        self.own = pl.Announcement(self.self_id, self.incarnation, 0)
        self.channels: dict[ChannelName, _Channel] = {}
        self.view: dict[int, pl.Announcement] = {}
        self.announced = False  # something non-empty was broadcast once
        #: a changed first-set vote waits to be broadcast (``_rebuild_own(urgent)``)
        #: while ``_hold`` > 0: once per resolution of every channel, not once per
        #: channel (N channels' votes change on one announcement: N broadcasts of N
        #: votes each otherwise)
        self._urgent = False
        self._hold = 0
        self.next_reannounce = math.inf
        self.stats = dict.fromkeys(
            (
                "broadcasts",
                "direct",
                "received",
                "refused",
                "reresolved",
                "learner_chunks_served",
                "learner_events",
                "placement_write_errors",
            ),
            0,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._closed = False
        node.subscribe_batch(pl.CAPABILITY_STREAM, self._on_announcements)
        node.subscribe_batch(pl.LEARN_STREAM, self._on_learn)
        node.subscribe(PEER_EVENTS, self._on_peer_event)

    def set_interval(self, interval: float) -> None:
        self.interval = interval
        self.settle = pl.SETTLE_WINDOWS * self.interval
        self.reannounce_every = max(REANNOUNCE_WINDOWS * self.interval, MIN_REANNOUNCE_S)
        last = getattr(self, "limiter", None)
        self.limiter = pl.AnnounceLimiter(self.interval)
        if last is not None:
            self.limiter.last_sent, self.limiter.pending = last.last_sent, last.pending

    # -- local changes ---------------------------------------------------------------
    def open(self, name: ChannelName, file: RedexFile, config: ReplicationConfig) -> None:
        """A non-pinned channel opened here: announce the candidacy, join if the set
        resolved from what is known already holds this node. Raises what starting the
        runtime raises (LogCorrupt, ...)."""
        factor = config.effective_factor()
        cp = pl.ChannelPlacement(self.self_id, factor, self.settle)
        if self.form_majority:
            cp.min_form = factor // 2 + 1
        ch = _Channel(file, config, cp)
        if config.ack == "quorum":
            stored = self._load_version(name, file)
            if stored is not None:
                members, ch.version = stored
                ch.ran = True
                ch.resume = members if self.self_id in members else None
            if self.form_majority:
                ch.form = self._load_form(name, file)
        self.channels[name] = ch
        file.refusal = NotLeader(name, None)  # Idle until selected
        self._rebuild_own()
        self._resolve(name, self._now(), raise_errors=True)
        self._schedule()

    def close_channel(self, name: ChannelName) -> None:
        """The channel closes here: withdraw the candidacy (the Redex detaches the
        runtime)."""
        if self.channels.pop(name, None) is not None:
            self._rebuild_own()
            self._schedule()

    def changed(self) -> None:
        """Chains or metadata changed."""
        self._rebuild_own()
        self._resolve_all()

    def _rebuild_own(self, urgent: bool = False) -> None:
        r = self.redex
        self.version += 1
        self.own = pl.Announcement(
            self.self_id,
            self.incarnation,
            self.version,
            channels=frozenset(str(n) for n in self.channels),
            chains=frozenset(r._chains),
            metadata=pl.sorted_metadata(r._metadata),
            members=pl.sorted_members(
                {
                    str(n): ch.placement.applied
                    for n, ch in self.channels.items()
                    if ch.placement.applied is not None
                }
            ),
            ready=frozenset(
                str(n)
                for n, ch in self.channels.items()
                if ch.ready and ch.placement.applied is None
            ),
            steps=tuple(
                sorted((str(n), ch.step) for n, ch in self.channels.items() if ch.step is not None)
            ),
            versions=tuple(
                sorted(
                    (str(n), ch.version)
                    for n, ch in self.channels.items()
                    if ch.placement.applied is not None and ch.version
                )
            ),
            forms=tuple(
                sorted((str(n), ch.form) for n, ch in self.channels.items() if ch.form != NO_VOTE)
            ),
        )
        self.limiter.changed()
        if urgent and self.own.forms:
            self._urgent = True
        if not self._hold:
            self._send_urgent()
        self._schedule()

    def _send_urgent(self) -> None:
        # a vote on a first set goes out now, outside the rate limit: forming takes
        # two rounds of them, and a node changes its vote a few times per channel
        if not self._urgent or self._closed:
            return
        self._urgent = False
        self._broadcast(self.own)
        self.announced = True
        self.next_reannounce = min(self.next_reannounce, self._now() + self.reannounce_every)

    # -- resolution ------------------------------------------------------------------
    def _resolve_all(self) -> None:
        now = self._now()
        self._hold += 1
        try:
            for name in list(self.channels):
                self._resolve(name, now)
        finally:
            self._hold -= 1
            if not self._hold:
                self._send_urgent()
        self._schedule()

    def _resolve(self, name: ChannelName, now: float, raise_errors: bool = False) -> None:
        ch = self.channels.get(name)
        hub = self.redex._hub
        if ch is None or hub is None:
            return
        anns = [self.own, *self.view.values()]
        resolved = pl.resolve(ch.config.placement, ch.config.factor, str(name), anns)
        before = (ch.placement.applied, ch.version, ch.ran, ch.step, ch.resume)
        outcome: pl.Change | float | None
        if ch.config.ack == "quorum":  # one node at a time once formed (issue 13 §3)
            resume, ch.resume = ch.resume, None
            step = (
                pl.Change(resume, ch.version)  # the set it ran last, as it left it
                if resume is not None and ch.placement.applied is None
                else self._quorum_step(name, ch, resolved, now)  # sets ch.due
            )
            if self.form_majority:  # node daemons: the first set is chosen by Paxos
                step = self._form(name, ch, resolved, step, now)
            elif step == pl.FORM and not pl.may_form(
                ch.ran, self.retain, self.view, ch.config.effective_factor()
            ):
                step = None  # asked again when an announcement changes
            if step == pl.FORM:  # the first set of a channel nobody ran: version 0
                outcome = ch.placement.update(resolved, now)
            elif step == pl.LEARN:
                seen = {n: a.members_of(str(name)) for n, a in self.view.items()}
                self._learn(name, ch, seen, now)  # sets ch.due: when to ask again
                return
            elif isinstance(step, pl.Change):
                outcome = step
                ch.placement.applied = step.members
                if ch.step is not None and ch.step.members != step.members:
                    ch.step = None  # announced until this node takes another step
            else:
                return
        else:
            outcome = ch.placement.update(resolved, now)
        if isinstance(outcome, float):
            ch.due = outcome
            return
        ch.due = math.inf
        if outcome is None:
            return
        if ch.config.ack == "quorum":
            if outcome.members is not None:
                ch.version = outcome.version
            ch.ran = True
            try:
                self._save_version(name, ch)
            except OSError as exc:
                # persisted before it is taken (as the first-set vote): a set this node
                # announced but could not record would be forgotten by a restart, which
                # could then go back to an older version; the next heartbeat tries again
                ch.placement.applied, ch.version, ch.ran, ch.step, ch.resume = before
                ch.due = now + max(MIN_STEP_RECHECK_S, ch.config.heartbeat_ms / 1000.0)
                self.stats["placement_write_errors"] += 1
                log.error("%s: set %s not taken: %s", name, outcome.members, exc)
                self._schedule()
                return
        ch.changes = [*ch.changes[-15:], outcome.members]
        self._rebuild_own()  # the others learn the set this node runs now
        self.stats["reresolved"] += 1
        running = hub.runtime(name) is not None
        if outcome.members is None:
            log.info(
                "%s: not in the replica set %s any more: Idle",
                name,
                [f"{m:#018x}" for m in resolved],
            )
            hub.detach(name)
            ch.file.refusal = NotLeader(name, None)
            ch.ready = ch.learned = False
            return
        log.info(
            "%s: replica set %s (%s)",
            name,
            [f"{m:#018x}" for m in outcome.members],
            "re-resolved" if running else "selected",
        )
        if running:
            hub.detach(name)
        try:
            if ch.learned:
                self._label_learned(name, ch)
            hub.attach(name, ch.file, ch.config, outcome.members)
        except Exception:
            ch.placement.applied = None
            ch.file.refusal = NotLeader(name, None)
            self._rebuild_own()
            if raise_errors:
                raise
            log.exception("%s: could not start replication with %s", name, outcome.members)

    def _quorum_step(
        self, name: ChannelName, ch: _Channel, resolved: tuple[int, ...], now: float
    ) -> pl.Change | pl.Step | str | None:
        """``placement.quorum_change`` with this node's view, its coordinator's term and
        leader and the steps leaders announced; a step this node orders as the leader
        is recorded and announced, then asked again. While a change is pending (this
        node's set is not its target, or a leader ordered a step from it) it is asked
        again every heartbeat: the coordinator's term and leader change without an
        announcement."""
        key = str(name)
        seen = {n: a.members_of(key) for n, a in self.view.items()}
        ready = {n for n, a in self.view.items() if key in a.ready}
        steps = {n: st for n, a in self.view.items() if (st := a.step_of(key)) is not None}
        versions = {n: a.version_of(key) for n, a in self.view.items()}
        hub = self.redex._hub
        rt = None if hub is None else hub.runtime(name)
        lead = None if rt is None else pl.Lead(rt.coord.term, rt.coord.leader_id)
        applied = ch.placement.applied
        for _ in range(2):
            if ch.step is not None:
                steps[self.self_id] = ch.step
            out = pl.quorum_change(
                self.self_id,
                applied,
                resolved,
                seen,
                ready,
                lead=lead,
                steps=steps,
                version=ch.version,
                versions=versions,
            )
            if not isinstance(out, pl.Step):
                break
            log.info(
                "%s: leader in term %d orders the step %s -> %s",
                name,
                out.term,
                [f"{m:#018x}" for m in out.source],
                [f"{m:#018x}" for m in out.members],
            )
            ch.step = out
            self._rebuild_own()
            out = None
        pending = applied is not None and (
            applied != resolved or any(st.source == applied for st in steps.values())
        )
        ch.due = math.inf
        if out is None and pending:
            ch.due = now + max(MIN_STEP_RECHECK_S, ch.config.heartbeat_ms / 1000.0)
        return out

    def _form(
        self,
        name: ChannelName,
        ch: _Channel,
        resolved: tuple[int, ...],
        step: pl.Change | pl.Step | str | None,
        now: float,
    ) -> pl.Change | pl.Step | str | None:
        """Node daemons: this node's part in choosing a quorum channel's first set
        (``placement.form_vote``: Paxos over this node and its configured peers). It
        votes as an acceptor whatever ``step`` is; it proposes ``resolved`` (once
        settled) when ``step`` is FORM and it never ran the channel. A changed vote is
        persisted, then announced at once. Returns ``step``, with FORM replaced by the
        chosen set at version 0 when this node is in it (None: not chosen yet, or
        without this node)."""
        key = str(name)
        want: tuple[int, ...] | None = None
        if step == pl.FORM and not ch.ran:
            settled = ch.placement.settled(resolved, now)
            if isinstance(settled, float):
                ch.due = min(ch.due, settled)
            elif settled is not None:
                want = settled
        others = {n: v for n, a in self.view.items() if (v := a.form_of(key)) is not None}
        # rivals worth waiting on: up, and running their ballot for less than
        # FORM_YIELD_S (one cut off from a majority would otherwise stall everyone)
        seen = {(n, v.ballot): ch.ballots_seen.get((n, v.ballot), now) for n, v in others.items()}
        ch.ballots_seen = seen
        up = set(self.node.peers())
        live = {n for (n, _), t in seen.items() if n in up and now - t < pl.FORM_YIELD_S}
        if want is not None:
            waits = [t + pl.FORM_YIELD_S for (n, _), t in seen.items() if n in live]
            ch.due = min([ch.due, *waits])
        vote, chosen = pl.form_vote(
            self.self_id, self.retain | {self.self_id}, ch.form, others, want, live
        )
        if vote != ch.form:
            # persisted before it is adopted: a write that fails (disk full) leaves the
            # vote as it was, so no later announcement carries a promise or acceptance
            # a restart would forget; the next resolve tries again
            self._save_form(name, ch, vote)
            ch.form = vote
            self._rebuild_own(urgent=True)
        if step not in (pl.FORM, None):
            return step
        # a member of the chosen set forms it even when its own target has moved on (a
        # node it had not heard opened the channel since): without it the set waits for
        # it for good (a fresh quorum set elects once every member runs it), and the
        # steps toward the target need that set's leader. Not once any set advanced.
        advanced = any(a.version_of(key) for a in self.view.values())
        if (
            chosen is not None
            and self.self_id in chosen
            and not ch.ran
            and ch.placement.applied is None
            and not advanced
        ):
            log.info("%s: first set %s chosen", name, [f"{m:#018x}" for m in chosen])
            return pl.Change(chosen, 0)
        return None  # asked again when an announcement changes

    def _load_form(self, name: ChannelName, file: RedexFile) -> pl.FormVote:
        """This node's vote on the first set of ``name`` (``FORM_FILE``; LogCorrupt if
        unreadable; none yet: an empty vote)."""
        path = file.config.path
        if path is None:
            return self.redex._form_votes.get(str(name), NO_VOTE)
        vote = _read_record(path, FORM_FILE, pl.decode_form)
        return NO_VOTE if vote is None else vote

    def _save_form(self, name: ChannelName, ch: _Channel, vote: pl.FormVote) -> None:
        """``vote`` for ``name``, before it becomes ``ch.form`` and is announced (Paxos:
        an acceptor's promise and acceptance survive its restarts); raises OSError if
        it could not be written."""
        if ch.file.config.path is not None:
            write_durably(ch.file.config.path, FORM_FILE, pl.encode_form(vote))
        self.redex._form_votes[str(name)] = vote

    def _load_version(
        self, name: ChannelName, file: RedexFile
    ) -> tuple[tuple[int, ...], int] | None:
        """The set this node ran ``name`` with last (empty: it left it) and its
        version: from ``<path>/placement`` (LogCorrupt if unreadable), or this
        process's memory for an in-memory file (None: it never ran it)."""
        path = file.config.path
        if path is None:
            return self.redex._set_versions.get(str(name))
        return _read_record(path, PLACEMENT_FILE, pl.decode_version)

    def _save_version(self, name: ChannelName, ch: _Channel) -> None:
        """tmp, fsync, rename, fsync the directory (before the set is announced)."""
        path = ch.file.config.path
        if path is not None:
            data = pl.encode_version(ch.placement.applied or (), ch.version)
            write_durably(path, PLACEMENT_FILE, data)
        self.redex._set_versions[str(name)] = (ch.placement.applied or (), ch.version)

    # -- learners (quorum channels: a new member catches up before it counts) --------
    def _learn(
        self,
        name: ChannelName,
        ch: _Channel,
        seen: Mapping[int, tuple[int, ...] | None],
        now: float,
    ) -> None:
        """This node is the next to be added: copy the committed prefix from a member
        (``LEARN_STREAM``), then announce ``ready``. A node whose log already holds
        events (an earlier life) is ready at once: the replication protocol repairs
        and completes it after it joins."""
        if ch.ready:
            ch.due = math.inf
            return
        if not ch.learned and ch.file.next_seq > 0:
            self._ready(ch)
            return
        sources = sorted(n for n, m in seen.items() if m is not None and n in self.node.peers())
        if not sources:
            ch.due = math.inf  # asked again when an announcement changes
            return
        retry = max(MIN_LEARN_RETRY_S, 2 * ch.config.heartbeat_ms / 1000.0)
        if ch.learn_from not in sources or now - ch.learn_asked_at >= retry:
            ch.learn_from = sources[0]
            self._ask(name, ch, now)
        ch.due = ch.learn_asked_at + retry  # re-asked then unless answered

    def _ask(self, name: ChannelName, ch: _Channel, now: float) -> None:
        assert ch.learn_from is not None
        ch.learn_asked_at = now
        req = pl.LearnRequest(str(name), ch.file.next_seq)
        try:
            self.node.send(ch.learn_from, pl.LEARN_STREAM, pl.encode_learn(req))
        except (LocalProtocolError, NetmeshError) as exc:
            log.debug("%s: learner request to %#x not sent: %s", name, ch.learn_from, exc)

    def _ready(self, ch: _Channel) -> None:
        ch.ready, ch.learn_from, ch.due = True, None, math.inf
        self._rebuild_own()

    def _on_learn(self, from_id: int, msgs: list[bytes]) -> None:
        for raw in msgs:
            try:
                m = pl.decode_learn(raw)
            except DecodeError as exc:
                self.stats["refused"] += 1
                log.debug("undecodable learner message from %#x: %s", from_id, exc)
                continue
            if isinstance(m, pl.LearnRequest):
                self._serve_learner(from_id, m)
            else:
                self._on_chunk(from_id, m)

    def _serve_learner(self, to: int, m: pl.LearnRequest) -> None:
        """Answer with committed events from ``m.from_seq`` (one term per run)."""
        hub = self.redex._hub
        rt = None if hub is None else hub.runtime(ChannelName(m.channel))
        if rt is None:
            return  # not a member here: the learner asks another one
        f = rt.file
        upto = min(rt.coord.commit_seq, f.next_seq)
        runs: list[tuple[int, tuple[bytes, ...]]] = []
        if f.first_retained_seq <= m.from_seq < upto:
            payloads, first = f.read_payloads(m.from_seq, upto, pl.LEARN_CHUNK_BYTES)
            seq, run_term = first, -1
            run: list[bytes] = []
            for p in payloads:
                t = f.term_at(seq) or 0
                if t != run_term and run:
                    runs.append((run_term, tuple(run)))
                    run = []
                run_term = t
                run.append(p)
                seq += 1
            if run:
                runs.append((run_term, tuple(run)))
        chunk = pl.LearnChunk(m.channel, m.from_seq, upto, tuple(runs))
        try:
            self.node.send(to, pl.LEARN_STREAM, pl.encode_learn(chunk))
            self.stats["learner_chunks_served"] += 1
        except (LocalProtocolError, NetmeshError) as exc:
            log.debug("%s: learner chunk to %#x not sent: %s", m.channel, to, exc)

    def _on_chunk(self, from_id: int, m: pl.LearnChunk) -> None:
        name = ChannelName(m.channel)
        ch = self.channels.get(name)
        if ch is None or ch.ready or ch.placement.applied is not None:
            return
        if from_id != ch.learn_from or m.first_seq != ch.file.next_seq:
            return  # stale or duplicate: the retry asks again
        try:
            for term, payloads in m.runs:
                ch.file.apply_batch(list(payloads), expect_seq=ch.file.next_seq, term=term)
                ch.learned = True
        except NetmeshError as exc:  # the replication protocol completes it after joining
            log.warning("%s: learner copy from %#x stopped: %s", name, from_id, exc)
            self._ready(ch)
            return
        self.stats["learner_events"] += sum(len(p) for _, p in m.runs)
        if not m.runs or ch.file.next_seq >= m.upto:
            log.info("%s: caught up as a learner at seq %d", name, ch.file.next_seq)
            self._ready(ch)
        else:
            self._ask(name, ch, self._now())

    def _label_learned(self, name: ChannelName, ch: _Channel) -> None:
        """A persisted log filled as a learner needs a hard state before the runtime
        opens it (``FileStorage.check_hard_state``): the terms it copied, no vote."""
        from netmesh.log.hardstate import HardState
        from netmesh.replication.runtime import FileStorage

        hub = self.redex._hub
        if hub is None or ch.file.config.path is None:
            return
        storage = FileStorage(hub, str(name), ch.file)
        if storage.load_hard_state() is None:
            epochs = tuple(ch.file.epochs)
            storage.save_hard_state(HardState(ch.file.last_term, None, epochs))

    def idle_handle(self, name: ChannelName) -> IdleCoordinator | None:
        ch = self.channels.get(name)
        return None if ch is None else IdleCoordinator(ch.file)

    def idle_count(self) -> int:
        hub = self.redex._hub
        return sum(1 for n in self.channels if hub is None or hub.runtime(n) is None)

    def snapshot(self) -> dict[int, pl.Announcement]:
        return {**self.view, self.self_id: self.own}

    # -- the wire --------------------------------------------------------------------
    def _on_announcements(self, from_id: int, msgs: list[bytes]) -> None:
        changed = False
        for raw in msgs:
            try:
                a = pl.decode(raw, from_id)
            except DecodeError as exc:
                self.stats["refused"] += 1
                log.debug("undecodable announcement from %#x: %s", from_id, exc)
                continue
            self.stats["received"] += 1
            old = self.view.get(from_id)
            if not a.newer_than(old):
                continue
            self.view[from_id] = a
            changed = True
            if old is None or old.incarnation != a.incarnation:
                self._send_direct(from_id)  # a new peer (or a new life): tell it ours
        if changed:
            self._resolve_all()

    def _on_peer_event(self, node_id: int, event: bytes) -> None:
        if event == b"up":
            self._send_direct(node_id)
        elif node_id in self.retain:
            pass  # down, not removed: it stays a candidate (set_placement_policy)
        elif self.view.pop(node_id, None) is not None:  # left the cluster
            self._resolve_all()

    def _send_direct(self, to: int) -> None:
        if self._closed or not self.announced:
            return
        try:
            self.node.send(to, pl.CAPABILITY_STREAM, pl.encode(self.own))
            self.stats["direct"] += 1
        except (LocalProtocolError, NetmeshError) as exc:
            log.debug("announcement to %#x not sent: %s", to, exc)

    def _broadcast(self, a: pl.Announcement) -> None:
        data = pl.encode(a)
        for peer in self.node.peers():
            try:
                self.node.send(peer, pl.CAPABILITY_STREAM, data)
            except (LocalProtocolError, NetmeshError) as exc:
                log.debug("announcement to %#x not sent: %s", peer, exc)
        self.stats["broadcasts"] += 1

    # -- timers ----------------------------------------------------------------------
    def _now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return float(self.node.now())

    def _schedule(self) -> None:
        if self._closed:
            return
        due = self.limiter.due_at()
        at = min(
            math.inf if due is None else due,
            self.next_reannounce,
            min((ch.due for ch in self.channels.values()), default=math.inf),
        )
        if at == math.inf or at >= self._timer_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next change in a loop schedules it
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(max(at, loop.time()), self._wake)

    def _wake(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._closed:
            return
        now = self._now()
        if self.limiter.may_send(now) or (now >= self.next_reannounce and not self.own.empty):
            self.limiter.sent(now)
            if self.own.empty and not self.announced:
                self.next_reannounce = math.inf  # never told anyone anything: no news
            else:
                self._broadcast(self.own)
                self.announced = True
                empty = self.own.empty
                self.next_reannounce = math.inf if empty else now + self.reannounce_every
        self._hold += 1
        try:
            for name, ch in list(self.channels.items()):
                if ch.due <= now:
                    self._resolve(name, now)
        finally:
            self._hold -= 1
            if not self._hold:
                self._send_urgent()
        self._schedule()

    def close(self) -> None:
        """disable_replication: withdraw every candidacy now (one last announcement,
        outside the rate limit), unsubscribe, stop the timer."""
        if self._closed:
            return
        if self.announced and not self.own.empty:
            self.version += 1
            self._broadcast(pl.Announcement(self.self_id, self.incarnation, self.version))
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.node.unsubscribe(pl.CAPABILITY_STREAM, self._on_announcements)
        self.node.unsubscribe(pl.LEARN_STREAM, self._on_learn)
        self.node.unsubscribe(PEER_EVENTS, self._on_peer_event)
        self.channels.clear()
        self.view.clear()

"""Per-channel replication coordinator: a pure state machine (no IO, no clock).

Theory of operation
-------------------
The shell feeds inputs and executes the returned outputs, in list order, before the
next input (etcd's Ready loop, flattened):

* inputs: ``tick(now)``, ``step(from_id, msg, now)``, ``local_appended(tail, now)``,
  ``local_durable(durable, now)``,
  ``serve(req, payloads, now)``, ``applied(tail)``, ``transition_to(role, signal)``.
* outputs: :class:`SaveHardState` (persist before anything after it is sent),
  :class:`Truncate` / :class:`Apply` (change the local log), :class:`Send`,
  :class:`ServeSync` (read the log, call :meth:`ReplicationCoordinator.serve`),
  :class:`CommitAdvanced`, :class:`RoleChanged` (notifications).

Dispatch. As etcd-raft's ``Step``, :meth:`ReplicationCoordinator.step` settles the
term once (a higher term is adopted first), then calls the handler of the resulting
role from :data:`STEP_TABLE`, a printable ``(role, message type) -> handler`` table
(``format_step_table()``); ticks go through :data:`TICK_TABLE`. No handler re-tests
the role. Idle and Failed take no input. ``storage_failed`` moves any role to FAILED
(fail-stop; see ``netmesh.replication.executor``).

Vocabulary. One word per concept in this package: a **tail** is always a *next seq*
(the number of events a log holds; ``tail_seq`` on the wire and in the public API,
``tail`` inside); ``commit`` is the exclusive commit seq; an **epoch** is a
``(term, start_seq)`` pair; a **window** is ``missed_heartbeats`` x heartbeat.

Logs and seqs. Seqs start at 0; ``tail_seq`` is the next seq (= events held);
``commit_seq`` is exclusive too. Each node keeps an *epoch history* ``[(term,
start_seq)]`` (Kafka leader epochs): the leader of ``term`` wrote its first event at
``start_seq``. A new leader appends ``(term, tail)`` at once, so its newest epoch may
be empty: it plays the role of Raft's no-op entry without taking a seq. Terms are
unique per candidate node (:func:`term_slot`: ``term % TERM_SLOTS`` is the low bits of
the candidate's node id), so each term has at most one leader even where no majority
is required, whatever member lists the nodes run with: a placement change (issue 13
§3) cannot give two nodes the same term, as ``term % n == index in the member list``
did when two nodes' lists differed in size or order.

Log matching. Two logs holding the same term at the same seq hold the same prefix.
A follower asks ``SyncRequest(from_seq=tail, last_term=term of event tail-1)``; the
leader serves only if its own event ``from_seq-1`` has that term.

Divergence rule. Otherwise the leader answers ``Nack(DIVERGED, epoch_term=T,
epoch_end=E)`` where T is its newest epoch term <= the follower's ``last_term`` and
E the end (exclusive) of that epoch in the leader's log. The follower truncates to
``min(E, end of its own epochs up to T, tail)`` and asks again; every round strictly
shortens the log until the terms match (at seq 0 they always do). Entries pushed or
served with a conflicting term for a seq the follower holds also truncate from the
first conflicting seq. The discarded suffix is never mixed into the new history: it
is dropped with a :class:`Truncate` output and counted in ``truncated_events_total``.
With ``ack="quorum"`` those events were never committed (acknowledged), so nothing
acknowledged is lost; with ``ack="leader"`` a split brain loses the suffix of the side
whose newest event has the older term.

Election. A Replica that hears nothing from its leader for ``missed_heartbeats`` x
``heartbeat_ms`` (a window) computes the deterministic winner among itself and the
members it heard within that window: the most up-to-date log, then the pinned
leader, then the lowest node id. The winner campaigns at once; any other node defers
to it **once** (bounded deferral) and campaigns itself after one more window plus a
random part of another (Raft's randomised timeouts; the randomness comes from the
``rng`` argument), so a best candidate that cannot campaign (it reaches no majority)
never blocks the election. A lost campaign also waits a randomised window. Log order:
``(epoch_term, tail)`` in quorum mode (safe with the virtual no-op), ``(last event
term, tail)`` in leader mode. Voters grant once per term to a log at least as up to
date as theirs. ``ack="quorum"``: a majority of grants wins; a Replica only campaigns
when it heard a majority, and a leader that has not heard a majority for the window
steps down. ``ack="leader"``: the candidate wins when every member it heard within
the window granted (a lone survivor wins alone); a replica whose newest event is
newer than its leader's challenges it. The pinned leader campaigns as soon as it is
in sync with a leader that is not itself (or, with no leader, as soon as it may).

Leader stickiness (Raft thesis §9.6 pre-vote, etcd-raft's checkQuorum lease): a
campaign starts with a **pre-vote** for the next owned term, which changes nothing at
the voters and is refused by any voter that knows a live leader (it leads, or heard
its leader within the window); only a winning pre-vote takes the term and asks for
real votes, and a voter in its lease ignores a real vote of a higher term without
adopting it. So a node that stops hearing a healthy leader (a one-way loss) cannot
raise the term and depose it. Handoffs, challenges and manual transitions use a
``FORCE`` vote that skips the pre-vote and the leases (etcd's leadership transfer).

Quiescence (CockroachDB's quiescent ranges + node liveness; issue 10 §6 at scale).
An idle channel stops its per-channel heartbeats. A leader whose every healthy
follower holds its whole log, knows the commit (= tail) and shares its term, with no
push pending and no pinned node waiting to take over, sends its next heartbeat with
``quiesce=True`` and goes *quiescent*; a follower in sync with it that receives that
heartbeat goes quiescent too. A quiescent coordinator is never due
(:meth:`~ReplicationCoordinator.next_tick_at` is ``inf``), sends nothing and ignores
the heartbeats that say nothing new (a follower's last heartbeats crossing the quiesce
heartbeat); any other input wakes it: a local append (the push leaves at once: no
added latency), a sync request or response, an ack, a heartbeat with a new term,
tail or commit, a non-quiesce heartbeat of its leader, a manual transition, a close,
and a vote that changes its term, vote or role. A vote it refuses (a pre-vote inside
the lease, a stale term) is answered without waking: a node cut off from the leader
campaigns every few windows, and must not keep the healthy members awake.

Instead of per-channel heartbeats the shell sends one liveness beat per peer per
heartbeat interval, listing the channels it leads quiescently (with their term), and
feeds per-peer liveness in: :meth:`~ReplicationCoordinator.refresh` before every
input (the times stand in for the per-channel heartbeats quiescent peers no longer
send: a peer heard is a member heard, by awake channels too; for a quiescent
follower the leader's beat listing the channel is the leader's heartbeat), and
:meth:`~ReplicationCoordinator.wake` when the leader's node fell silent for the
window, its beat stopped listing the channel, or (for a leader) a member's node fell
silent. A woken follower's election timer counts from the last beat that listed the
channel, so failover takes as long as without quiescence; a woken leader heartbeats
at once, and its check-quorum (etcd-raft's CheckQuorum lease) judges the peers by
that liveness.

Safety is untouched: quiescence changes only *when* timers fire and heartbeats are
sent. Terms, votes, the vote rules, log matching, the divergence rule and the commit
rule are the same code paths: a quiescent node settles a message's term and runs the
same handler as an awake one (votes directly, everything else after waking). Node
liveness only feeds the liveness mechanisms (election timer, pre-vote lease, leader
lease/check-quorum), which Raft already allows to be wrong (a timer that fires early
causes an election, a late one delays one; neither lets two leaders share a term or
lose a committed entry). CockroachDB's quiescence rests on the same argument: it
suppresses ticks and heartbeats of idle ranges and leaves the Raft state machine as
it is.

Lost state (issue 10 §2; Viewstamped Replication's recovery protocol, Liskov and
Cowling 2012 §4.3). Raft keeps ``currentTerm``, the vote and the log on stable storage
(§5.1); a node that comes back without them (no data directory, a wiped one) may have
acknowledged events it no longer holds, so its votes and its leadership would lie. Such
a coordinator is *amnesiac* (the hard state is missing, or was saved with
``recovering``): it never campaigns, says so in its heartbeats, and grants a vote only
to a candidate whose log is at least as up to date as the newest log among the
non-amnesiac members it has heard, and only once it has heard ``n - majority + 1`` of
them: any committed event is held by a majority, so at least one of those holds it
(VR's recovering replica likewise waits for ``f + 1`` answers). It stops being
amnesiac when it is in sync with a live leader (who was elected by such votes) and
what it copied is durable, or when the channel is fresh: ``n - majority + 2`` members
(leader mode: a majority), itself included, are heard, each amnesiac or at term 0
with an empty log, and no member with state was heard (:meth:`_fresh_majority`). A
fresh quorum channel of 3 therefore elects once all 3 are up. A manual transition
(``transition_to``, the reference's way to drive roles) overrides the rule: it is
the operator's decision, as etcd's ``--force-new-cluster``. In leader mode an
amnesiac node votes as any other (its vote protects no acknowledgement). Out of
scope, as for VR: more than one member without state at once.

Replication. A follower not in sync with its leader's heartbeat keeps one SyncRequest
outstanding (retried after one heartbeat); each response is applied idempotently
(held prefix skipped, gaps and term mismatches ignored). A persisted leader may answer
one request with a stream of raw-record chunks (``SyncRecords.more``), during which the
request stays outstanding: :data:`SYNC_BURST_CHUNKS` chunks at once, then one more per
chunk the follower has applied (it says so with a *credit*: a SyncRequest from its new
tail carrying the stream's request id). A follower acks what it
holds once it has adopted the leader's epoch; acked followers are *streaming*: the
leader pushes new events to them right after ``local_appended`` (request_id 0), at
most ``max_inflight`` unacked pushes each. Leader commit = highest seq held by a
majority of current-term acks. Sync responses are charged to a token bucket; over
budget the leader NACKs BACKPRESSURE and the follower retries after half a heartbeat.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netmesh.errors import InvalidTransition, LocalProtocolError
from netmesh.log.hardstate import MAX_TERM, Epoch, HardState
from netmesh.log.packed import PackedPayloads, payload_size
from netmesh.replication.budget import replication_budget
from netmesh.replication.messages import (
    Ack,
    Heartbeat,
    Message,
    Nack,
    NackReason,
    SyncRecords,
    SyncRequest,
    SyncResponse,
    VoteKind,
    VoteRequest,
    VoteResponse,
)
from netmesh.replication.quorum import committed_seq, majority, vote_outcome
from netmesh.replication.roles import TRANSITIONS, ReplicaRole, TransitionSignal, transition

if TYPE_CHECKING:
    import random

    from netmesh.config import ReplicationConfig

RESPONSE_OVERHEAD = 47
EVENT_OVERHEAD = 12
DEFAULT_MAX_INFLIGHT = 4
#: The window of a raw catch-up stream (issue 15 §5), in ``sync_chunk_bytes``: a
#: leader answers a SyncRequest far behind its tail with :class:`SyncRecords` chunks
#: (``more=True`` but the last, at its tail), at most this many sent and not yet
#: applied by the follower. The follower keeps its request outstanding and, for each
#: chunk it applies, sends a *credit*: a SyncRequest from its new tail with the same
#: request id (a retry always takes a new id), which frees the chunk's window space
#: and lets the next one go. So the follower has the next chunks queued while it
#: applies one and the leader reads and seals the next meanwhile: no round trip per
#: chunk or per burst, and no wait for the follower's fsync (its Acks wait for that;
#: an Ack frees window space too). 8 x 256 KiB: a window of 4 left the follower idle
#: between the turns in which it applies what it has and sends its credits (one
#: datagram a turn); 2 MiB stays well below its socket buffer (``NodeConfig.
#: recv_buffer``, 4 MiB; a datagram costs about twice its size there: bursts of
#: 8 x 1 MiB records lost chunks and waited for the retry)
SYNC_BURST_CHUNKS = 8
#: terms a node may campaign in: ``term % TERM_SLOTS == term_slot(node id)``. A
#: constant of the protocol, the same on every node and for every member list
TERM_SLOTS = 1 << 24


def term_slot(node_id: int) -> int:
    """The residue of the terms ``node_id`` owns: its low 24 bits (node ids are
    uniform 64-bit hashes of public keys, ``identity.node_id_of``). Two members with
    the same slot are refused (:class:`~netmesh.errors.LocalProtocolError` from the
    coordinator); the chance for two random ids is 2**-24."""
    return node_id % TERM_SLOTS


L, R, C, IDLE = ReplicaRole.LEADER, ReplicaRole.REPLICA, ReplicaRole.CANDIDATE, ReplicaRole.IDLE
FAILED = ReplicaRole.FAILED
Sig = TransitionSignal


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Send:
    """Send ``msg`` (encode with ``messages.encode``) to node ``to`` on this channel."""

    to: int
    msg: Message


@dataclass(frozen=True)
class ServeSync:
    """Read events from ``from_seq`` (at least one, then while the payload bytes fit
    ``max_bytes``) and pass them to :meth:`ReplicationCoordinator.serve`.

    ``burst``: nonzero for a chunk of the raw stream answering the request (default
    0: one chunk; see :data:`SYNC_BURST_CHUNKS`); only
    :meth:`~ReplicationCoordinator.serve_records` uses it. Not compared: it says how
    long to keep answering, not what to read."""

    to: int
    from_seq: int
    max_bytes: int
    request_id: int
    burst: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Apply:
    """Append ``payloads`` to the local log; the first gets seq ``first_seq`` (= tail).
    All were written by the leader of ``term``, which the log records with them (so
    the log, not a separately saved file, says which term wrote each event)."""

    first_seq: int
    payloads: tuple[bytes, ...] | PackedPayloads
    term: int


@dataclass(frozen=True)
class ApplyRecords:
    """Append the leader's batch ``records`` as they are (``count`` events from
    ``first_seq`` = tail); ``runs`` are the ``(start, end, term)`` runs of the adopted
    epochs over them, which every record's own term must match (else the log refuses
    the whole chunk, as it does one whose CRCs fail)."""

    first_seq: int
    count: int
    records: bytes
    runs: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Truncate:
    """Discard local events with seq >= ``from_seq`` (a divergent, unacknowledged suffix)."""

    from_seq: int


@dataclass(frozen=True)
class ResetLog:
    """Discard every local event and restart the log at ``first_seq`` (the next event
    appended gets it); the leader's event ``first_seq - 1`` has term ``prev_term``.
    A replica behind the leader's retained head does this (a counted gap) instead of
    asking forever for events that no longer exist, as Redis falls back to a full
    resync."""

    first_seq: int
    prev_term: int


@dataclass(frozen=True)
class CommitAdvanced:
    """Events below ``commit_seq`` are held by a majority (quorum-mode appends may return)."""

    commit_seq: int


@dataclass(frozen=True)
class RoleChanged:
    old: ReplicaRole
    new: ReplicaRole
    term: int


@dataclass(frozen=True)
class SaveHardState:
    """Persist ``state`` before executing the outputs that follow it."""

    state: HardState


Output = (
    Send
    | ServeSync
    | Apply
    | ApplyRecords
    | Truncate
    | ResetLog
    | CommitAdvanced
    | RoleChanged
    | SaveHardState
)


@dataclass
class ReplicationMetrics:
    """Per-channel counters and gauges (snapshot with ``dataclasses.asdict``).

    sync_requests_total counts SyncRequests this node sent; sync_bytes_total the
    estimated bytes of SyncResponses it shipped (47 + 12/event + payload).
    """

    role: ReplicaRole = ReplicaRole.IDLE
    term: int = 0
    tail_seq: int = 0
    commit_seq: int = 0
    sync_bytes_total: int = 0
    sync_requests_total: int = 0
    leader_changes_total: int = 0
    elections_total: int = 0
    under_capacity_total: int = 0
    heartbeats_sent_total: int = 0
    heartbeats_received_total: int = 0
    replica_lag_seconds: float | None = None
    replica_lag_events: int = 0
    truncated_events_total: int = 0
    #: times this replica restarted its log at the leader's retained head (a gap)
    log_gaps_total: int = 0
    #: events skipped by those restarts (never held here)
    gap_events_total: int = 0
    #: idle: no timer, no per-channel heartbeats (see "Quiescence")
    quiescent: bool = False
    #: silence windows in which this node would have campaigned but did not: it
    #: started without hard state and no peer has shown it the current state yet
    elections_withheld_total: int = 0
    #: vote requests refused because this node is amnesiac and does not yet know
    #: enough intact members' logs, or the candidate's log is older than theirs
    votes_withheld_total: int = 0


# ----------------------------------------------------------------------- epoch helpers


def term_at(epochs: Sequence[Epoch], seq: int) -> int:
    """Term of the event at ``seq`` according to ``epochs`` (0 for seq < 0 or none)."""
    if seq < 0:
        return 0
    if epochs and seq >= epochs[-1][1]:  # the common case: the newest epoch
        return epochs[-1][0]
    i = bisect.bisect_right([s for _, s in epochs], seq)
    return epochs[i - 1][0] if i else 0


def add_epoch(epochs: tuple[Epoch, ...], term: int, start: int) -> tuple[Epoch, ...]:
    """Append ``(term, start)``; an empty newest epoch at the same start is replaced."""
    if epochs and epochs[-1][0] == term:
        return epochs
    if epochs and epochs[-1][1] >= start:
        return (*epochs[:-1], (term, start))
    return (*epochs, (term, start))


def epoch_end(epochs: Sequence[Epoch], term: int, tail: int) -> tuple[int, int]:
    """(T, end): T = newest epoch term <= ``term``; end = where epoch T ends (exclusive)."""
    for i in range(len(epochs) - 1, -1, -1):
        if epochs[i][0] <= term:
            end = epochs[i + 1][1] if i + 1 < len(epochs) else tail
            return epochs[i][0], end
    return 0, 0


def own_end(epochs: Sequence[Epoch], term: int, tail: int) -> int:
    """Start of the first epoch newer than ``term``, else ``tail``."""
    return next((s for t, s in epochs if t > term), tail)


def overlapping(epochs: Sequence[Epoch], first: int, end: int) -> tuple[Epoch, ...]:
    """Epochs covering some seq in ``[first, end]`` (end inclusive)."""
    out = []
    for i, (t, s) in enumerate(epochs):
        nxt = epochs[i + 1][1] if i + 1 < len(epochs) else None
        if s <= end and (nxt is None or nxt > first):
            out.append((t, s))
    return tuple(out)


def first_conflict(
    own: Sequence[Epoch], theirs: Sequence[Epoch], first: int, stop: int
) -> int | None:
    """First seq in ``[first, stop)`` whose term differs between the two histories."""
    points = {first} | {s for _, s in (*own, *theirs) if first < s < stop}
    for seq in sorted(points):
        if seq < stop and term_at(own, seq) != term_at(theirs, seq):
            return seq
    return None


def term_runs(epochs: Sequence[Epoch], start: int, end: int) -> list[tuple[int, int, int]]:
    """Split ``[start, end)`` into ``(first, stop, term)`` runs of one term each."""
    if start >= end:
        return []
    points = [start, *(s for _, s in epochs if start < s < end), end]
    return [(a, b, term_at(epochs, a)) for a, b in itertools.pairwise(points)]


def _order_for_durability(out: list[Output], save: SaveHardState) -> list[Output]:
    """Log changes first, then the hard state, then everything that leaves the node.

    The epoch history in the hard state labels the log's events with terms; saving it
    before a Truncate/Apply is executed would, after a crash in between, label old
    events with a new term (and so hide a divergence). Saving it after them leaves at
    worst events labelled with an older term, which the DIVERGED path repairs. The
    save still precedes every Send, so a vote or an ack never leaves before it is
    durable.
    """
    log_changes = [o for o in out if isinstance(o, Truncate | Apply | ResetLog)]
    others = [o for o in out if not isinstance(o, Truncate | Apply | ResetLog)]
    return [*log_changes, save, *others]


def _merge_epochs(
    log: Sequence[Epoch] | None, saved: Sequence[Epoch], tail: int
) -> tuple[Epoch, ...]:
    """The epochs to run with: the log's own (authoritative below ``tail``), after the
    saved ones that start before the log's first (history retention or a log restart
    removed from the log, e.g. the term of the event before the retained head), plus
    the saved newest epoch if it is empty and newer (the virtual no-op a new leader
    adds, which no record can carry). Without log epochs, the saved ones up to
    ``tail``."""
    if log is None:
        return tuple(e for e in saved if e[1] <= tail)
    held = [(t, s) for t, s in log if s < tail]
    cut = held[0][1] if held else tail
    epochs: tuple[Epoch, ...] = ()
    for t, s in [*(e for e in saved if e[1] < cut), *held]:
        epochs = add_epoch(epochs, t, s)
    last = epochs[-1][0] if epochs else 0
    if saved and saved[-1][0] > last and saved[-1][1] >= tail:
        epochs = add_epoch(epochs, saved[-1][0], tail)
    return epochs


_LOG_CHANGES = (Truncate, Apply, ApplyRecords, ResetLog)


@dataclass
class _Peer:
    heard_at: float | None = None
    epoch_term: int = 0
    last_term: int = 0
    tail: int = 0
    #: from its last heartbeat: its term and commit (a leader quiesces once every
    #: healthy follower shares its term, tail and commit)
    term: int = 0
    commit: int = 0
    #: from its last heartbeat: whether it was amnesiac (None: not heard yet)
    amnesiac: bool | None = None


@dataclass
class _Progress:
    match: int = 0
    sent: int = 0
    inflight: int = 0
    streaming: bool = False
    last_push: float = float("-inf")
    #: when a request of its was last answered with a burst that had more to send (it
    #: is far behind and catching up by raw bursts: not pushed to meanwhile)
    burst_at: float = float("-inf")
    #: the raw stream answering its request ``stream_rid`` (see SYNC_BURST_CHUNKS),
    #: going on while ``stream_open``: the next chunk starts at ``stream_next`` with at
    #: most ``stream_max`` payload bytes; ``stream_out``: (end seq, record bytes) of the
    #: chunks sent and not applied yet, oldest first; ``stream_queued``: a ServeSync of
    #: the stream waits in the outputs; ``stream_prev``: the request id of the stream
    #: it replaced (its late credits are ignored, not taken for a new request)
    stream_rid: int = 0
    stream_prev: int = 0
    stream_open: bool = False
    stream_next: int = 0
    stream_max: int = 0
    stream_out: list[tuple[int, int]] = field(default_factory=list)
    stream_queued: bool = False


@dataclass
class _Campaign:
    granted: set[int] = field(default_factory=set)
    rejected: set[int] = field(default_factory=set)
    required: set[int] = field(default_factory=set)
    deadline: float = 0.0
    manual: bool = False
    #: the term asked for (a pre-vote asks for it without taking it)
    term: int = 0
    kind: VoteKind = VoteKind.VOTE


# -------------------------------------------------------------------------- coordinator


class ReplicationCoordinator:
    """Replication state machine of one channel on one node; see the module docstring.

    Args:
        self_id: this node's id (must be in ``members``).
        config: the channel's :class:`~netmesh.config.ReplicationConfig`.
        members: node ids holding the channel (self included); order is irrelevant.
        now: current time in seconds (monotonic, any origin).
        tail_seq: the local log's ``next_seq`` at start.
        hard_state: what a previous incarnation saved (None: fresh).
        epochs: the log's own epochs, rebuilt from its records on open (each batch
            record carries its term). They win over the hard state's copy below
            ``tail_seq``, so no crash between a log change and the hard-state save can
            mislabel events; the hard state only adds its newest epoch when that one is
            empty (a new leader's virtual no-op). None: a log without terms (the hard
            state's epochs are used).
        rng: seeds request ids and randomises election waits (Raft's randomised
            timeouts). None: ids start at 1 and the waits are spread by node id.
        auto_bootstrap: go Idle -> Replica on the first tick.
        max_inflight: unacked pushes per streaming follower.
        min_push_gap: least seconds between two pushes to one follower, unless at
            least ``push_batch_events`` events wait; a push held back sets
            ``push_due`` (under load small batches travel in fewer, larger pushes;
            bulk transfers and low rates are not delayed).
        term_floor: the least term this node may campaign in (default 0). A node that
            starts without persisted hard state (no data directory, or an empty one)
            cannot know which terms it led in an earlier life; the shell passes a
            floor no earlier incarnation can have reached (``ChannelRuntime``: the
            wall clock in microseconds), so it never leads a term twice (Raft §5.1
            keeps ``currentTerm`` on stable storage for exactly this; Cassandra's
            gossip generation is the wall-clock second of the process start).
            Clamped to ``MAX_TERM // 2``.
        quiesce: idle channels go quiescent (default; see "Quiescence" in the module
            docstring). The shell must then send liveness beats and call
            :meth:`refresh` / :meth:`wake`; False keeps per-channel heartbeats always.
        push_bytes: payload bytes per push to a streaming follower (default
            ``config.sync_chunk_bytes``, which requests keep). With one push in flight
            per follower, a sustained stream moves one push per round trip, so larger
            pushes carry more per round trip and spread each push's fixed costs over
            more events. Never below ``sync_chunk_bytes``, and never above the
            budget's burst (a push larger than the bucket waits for a full bucket and
            drains it whole).

    Raises:
        LocalProtocolError: ``self_id`` not in ``members``, or two members share a
            :func:`term_slot`.
    """

    def __init__(
        self,
        self_id: int,
        config: ReplicationConfig,
        members: Sequence[int],
        *,
        now: float = 0.0,
        tail_seq: int = 0,
        hard_state: HardState | None = None,
        epochs: Sequence[Epoch] | None = None,
        rng: random.Random | None = None,
        auto_bootstrap: bool = True,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        min_push_gap: float = 0.0,
        push_batch_events: int = 512,
        term_floor: int = 0,
        quiesce: bool = True,
        push_bytes: int | None = None,
    ) -> None:
        self.members = tuple(sorted(set(members)))
        self.min_push_gap = min_push_gap
        self.push_batch_events = push_batch_events
        #: payload bytes per push (at least ``sync_chunk_bytes``, at most the budget's
        #: burst unless that is below ``sync_chunk_bytes``; see the ``push_bytes``
        #: argument)
        self.push_bytes = config.sync_chunk_bytes
        #: earliest time a push held back by ``min_push_gap`` may go; the shell calls
        #: ``local_appended`` again then (None: nothing held back)
        self.push_due: float | None = None
        if self_id not in self.members:
            raise LocalProtocolError(f"node {self_id} is not a member of {list(self.members)}")
        slots = {term_slot(m) for m in self.members}
        if len(slots) != len(self.members):
            raise LocalProtocolError(
                f"two members of {[hex(m) for m in self.members]} own the same terms "
                f"(node id mod 2**24): give one of them a new key"
            )
        self._slot = term_slot(self_id)
        self.self_id = self_id
        self.config = config
        self.pinned = config.leader_pinned
        self.hb = config.heartbeat_ms / 1000.0
        self.silence = config.missed_heartbeats * self.hb
        self.quorum_mode = config.ack == "quorum"
        self.max_inflight = max_inflight
        self.auto_bootstrap = auto_bootstrap
        hs = hard_state or HardState()
        self.term, self.voted_for = hs.term, hs.voted_for
        #: campaigns never use a term below this (see the ``term_floor`` argument)
        self.term_floor = min(max(0, term_floor), MAX_TERM // 2)
        #: no hard state was ever saved: the first save precedes the first log change
        #: (so a log never holds events while its hard state file is missing)
        self._never_saved = hard_state is None
        #: started without hard state and with peers: this incarnation may hold less
        #: than the log it once had (a node restarted without its data, or a channel
        #: without a data directory), so it does not campaign until a peer has shown
        #: it the current state (see :meth:`_note_amnesia`)
        self.amnesiac = (hard_state is None or hard_state.recovering) and len(self.members) > 1
        self.epochs = _merge_epochs(epochs, hs.epochs, tail_seq)
        self.tail = tail_seq
        #: this node's own durable tail as the shell last reported it (group commit
        #: writes before it syncs); None: every event in the log is durable
        self.durable: int | None = None
        self.commit = 0
        self.role = ReplicaRole.IDLE
        self.leader_id: int | None = None
        self.metrics = ReplicationMetrics()
        self.budget = replication_budget(
            config.replication_budget_fraction, config.nic_peak_bytes_per_s, now
        )
        if push_bytes is not None:
            burst = self.budget.capacity - RESPONSE_OVERHEAD
            self.push_bytes = max(config.sync_chunk_bytes, int(min(push_bytes, burst)))
        self._peers = {p: _Peer() for p in self.members if p != self_id}
        self._progress: dict[int, _Progress] = {}
        self._campaign = _Campaign()
        self._now = now
        self._out: list[Output] = []
        self._dirty = False
        self._bootstrapped = False
        self._leader_heard_at = now
        self._leader_tail = 0
        self._leader_since = now
        # a (re)started node waits one silence window before it may campaign, so a
        # restarted pinned node cannot win alone with a short log before it has heard
        # the current leader
        self._last_campaign_at = now
        self._next_hb_at = now
        self._outstanding: tuple[int, float] | None = None
        self._backoff_until = float("-inf")
        self._next_rid = (rng.getrandbits(48) if rng is not None else 0) | 1
        self._rng = rng
        #: time we last heard the leader we follow (its lease, etcd's checkQuorum)
        self._lease_at = float("-inf")
        #: extra seconds of silence before the next election attempt (0 right after a
        #: leader was heard: the deterministic winner goes first; randomised after a
        #: deferral or a lost campaign, Raft's [T, 2T) timeouts)
        self._extra_wait = 0.0
        #: this node already deferred once to a better candidate since it last heard a
        #: leader: the next silence it campaigns itself (bounded deferral)
        self._deferred = False
        #: idle: no timer, no per-channel heartbeat (module docstring, "Quiescence")
        self._quiescent = False
        #: may quiesce at all (the ``quiesce`` argument)
        self.quiesce_enabled = quiesce
        #: when it last went quiescent
        self._quiet_at = float("-inf")

    # ------------------------------------------------------------------ public inputs

    @property
    def tail_seq(self) -> int:
        return self.tail

    @property
    def commit_seq(self) -> int:
        return self.commit

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.epochs, self.amnesiac)

    @property
    def retention_floor(self) -> int | None:
        """Seq from which retention must keep events (None: no limit). Quorum mode:
        the commit seq, so retention never removes events a majority does not hold
        yet (a lagging minority restarts at the head instead, :class:`ResetLog`);
        leader mode promises nothing beyond the leader: no floor."""
        return self.commit if self.quorum_mode else None

    def tick(self, now: float) -> list[Output]:
        """Advance timers: bootstrap, heartbeats, silence detection, retries
        (dispatched per role through :data:`TICK_TABLE`)."""
        self._begin(now)
        if not self._quiescent:
            TICK_TABLE[self.role](self)
        return self._end()

    def next_tick_at(self) -> float:
        """Earliest time (seconds, the ``now`` clock) at which :meth:`tick` may do
        anything; a tick before it returns no output and changes no state (so a shell
        driving thousands of channels ticks only the due ones). ``inf``: no timer
        (Failed, quiescent, or Idle without auto-bootstrap). Valid until the next
        input of any kind (``refresh`` included): recompute after each. The
        deadlines: the next heartbeat, the silence window (plus the randomised extra
        wait), the pinned leader's campaign, a sync retry or backoff, a campaign's
        deadline, and a quorum leader's step-down (when the majority it heard last
        would fall silent).
        """
        role = self.role
        if self._quiescent:
            return float("inf")
        if role is IDLE:
            return self._now if self.auto_bootstrap and not self._bootstrapped else float("inf")
        if role is C:
            return self._campaign.deadline
        if role is FAILED:
            return float("inf")
        due = self._next_hb_at
        if role is L:
            if self.quorum_mode:
                due = min(due, max(self._leader_since + self.silence, self._quorum_lost_at()))
            return due
        due = min(due, self._leader_heard_at + self.silence + self._extra_wait)
        if self.leader_id is None and self.self_id == self.pinned:
            at = self._last_campaign_at + self.silence
            if at > self._now:
                due = min(due, at)
            elif self._may_campaign():
                return self._now
        if self.leader_id is not None and not self._in_sync():
            at = self._backoff_until
            if self._outstanding is not None:
                at = max(at, self._outstanding[1] + self.hb)
            due = min(due, max(at, self._now))
        return due

    def _quorum_lost_at(self) -> float:
        """When fewer than a majority will have been heard within the window, if no
        one is heard again (``-inf``: already)."""
        need = majority(len(self.members)) - 1
        if need <= 0:
            return float("inf")
        heard = sorted(
            (p.heard_at for p in self._peers.values() if p.heard_at is not None), reverse=True
        )
        return heard[need - 1] + self.silence if len(heard) >= need else float("-inf")

    def step(self, from_id: int, msg: Message, now: float) -> list[Output]:
        """Handle one decoded message from member ``from_id`` (others are dropped).

        As etcd-raft's ``Step``: the term is settled once, here (a higher term is
        adopted, which may turn a leader or candidate into a replica), then the message
        goes to the handler of the *resulting* role in :data:`STEP_TABLE`. Idle and
        Failed take no input (their rows are all drops).
        """
        self._begin(now)
        peer = self._peers.get(from_id)
        if peer is not None and self.role not in (IDLE, FAILED):
            if self._quiescent:
                return self._step_quiescent(from_id, msg)
            peer.heard_at = now
            if msg.term > self.term:
                if isinstance(msg, VoteRequest) and msg.kind is VoteKind.VOTE and self._in_lease():
                    return self._end()  # etcd checkQuorum: a live leader is not deposed
                if not _keeps_term(msg):
                    self._adopt_term(msg.term)
            STEP_TABLE[(self.role, type(msg))](self, from_id, msg)
            if self.amnesiac:
                self._note_amnesia(from_id, msg)
        return self._end()

    def _note_amnesia(self, frm: int, msg: Message) -> None:
        """Forget the amnesia once this node has learned the current state (module
        docstring, "Lost state"): it is in sync with a live leader, or the channel is
        fresh (:meth:`_fresh_majority`).

        Why (issue 10 §2): a node that lost its state and, cut off at once, led alone
        in a fresh term would let its newer-term events win over the acknowledged
        history in leader mode; and its vote, cast for a log shorter than what it once
        acknowledged, could elect a leader without committed events in quorum mode.
        Until cleared it never campaigns (:meth:`_may_campaign`) and votes only as
        :meth:`_amnesiac_may_grant` allows; it follows and catches up as usual. A
        single-member channel is never amnesiac.
        """
        if self._recovered() or (
            isinstance(msg, Heartbeat) and (self._fresh_majority() or self._newest_of_majority())
        ):
            self._clear_amnesia()

    def _newest_of_majority(self) -> bool:
        """Leader mode only: a majority of members, this node included, heard within
        the window, none with a newer log than this node's. Leader mode promises no
        more than the leader's log (a lone survivor may lead), so an amnesiac node that
        copied more than every member it hears may lead too; cut off alone it still
        may not (issue 10 §2 input 2). Without it a restarted node that had copied the
        most from the dead leader, next to an intact one further behind, left the
        channel without a leader for good (netmesh bench failover, trial 3 to 12)."""
        if self.quorum_mode:
            return False
        own = self._own_key()
        heard = [p for p in self._healthy() if self._peers[p].amnesiac is not None]
        if any(self._peer_key(p) > own for p in heard):
            return False
        return len(heard) + 1 >= majority(len(self.members))

    def _recovered(self) -> bool:
        """In sync with a live leader, and what was copied from it is durable (group
        commit writes before it syncs: a power cut before the sync must not leave a
        node flagged intact that lacks events it once acknowledged)."""
        return self._in_sync() and (self.durable is None or self.durable >= self.tail)

    def _clear_amnesia(self) -> None:
        self.amnesiac = False
        self._dirty = True  # the saved ``recovering`` flag goes too

    def _fresh_majority(self) -> bool:
        """A fresh channel: enough members, this node included, heard within the
        window, each *stateless* (amnesiac, or at term 0 with an empty log: it never
        heard any election or leader), and no member heard (in this incarnation)
        with state.

        How many: quorum mode ``n - majority + 2`` (all 3 of 3, 4 of 5). Committed
        events are on a majority; this node may be one of its holders that lost its
        state, the other ``majority - 1`` are intact and hold them, and each holder
        is then either heard with state (no bootstrap) or among the
        ``n - heard < majority - 1`` not heard: one wipe plus crashes up to a
        minority never pass for a fresh channel. (A majority was not enough: a wiped
        holder plus a member that crashed before the first election, at term 0 with
        nothing, elected an empty log over committed events.) Leader mode promises
        nothing beyond the leader's log, so a majority is enough there: it only
        keeps a node cut off at once from leading alone."""
        peers = self._peers
        if any(not peer.amnesiac and (peer.term or peer.tail) for peer in peers.values()):
            return False  # state heard (a peer not heard yet has amnesiac None, term 0)
        fresh = 1 + sum(1 for p in self._healthy() if peers[p].amnesiac is not None)
        n = len(self.members)
        return fresh >= (n - majority(n) + 2 if self.quorum_mode else majority(n))

    def _amnesiac_may_grant(self, theirs: tuple[int, int]) -> bool:
        """An amnesiac voter's extra rule (module docstring, "Lost state"): it knows the
        logs of at least ``n - majority + 1`` intact members (one of them holds every
        committed event) and the candidate's log ``theirs`` is at least as up to date
        as the newest of them."""
        intact = [p for p, peer in self._peers.items() if peer.amnesiac is False]
        if len(intact) < len(self.members) - majority(len(self.members)) + 1:
            return False
        return theirs >= max(self._peer_key(p) for p in intact)

    def storage_failed(self, now: float) -> list[Output]:
        """The shell's storage failed: stop for good (role FAILED, nothing is sent).

        Only a new coordinator over the reopened log leaves FAILED. Returns the
        RoleChanged notification (no hard state is saved: storage is what failed).
        """
        self._begin(now)
        self._quiescent = False
        if self.role is not FAILED:
            self._set_role(Sig.STORAGE_FAILED)
            self.leader_id = None
            self._progress = {}
        self._dirty = False
        return self._end()

    def local_appended(
        self, tail_seq: int, now: float, durable_seq: int | None = None
    ) -> list[Output]:
        """The shell appended locally; the log's next seq is now ``tail_seq``.

        Only the leader should append (the shell refuses appends elsewhere); an event
        appended on a non-leader is a divergent suffix and will be truncated.
        ``durable_seq``: the storage's durable tail when it syncs after writing (group
        commit), see :meth:`local_durable`.
        """
        self._begin(now)
        if durable_seq is not None:
            self.durable = durable_seq
        if tail_seq > self.tail:
            self._wake()  # the push below leaves now: waking adds no latency
        self.tail = max(self.tail, tail_seq)
        if self.role is L:
            for p in self._progress:
                self._maybe_push(p)
            self._maybe_commit()
        return self._end()

    def local_durable(self, durable_seq: int, now: float) -> list[Output]:
        """The storage made every event below ``durable_seq`` durable (a group-commit
        fsync round completed).

        The leader counts itself towards the commit only up to its durable tail, so
        ``commit_seq`` (what followers and quorum subscribers are told) never runs
        ahead of the copies that survive a power cut: Raft lets the leader write its
        log in parallel with replication but count its own vote once the entry is on
        stable storage (Ongaro's thesis §10.2.1).
        """
        self._begin(now)
        self.durable = durable_seq
        if self.role is L:
            self._maybe_commit()
        elif self.amnesiac and self._recovered():
            self._clear_amnesia()
        return self._end()

    def applied(self, new_tail: int, epochs: Sequence[Epoch] | None = None) -> list[Output]:
        """Correct the coordinator when executing Apply/Truncate left another tail;
        ``epochs``: the log's own (None: a log without terms)."""
        self._begin(self._now)
        if new_tail != self.tail:
            self.tail = new_tail
            self._set_epochs(_merge_epochs(epochs, self.epochs, new_tail))
            self.commit = min(self.commit, new_tail)
        return self._end()

    def serve(
        self,
        req: ServeSync,
        payloads: Sequence[bytes],
        now: float,
        head: int | None = None,
    ) -> list[Output]:
        """Answer a :class:`ServeSync` with the events the shell read.

        ``head``: the log's first retained seq when it is above ``req.from_seq``
        (retention dropped what the follower needs): a request is answered with
        ``Nack(BAD_RANGE, epoch_end=head, epoch_term=term of event head-1)`` so the
        follower restarts its log there; a push just stops streaming to it.
        """
        self._begin(now)
        prog = self._progress.get(req.to)
        if prog is not None and req.request_id and req.request_id == prog.stream_rid:
            prog.stream_open = prog.stream_queued = False  # answered once, not streamed
        if head is not None and head > req.from_seq and self.role is L:
            if req.request_id:
                t = term_at(self.epochs, head - 1)
                nack = Nack(self.term, req.request_id, NackReason.BAD_RANGE, req.from_seq, t, head)
                self._send(req.to, nack)
            elif prog is not None:
                prog.inflight = max(0, prog.inflight - 1)
                prog.sent, prog.streaming = prog.match, False
        elif self.role is L and req.to in self._progress and req.from_seq <= self.tail:
            room = self.tail - req.from_seq
            held = payloads if len(payloads) <= room else payloads[:room]
            if not isinstance(held, PackedPayloads):
                held = tuple(held)
            self._respond(req.to, req.request_id, req.from_seq, held)
        elif req.request_id:
            self._send(req.to, Nack(self.term, req.request_id, NackReason.NOT_LEADER, req.from_seq))
        return self._end()

    def transition_to(
        self, role: ReplicaRole, signal: TransitionSignal, now: float | None = None
    ) -> list[Output]:
        """Drive a role change by hand (the reference tests do).

        Asking for the role the coordinator already has (with a signal that can lead
        there) is a no-op: the automatic machinery may have got there first.

        Raises:
            InvalidTransition: the table has no ``(current role, signal) -> role``.
        """
        self._begin(self._now if now is None else now)
        self._wake()
        if role is self.role and any(
            t is role and s is signal for (_, s), t in TRANSITIONS.items()
        ):
            return self._end()
        transition(self.role, signal, role)
        self._manual(signal)
        return self._end()

    # ------------------------------------------------------------------ quiescence

    @property
    def quiescent(self) -> bool:
        """Idle: not due, no per-channel heartbeats (module docstring, "Quiescence")."""
        return self._quiescent

    def refresh(self, now: float, heard: Mapping[int, float]) -> None:
        """Node liveness: the shell calls it before every input (cheap: one lookup per
        peer). No outputs.

        Args:
            now: current time (seconds, the ``tick`` clock).
            heard: peer node id -> the last time (same clock) its liveness beat
                arrived; peers absent keep what this channel heard itself.

        A peer heard is counted as heard by this channel (its health: who a leader's
        check-quorum counts, who a leader-mode candidate needs, whether quorum mode
        may campaign), in every role: a quiescent peer sends no per-channel
        heartbeats, and an awake channel must not take it for dead. For a quiescent
        follower the beat of its leader L also stands in for L's heartbeats (the
        election timer and the pre-vote lease, ``_in_lease``): the shell guarantees
        that while it follows L quiescently, L's beats list this channel in this term
        (it wakes the channel with the time of the last listing as soon as they do
        not). An awake follower's election timer stays on per-channel heartbeats (a
        live node does not mean a live leader).
        """
        self._now = max(self._now, now)
        for p, peer in self._peers.items():
            at = heard.get(p)
            if at is not None and (peer.heard_at is None or at > peer.heard_at):
                peer.heard_at = min(at, self._now)
        lead = self.leader_id
        if self._quiescent and self.role is R and lead is not None and lead in heard:
            at = min(heard[lead], self._now)
            self._leader_heard_at = max(self._leader_heard_at, at)
            self._lease_at = max(self._lease_at, at)

    def wake(self, now: float, heard: Mapping[int, float]) -> list[Output]:
        """Leave quiescence (after :meth:`refresh` with ``heard``): a follower's
        election timer runs again from the last time its leader was heard (so a leader
        whose node fell silent a window ago is replaced at the next tick, as without
        quiescence); a leader heartbeats at its next tick (its followers wake on a
        heartbeat without ``quiesce``) and its check-quorum runs on the refreshed
        per-peer times. No-op when awake. Outputs: none today (the next tick acts)."""
        self._begin(now)
        self.refresh(now, heard)
        self._wake()
        return self._end()

    def _wake(self) -> None:
        if self._quiescent:
            self._quiescent = False
            self._next_hb_at = min(self._next_hb_at, self._now)

    def _step_quiescent(self, frm: int, msg: Message) -> list[Output]:
        """:meth:`step` on a quiescent coordinator (after the shell's ``refresh``).

        Votes are handled without waking, and wake only if they changed the term, the
        vote, the role or the leader: a refused pre-vote (the lease holds: the
        leader's beats list the channel) leaves the channel quiet, so a node cut off
        from the leader cannot keep the healthy ones awake. A heartbeat that says
        nothing new (:meth:`_says_nothing_new`) is noted without waking. Anything else
        (events, syncs, acks, a new term, tail or commit, our leader awake) wakes the
        channel first and is then handled exactly as when awake.
        """
        self._peers[frm].heard_at = self._now
        if isinstance(msg, VoteRequest | VoteResponse):
            before = (self.term, self.voted_for, self.role, self.leader_id)
            if msg.term > self.term:
                if isinstance(msg, VoteRequest) and msg.kind is VoteKind.VOTE and self._in_lease():
                    return self._end()  # etcd checkQuorum: a live leader is not deposed
                if not _keeps_term(msg):
                    self._adopt_term(msg.term)
            STEP_TABLE[(self.role, type(msg))](self, frm, msg)
            if (self.term, self.voted_for, self.role, self.leader_id) != before:
                self._wake()
            return self._end()
        if not self._says_nothing_new(frm, msg):
            self._wake()
            return self.step(frm, msg, self._now)
        STEP_TABLE[(self.role, type(msg))](self, frm, msg)
        return self._end()

    def _says_nothing_new(self, frm: int, msg: Message) -> bool:
        """A heartbeat a quiescent coordinator takes without waking: same term, tail,
        commit and epoch as ours, and either our leader's quiesce heartbeat again, or
        a follower's heartbeat: at a follower always (other followers do not concern
        it), at a leader only within one heartbeat of quiescing (a follower's last
        heartbeat crossing the quiesce heartbeat; later, a follower that heartbeats is
        awake and needs to hear us, so we wake and heartbeat)."""
        if type(msg) is not Heartbeat or msg.term != self.term:
            return False
        if (msg.tail_seq, msg.commit_seq, msg.epoch_term) != (self.tail, self.commit, self.term):
            return False
        if msg.role is L:
            return msg.quiesce and frm == self.leader_id
        return self.role is R or self._now - self._quiet_at < self.hb

    def _can_quiesce(self) -> bool:
        """Leader: idle and every healthy follower caught up (CockroachDB's
        ``shouldReplicaQuiesce``): commit = tail, no push held back, each healthy peer
        reported our term as its term and epoch, our tail as its tail and match, our
        commit as its commit; and a majority (us included) is healthy, in either ack
        mode (check-quorum would otherwise step down; a leader alone keeps
        heartbeating). A peer not heard for a window is left out (a dead follower
        does not keep its channels awake); when it is back its heartbeats say
        something new and wake the leader. A pinned node other than us that is
        healthy keeps the channel awake: it takes over on a heartbeat."""
        if not self.quiesce_enabled or self.commit != self.tail or self.push_due is not None:
            return False
        if not self._quorum_reachable():
            return False
        healthy = self._healthy()
        if self.pinned is not None and self.pinned != self.self_id and self.pinned in healthy:
            return False
        for p in healthy:
            peer, prog = self._peers[p], self._progress.get(p)
            if prog is None or prog.match != self.tail:
                return False
            if (peer.term, peer.epoch_term, peer.tail, peer.commit) != (
                self.term,
                self.term,
                self.tail,
                self.commit,
            ):
                return False
        return True

    def _follower_quiesce(self, frm: int, m: Heartbeat) -> None:
        """Follower: quiesce with a leader that quiesced, if in sync with it (its
        whole log, its commit = tail) and not the pinned node (which must stay awake
        to take over)."""
        if (
            m.quiesce
            and self.quiesce_enabled
            and self.role is R
            and self.leader_id == frm
            and self._in_sync()
            and self.commit == m.commit_seq == self.tail
            and self._outstanding is None
            and self.self_id != self.pinned
        ):
            self._quiescent, self._quiet_at = True, self._now
            self.metrics.replica_lag_seconds = 0.0

    # ------------------------------------------------------------------ plumbing

    def _begin(self, now: float) -> None:
        self._now = max(self._now, now)
        self._out = []
        if self.push_due is not None and self._now >= self.push_due:
            self.push_due = None  # its time has come: this input re-evaluates pushes

    def _end(self) -> list[Output]:
        out, self._out = self._out, []
        if self._dirty:
            self._dirty = False
            first = self._never_saved and any(type(o) in _LOG_CHANGES for o in out)
            out = _order_for_durability(out, SaveHardState(self.hard_state))
            if first:
                # the first save ever goes before the first log change too: term and
                # vote only (the log's records label its events), so "events on disk
                # but no hard state file" can only mean a lost file (LogCorrupt on open)
                first_hs = HardState(self.term, self.voted_for, recovering=self.amnesiac)
                out = [SaveHardState(first_hs), *out]
            self._never_saved = False
        m = self.metrics
        m.role, m.term, m.tail_seq, m.commit_seq = self.role, self.term, self.tail, self.commit
        m.quiescent = self._quiescent
        return out

    def _send(self, to: int, msg: Message) -> None:
        self._out.append(Send(to, msg))

    def _set_role(self, signal: TransitionSignal) -> None:
        old = self.role
        self.role = transition(old, signal)
        self._quiescent = False  # only a settled leader or follower is quiescent
        if self.role is L:
            self.metrics.leader_changes_total += 1
        elif self.role is C:
            self.metrics.elections_total += 1
        if self.role is not old:
            self._out.append(RoleChanged(old, self.role, self.term))

    def _set_epochs(self, epochs: tuple[Epoch, ...]) -> None:
        if epochs != self.epochs:
            self.epochs = epochs
            self._dirty = True

    def _adopt_term(self, term: int) -> None:
        self.term, self.voted_for, self.leader_id = term, None, None
        self._dirty = True
        self._outstanding = None
        if self.role in (L, C):
            self._set_role(Sig.HIGHER_TERM_SEEN)
            self._leader_heard_at = self._now

    def _manual(self, signal: TransitionSignal) -> None:
        if signal is Sig.CAPABILITY_SELECTED:
            self._bootstrap()
        elif signal is Sig.MISSED_HEARTBEATS and self.role is R:
            self._set_role(signal)
            self._start_campaign(VoteKind.FORCE, manual=True)
        elif signal is Sig.ELECTION_WON:
            if self.quorum_mode and not self._has_majority_grants():
                # quorum safety rests on the vote: a hand-made leader could commit over
                # a log that lacks committed events
                raise InvalidTransition(
                    "ack='quorum': ELECTION_WON needs a majority of granted votes"
                )
            self._become_leader()
        else:
            self._set_role(signal)
            if self.role is not R or self.leader_id == self.self_id:
                self.leader_id = None
            self._leader_heard_at = self._now
            self._bootstrapped = True

    # ------------------------------------------------------------------ log views

    def _epoch_term(self) -> int:
        return self.epochs[-1][0] if self.epochs else 0

    def _last_term(self) -> int:
        return term_at(self.epochs, self.tail - 1)

    def _own_key(self) -> tuple[int, int]:
        first = self._epoch_term() if self.quorum_mode else self._last_term()
        return first, self.tail

    def _peer_key(self, p: int) -> tuple[int, int]:
        peer = self._peers[p]
        return (peer.epoch_term if self.quorum_mode else peer.last_term), peer.tail

    def _healthy(self) -> set[int]:
        return {
            p
            for p, peer in self._peers.items()
            if peer.heard_at is not None and self._now - peer.heard_at < self.silence
        }

    def _quorum_reachable(self) -> bool:
        return len(self._healthy()) + 1 >= majority(len(self.members))

    def _may_campaign(self) -> bool:
        if self.amnesiac:
            return False
        return not self.quorum_mode or self._quorum_reachable()

    def _in_sync(self) -> bool:
        return (
            self.leader_id is not None
            and self.tail == self._leader_tail
            and self._epoch_term() == self.term
        )

    def _next_owned_term(self) -> int:
        """Smallest term above ``self.term`` and at least ``term_floor`` that this
        node owns (:func:`term_slot`)."""
        base = max(self.term + 1, self.term_floor)
        return base + ((self._slot - base) % TERM_SLOTS)

    # ------------------------------------------------------------------ ticks

    def _bootstrap(self) -> None:
        self._set_role(Sig.CAPABILITY_SELECTED)
        self._bootstrapped = True
        self._leader_heard_at = self._now
        self._next_hb_at = self._now

    def _tick_idle(self) -> None:
        if self.auto_bootstrap and not self._bootstrapped:
            self._bootstrap()
            self._tick_replica()

    def _tick_failed(self) -> None:
        """Failed: no timer runs (fail-stop)."""

    def _tick_replica(self) -> None:
        self._maybe_heartbeat()
        if self.leader_id is not None:
            self.metrics.replica_lag_seconds = self._now - self._leader_heard_at
            self.metrics.replica_lag_events = max(0, self._leader_tail - self.tail)
        if (
            self.leader_id is None
            and self.self_id == self.pinned
            and self._now - self._last_campaign_at >= self.silence
            and self._may_campaign()
        ):
            self._set_role(Sig.MISSED_HEARTBEATS)
            self._start_campaign(VoteKind.PRE)
        elif self._now - self._leader_heard_at >= self.silence + self._extra_wait:
            self._on_silence()
        else:
            self._maybe_request()

    def _tick_candidate(self) -> None:
        if self._now >= self._campaign.deadline:
            self._lose()

    def _tick_leader(self) -> None:
        quiesce = self._now >= self._next_hb_at and self._can_quiesce()
        if self._maybe_heartbeat(quiesce):
            for prog in self._progress.values():
                prog.inflight, prog.sent = 0, prog.match
            if quiesce:
                self._quiescent, self._quiet_at = True, self._now
                return
        if (
            self.quorum_mode
            and self._now - self._leader_since >= self.silence
            and not self._quorum_reachable()
        ):
            self._set_role(Sig.MISSED_HEARTBEATS)
            self.leader_id = None
            self._leader_heard_at = self._now

    def _maybe_heartbeat(self, quiesce: bool = False) -> bool:
        if self._now < self._next_hb_at:
            return False
        self._next_hb_at = self._now + self.hb
        hb = Heartbeat(
            self.term,
            self.role,
            self.tail,
            self.commit,
            self._epoch_term(),
            self._last_term(),
            quiesce,
            self.amnesiac,
        )
        for p in self._peers:
            self._send(p, hb)
        self.metrics.heartbeats_sent_total += len(self._peers)
        return True

    # ------------------------------------------------------------------ elections

    def _on_silence(self) -> None:
        """No leader for a window: campaign if this node is the best candidate it can
        see, or if it already deferred once (a better candidate that cannot campaign,
        e.g. one that reaches no majority, must not block the election forever);
        otherwise defer for a randomised window. Quorum mode never campaigns without
        hearing a majority."""
        self.leader_id = None
        if not self._may_campaign():
            self._leader_heard_at = self._now  # look again in a window
            self.metrics.elections_withheld_total += self.amnesiac
        elif self._winner() == self.self_id or self._deferred:
            self._set_role(Sig.MISSED_HEARTBEATS)
            self._start_campaign(VoteKind.PRE)
        else:
            self._deferred = True
            self._wait_randomly()

    def _wait_randomly(self) -> None:
        """Next election attempt after one more window plus a random part of another."""
        self._leader_heard_at = self._now
        if self._rng is not None:
            frac = self._rng.random()
        else:  # deterministic spread by node id (golden-ratio hashing)
            frac = (self.self_id * 0.6180339887498949 + self.term * 0.381966) % 1.0
        self._extra_wait = frac * self.silence

    def _in_lease(self) -> bool:
        """A live leader is known: this node leads, or heard its leader within the
        window (etcd-raft's ``inLease`` under checkQuorum)."""
        if self.role is L:
            return True
        return (
            self.role is R
            and self.leader_id is not None
            and self._now - self._lease_at < self.silence
        )

    def _winner(self) -> int:
        # an amnesiac member never campaigns: deferring to it only delays the election
        peers = self._peers
        keys = {p: self._peer_key(p) for p in self._healthy() if not peers[p].amnesiac}
        keys[self.self_id] = self._own_key()
        return max(keys, key=lambda p: (keys[p], p == self.pinned, -p))

    def _start_campaign(self, kind: VoteKind, manual: bool = False) -> None:
        """Ask every member for its vote in our next owned term.

        ``PRE`` (Raft thesis §9.6 pre-vote): ask without taking the term; voters that
        know a live leader refuse, so a node cut off from the leader alone cannot
        raise the term and depose it. Only when the pre-vote would win does the real
        ``VOTE`` follow. ``FORCE``: a vote that bypasses leases (manual transitions,
        the pinned leader's handoff, leader mode's challenge), etcd's transfer.
        """
        term = self._next_owned_term()
        if term > MAX_TERM:  # only a hostile term gets here; peers would reject ours
            self._last_campaign_at = self._now
            self._lose()
            return
        if kind is not VoteKind.PRE:
            self.term = term
            self.voted_for, self.leader_id = self.self_id, None
            self._dirty = True
            self._outstanding = None
        self.leader_id = None
        self._last_campaign_at = self._now
        self._campaign = _Campaign(
            {self.self_id},
            set(),
            self._healthy(),
            self._now + self.silence,
            manual,
            term,
            kind,
        )
        req = VoteRequest(term, self._epoch_term(), self._last_term(), self.tail, kind)
        for p in self._peers:
            self._send(p, req)
        self._check_votes()

    def _check_votes(self) -> None:
        c = self._campaign
        if self.quorum_mode:
            outcome = vote_outcome(len(c.granted), len(c.rejected), len(self.members))
        elif c.rejected:
            outcome = False
        else:
            outcome = True if c.required <= c.granted else None
        if outcome is False and c.manual:
            outcome = None
        if outcome is True and c.kind is VoteKind.PRE:
            self._start_campaign(VoteKind.VOTE)
        elif outcome is True:
            self._become_leader()
        elif outcome is False:
            self._lose()

    def _has_majority_grants(self) -> bool:
        return len(self._campaign.granted) >= majority(len(self.members))

    def _lose(self) -> None:
        self._set_role(Sig.ELECTION_LOST)
        self._wait_randomly()

    def _become_leader(self) -> None:
        self._set_role(Sig.ELECTION_WON)
        self.leader_id = self.self_id
        self._set_epochs(add_epoch(self.epochs, self.term, self.tail))
        self._progress = {p: _Progress() for p in self._peers}
        self._leader_since = self._now
        self._next_hb_at = self._now
        self._maybe_heartbeat()
        self._maybe_commit()

    def _vote(self, frm: int, m: VoteRequest) -> None:
        """Replica or candidate: grant once per term to a log at least as up to date
        (an amnesiac voter only as :meth:`_amnesiac_may_grant` allows).

        A pre-vote changes nothing here (no term, no vote recorded); it is granted iff
        a real vote could be: a higher term, a log at least as up to date, and no live
        leader known (:meth:`_in_lease`)."""
        theirs = ((m.epoch_term if self.quorum_mode else m.last_term), m.tail_seq)
        # leader mode: the vote protects no acknowledgement (only the leader's log
        # counts), and refusing it would stop a lone survivor from leading
        lost = self.amnesiac and self.quorum_mode and not self._amnesiac_may_grant(theirs)
        self.metrics.votes_withheld_total += lost
        if m.kind is VoteKind.PRE:
            ok = m.term > self.term and not self._in_lease() and theirs >= self._own_key()
            ok = ok and not lost
            self._send(frm, VoteResponse(m.term if ok else self.term, ok, True))
            return
        if m.term < self.term:
            self._send(frm, VoteResponse(self.term, False))
            return
        ok = self.voted_for in (None, frm) and theirs >= self._own_key() and not lost
        if ok:
            self.voted_for = frm
            self._dirty = True
            self._leader_heard_at = self._now
        self._send(frm, VoteResponse(self.term, ok))

    def _leader_vote(self, frm: int, m: VoteRequest) -> None:
        """Leader: refuse (a higher real or forced term has already made us a replica
        before dispatch; a pre-vote never does)."""
        self._send(frm, VoteResponse(self.term, False, m.kind is VoteKind.PRE))

    def _candidate_vote_response(self, frm: int, m: VoteResponse) -> None:
        c = self._campaign
        if m.pre != (c.kind is VoteKind.PRE) or (m.granted and m.term != c.term):
            return  # an answer to another round
        if not m.granted and m.term != c.term and not m.pre:
            return
        (c.granted if m.granted else c.rejected).add(frm)
        self._check_votes()

    # ------------------------------------------------------------------ follower side

    def _note_heartbeat(self, frm: int, m: Heartbeat) -> None:
        """Every role that takes input: remember the sender's log position."""
        peer = self._peers[frm]
        peer.epoch_term, peer.last_term, peer.tail = m.epoch_term, m.last_term, m.tail_seq
        peer.term, peer.commit, peer.amnesiac = m.term, m.commit_seq, m.amnesiac
        self.metrics.heartbeats_received_total += 1

    def _replica_heartbeat(self, frm: int, m: Heartbeat) -> None:
        self._note_heartbeat(frm, m)
        if m.term < self.term or m.role is not L:
            return
        self._follow(frm, m.tail_seq)
        self.metrics.replica_lag_seconds = 0.0
        self.metrics.replica_lag_events = max(0, m.tail_seq - self.tail)
        self._learn_commit(m.commit_seq)
        self._maybe_challenge(m)
        self._maybe_request()
        self._follower_quiesce(frm, m)

    def _candidate_heartbeat(self, frm: int, m: Heartbeat) -> None:
        """A real candidate owns its fresh term: no leader shares it. A pre-candidate
        kept its term: the leader of that term is alive after all, so it stands down
        and follows (etcd: a PreCandidate that hears the leader becomes a follower)."""
        if self._campaign.kind is VoteKind.PRE and m.role is L and m.term == self.term:
            self._set_role(Sig.ELECTION_LOST)
            self._replica_heartbeat(frm, m)
        else:
            self._note_heartbeat(frm, m)

    def _leader_heartbeat(self, frm: int, m: Heartbeat) -> None:
        """A replica's heartbeat tells its tail: a follower of our epoch is matched."""
        self._note_heartbeat(frm, m)
        if m.term == self.term and m.epoch_term == self.term:
            self._record_match(frm, m.tail_seq, acked=False)

    def _follow(self, leader: int, leader_tail: int) -> None:
        if self.leader_id != leader:
            self.leader_id, self._leader_tail = leader, 0
        self._leader_heard_at = self._lease_at = self._now
        self._extra_wait, self._deferred = 0.0, False
        self._leader_tail = max(self._leader_tail, leader_tail)

    def _learn_commit(self, commit: int) -> None:
        if self._epoch_term() != self.term or self.leader_id is None:
            return
        new = min(commit, self.tail)
        if new > self.commit:
            self.commit = new
            self._out.append(CommitAdvanced(new))

    def _maybe_challenge(self, m: Heartbeat) -> None:
        if self._now - self._last_campaign_at < self.silence or self.amnesiac:
            return
        challenge = (
            not self.quorum_mode
            and self._epoch_term() != self.term
            and (self._last_term(), self.tail) > (m.last_term, m.tail_seq)
        )
        handoff = self.self_id == self.pinned and self._in_sync()
        if challenge or handoff:
            self._set_role(Sig.MISSED_HEARTBEATS)
            self._start_campaign(VoteKind.FORCE)

    def _maybe_request(self) -> None:
        if self.role is not R or self.leader_id is None or self._in_sync():
            return
        if self._outstanding is not None and self._now - self._outstanding[1] < self.hb:
            return
        if self._now < self._backoff_until:
            return
        rid, self._next_rid = self._next_rid, (self._next_rid + 1) & ((1 << 64) - 1) or 1
        self._send(
            self.leader_id,
            SyncRequest(self.term, self.tail, self._last_term(), self.config.sync_chunk_bytes, rid),
        )
        self._outstanding = (rid, self._now)
        self.metrics.sync_requests_total += 1

    def _replica_sync_response(self, frm: int, m: SyncResponse) -> None:
        if m.term != self.term:
            return
        self._follow(frm, m.first_seq + len(m.payloads))
        if self._outstanding is not None and self._outstanding[0] == m.request_id:
            self._outstanding = None
        self._apply(frm, m)
        self._learn_commit(m.commit_seq)
        self._maybe_request()

    def _apply(self, frm: int, m: SyncResponse) -> None:
        first, end = m.first_seq, m.first_seq + len(m.payloads)
        if first > self.tail or term_at(self.epochs, first - 1) != m.prev_term:
            return
        conflict = first_conflict(self.epochs, m.epochs, first, min(self.tail, end))
        if conflict is not None and not self._truncate(conflict):
            return
        if self.tail > end:
            return
        epochs = tuple(e for e in self.epochs if e[1] < first)
        for t, s in m.epochs:
            if s >= first:
                epochs = add_epoch(epochs, t, s)
        for a, b, term in term_runs(epochs, self.tail, end):
            self._out.append(Apply(a, m.payloads[a - first : b - first], term))
        self.tail = end
        self._set_epochs(epochs)
        if self._epoch_term() == self.term:
            self._send(frm, Ack(self.term, self.tail))

    def _reset_log(self, head: int, prev_term: int) -> None:
        """Restart the log at ``head`` (see :class:`ResetLog`); counted as a gap."""
        self.metrics.log_gaps_total += 1
        self.metrics.gap_events_total += head - self.tail
        self._out.append(ResetLog(head, prev_term))
        self.tail = head
        self._set_epochs(((prev_term, 0),) if prev_term else ())

    def _truncate(self, seq: int) -> bool:
        """Drop events >= ``seq``; refuses (False) to cut committed events in quorum mode."""
        removed = self.tail - seq
        if removed <= 0:
            return True
        if self.quorum_mode and seq < self.commit:
            return False  # a stale message: committed events are never cut
        self._out.append(Truncate(seq))
        self.metrics.truncated_events_total += removed
        self.tail = seq
        self._set_epochs(tuple(e for e in self.epochs if e[1] < seq))
        if self.commit > seq:
            self.commit = seq
        return True

    def _replica_nack(self, frm: int, m: Nack) -> None:
        if m.term < self.term:
            return
        current = self._outstanding is not None and self._outstanding[0] == m.request_id
        if current:
            self._outstanding = None
        if m.reason is NackReason.BACKPRESSURE:
            self._backoff_until = self._now + self.hb / 2
        elif m.reason is NackReason.DIVERGED and current and m.from_seq == self.tail:
            self._truncate(min(m.epoch_end, own_end(self.epochs, m.epoch_term, self.tail)))
            self._maybe_request()
        elif m.reason is NackReason.BAD_RANGE and current and m.from_seq == self.tail:
            # behind the leader's retained head; every retry path backs off (a log that
            # cannot restart would otherwise ask again at network speed)
            self._backoff_until = self._now + self.hb
            if m.epoch_end > self.tail:
                self._reset_log(m.epoch_end, m.epoch_term)
        # NOT_LEADER from the leader we follow in this very term is stale (sent while it
        # was still a candidate): a leader only stops leading by moving to a higher
        # term, which step() has already adopted, clearing leader_id

    # ------------------------------------------------------------------ leader side

    def _refuse_sync(self, frm: int, m: SyncRequest) -> None:
        """Replica or candidate: only a leader serves."""
        self._send(frm, Nack(self.term, m.request_id, NackReason.NOT_LEADER, m.from_seq))

    def _leader_sync_request(self, frm: int, m: SyncRequest) -> None:
        if m.term != self.term:
            self._refuse_sync(frm, m)
            return
        if m.from_seq > self.tail or term_at(self.epochs, m.from_seq - 1) != m.last_term:
            t, end = epoch_end(self.epochs, m.last_term, self.tail)
            self._send(frm, Nack(self.term, m.request_id, NackReason.DIVERGED, m.from_seq, t, end))
            return
        prog = self._progress.get(frm)
        if prog is not None and m.request_id in (prog.stream_rid, prog.stream_prev):  # a credit
            if prog.stream_rid == m.request_id and prog.stream_open:  # not a stale one
                self._stream(frm, prog, min(m.from_seq, prog.stream_next))
            return  # a late credit of a stream that ended: nothing to answer
        if m.from_seq == self.tail:
            self._respond(frm, m.request_id, m.from_seq, ())
        else:
            max_bytes = min(m.max_bytes, self.config.sync_chunk_bytes)
            if prog is not None:  # a new request replaces the stream of an older one
                prog.stream_prev = prog.stream_rid
                prog.stream_rid, prog.stream_open, prog.stream_queued = m.request_id, True, True
                prog.stream_next, prog.stream_max, prog.stream_out = m.from_seq, max_bytes, []
            self._out.append(ServeSync(frm, m.from_seq, max_bytes, m.request_id, 1))

    def serve_records(
        self, req: ServeSync, count: int, records: bytes, payload_bytes: int, now: float
    ) -> list[Output]:
        """Answer a :class:`ServeSync` for a request with the log's own batch records
        (``count`` events from ``req.from_seq``, ``payload_bytes`` of payloads) as one
        :class:`SyncRecords` (issue 15 §5: catch-up without an object per event). The
        shell only offers whole records within the leader's tail; budget and refusals
        as :meth:`serve`.

        Streams (``req.burst``, see :data:`SYNC_BURST_CHUNKS`): a chunk of an open
        stream that ends below the tail says ``more=True``, and the next chunk (from
        ``end``) is queued at once while the window has room, else when a credit or
        an Ack frees it (:meth:`_stream`); the shell runs it next. A chunk at the tail
        ends the stream. Every chunk is charged to the budget: one refused ends the
        stream with a BACKPRESSURE Nack (the replica backs off as for a single chunk)."""
        self._begin(now)
        end = req.from_seq + count
        prog = self._progress.get(req.to)
        stream = False
        if prog is not None and req.burst and prog.stream_rid == req.request_id:
            stream, prog.stream_open = prog.stream_open, False  # until this chunk says more
            prog.stream_queued = False
        if self.role is L and prog is not None and req.request_id and end <= self.tail:
            cost = RESPONSE_OVERHEAD + payload_bytes + EVENT_OVERHEAD * count
            if not self.budget.try_consume(cost, self._now):
                self.metrics.under_capacity_total += 1
                self._send(
                    req.to, Nack(self.term, req.request_id, NackReason.BACKPRESSURE, req.from_seq)
                )
            else:
                self.metrics.sync_bytes_total += cost
                first = req.from_seq
                more = stream and count > 0 and end < self.tail
                msg = SyncRecords(
                    self.term,
                    req.request_id,
                    first,
                    term_at(self.epochs, first - 1),
                    self.commit,
                    overlapping(self.epochs, first, end),
                    count,
                    records,
                    more,
                )
                self._send(req.to, msg)
                if prog is not None and more:
                    prog.burst_at = self._now
                    prog.stream_open, prog.stream_next = True, end
                    prog.stream_out.append((end, len(records)))
                    self._stream(req.to, prog, prog.match)
        elif req.request_id:
            self._send(req.to, Nack(self.term, req.request_id, NackReason.NOT_LEADER, req.from_seq))
        return self._end()

    def _stream(self, to: int, prog: _Progress, applied: int) -> None:
        """The follower ``to`` holds the events below ``applied`` (a credit's or an
        Ack's tail): drop its chunks ending there from the window, then queue the next
        chunk of its open stream if the window has room (fewer than
        :data:`SYNC_BURST_CHUNKS` x ``stream_max`` record bytes sent and not applied)."""
        out = prog.stream_out
        while out and out[0][0] <= applied:
            out.pop(0)
        if not prog.stream_open or prog.stream_queued or self.role is not L:
            return
        nxt = prog.stream_next
        if nxt >= self.tail or sum(b for _, b in out) >= SYNC_BURST_CHUNKS * prog.stream_max:
            return
        prog.stream_queued = True
        self._out.append(ServeSync(to, nxt, prog.stream_max, prog.stream_rid, 1))

    def _replica_sync_records(self, frm: int, m: SyncRecords) -> None:
        """Raw records continue the log only where it ends (no partial records are cut
        here): a chunk that starts elsewhere, or after another term than ours, is left
        for the next request (from our tail) to fetch again.

        A chunk of a stream (``more=True``) keeps our request outstanding: the leader
        sends the next chunks unasked. Each applied one restarts the retry timer and
        is answered with a credit (a SyncRequest from our new tail with the request's
        id; see SYNC_BURST_CHUNKS). A chunk of it that starts past our tail (one
        before it was lost; it and the rest are gaps, ignored) ends the request, and
        the next one, from our tail, goes at once; the last chunk (``more=False``)
        ends the request too. A lost last chunk is asked for again one heartbeat
        after the last progress."""
        if m.term != self.term:
            return
        first, end = m.first_seq, m.first_seq + m.count
        self._follow(frm, end)
        current = self._outstanding is not None and self._outstanding[0] == m.request_id
        if current and (not m.more or first > self.tail):
            self._outstanding = None
        if m.count and first == self.tail and term_at(self.epochs, first - 1) == m.prev_term:
            if current and m.more:
                self._outstanding = (m.request_id, self._now)
            epochs = tuple(e for e in self.epochs if e[1] < first)
            for t, st in m.epochs:
                if st >= first:
                    epochs = add_epoch(epochs, t, st)
            runs = tuple(term_runs(epochs, first, end))
            self._out.append(ApplyRecords(first, m.count, m.records, runs))
            self.tail = end
            self._set_epochs(epochs)
            if self._epoch_term() == self.term:
                self._send(frm, Ack(self.term, self.tail))
            if current and m.more:  # a credit: not held for durability (no claim)
                credit = SyncRequest(
                    self.term, end, self._last_term(), self.config.sync_chunk_bytes, m.request_id
                )
                self._send(frm, credit)
        self._learn_commit(m.commit_seq)
        self._maybe_request()

    def _respond(
        self, to: int, rid: int, first: int, payloads: tuple[bytes, ...] | PackedPayloads
    ) -> None:
        prog = self._progress[to]
        cost = RESPONSE_OVERHEAD + payload_size(payloads) + EVENT_OVERHEAD * len(payloads)
        if not self.budget.try_consume(cost, self._now):
            self.metrics.under_capacity_total += 1
            if rid:
                self._send(to, Nack(self.term, rid, NackReason.BACKPRESSURE, first))
            else:
                prog.inflight = max(0, prog.inflight - 1)
                prog.sent = prog.match
            return
        self.metrics.sync_bytes_total += cost
        end = first + len(payloads)
        if not rid:
            prog.sent = end
        self._send(
            to,
            SyncResponse(
                self.term,
                rid,
                first,
                term_at(self.epochs, first - 1),
                self.commit,
                overlapping(self.epochs, first, end),
                payloads,
            ),
        )

    def _maybe_push(self, p: int) -> None:
        """Push new events to a streaming follower, unless it got a raw burst with more
        to come within the last heartbeat: it is far behind and catching up by
        requests, and per-event pushes would only duplicate the bursts (measured:
        about half of a catch-up's data came twice). Once its bursts reach our tail
        (``more=False``), pushes resume a heartbeat later."""
        prog = self._progress[p]
        if self._now - prog.burst_at < self.hb:
            return
        if prog.streaming and prog.inflight < self.max_inflight and prog.sent < self.tail:
            due = prog.last_push + self.min_push_gap
            small = self.tail - prog.sent < self.push_batch_events
            if small and self._now < due:  # under load, let events pile up a little
                self.push_due = due if self.push_due is None else min(self.push_due, due)
                return
            self._out.append(ServeSync(p, prog.sent, self.push_bytes, 0))
            prog.inflight += 1
            prog.sent = self.tail
            prog.last_push = self._now

    def _leader_ack(self, frm: int, m: Ack) -> None:
        if m.term == self.term:
            self._record_match(frm, m.tail_seq, acked=True)
            prog = self._progress.get(frm)
            if prog is not None and prog.stream_open:
                self._stream(frm, prog, prog.match)

    def _record_match(self, p: int, tail: int, acked: bool) -> None:
        prog = self._progress[p]
        prog.match = max(prog.match, min(tail, self.tail))
        prog.streaming = True
        if acked:
            prog.inflight = max(0, prog.inflight - 1)
        prog.sent = max(prog.sent, prog.match)
        self._maybe_commit()
        self._maybe_push(p)

    def _maybe_commit(self) -> None:
        own = self.tail if self.durable is None else min(self.tail, self.durable)
        c = committed_seq([own, *(prog.match for prog in self._progress.values())])
        if c > self.commit:
            self.commit = c
            self._out.append(CommitAdvanced(c))

    # ------------------------------------------------------------------ dispatch

    def _drop(self, frm: int, msg: Message) -> None:
        """This role ignores this message type (an explicit row of :data:`STEP_TABLE`)."""


def _keeps_term(msg: Message) -> bool:
    """Messages whose higher term is not adopted: a pre-vote request (it only asks
    about a term) and a granted pre-vote answer (it echoes the asked term)."""
    if isinstance(msg, VoteRequest):
        return msg.kind is VoteKind.PRE
    return isinstance(msg, VoteResponse) and msg.pre and msg.granted


Handler = Callable[[ReplicationCoordinator, int, Any], None]
_RC = ReplicationCoordinator
_DROP: Handler = _RC._drop

STEP_TABLE: dict[tuple[ReplicaRole, type], Handler] = {
    **{
        (role, t): _DROP
        for role in (IDLE, FAILED)
        for t in (Heartbeat, SyncRequest, SyncResponse, Nack, VoteRequest, VoteResponse, Ack)
    },
    # stepFollower
    (R, Heartbeat): _RC._replica_heartbeat,
    (R, SyncRequest): _RC._refuse_sync,
    (R, SyncResponse): _RC._replica_sync_response,
    (R, Nack): _RC._replica_nack,
    (R, VoteRequest): _RC._vote,
    (R, VoteResponse): _DROP,  # a late answer to a campaign already over
    (R, Ack): _DROP,  # a late ack to a leadership already over
    # stepCandidate
    (C, Heartbeat): _RC._candidate_heartbeat,
    (C, SyncRequest): _RC._refuse_sync,
    (C, SyncResponse): _DROP,
    (C, Nack): _DROP,
    (C, VoteRequest): _RC._vote,  # refused unless from ourselves: we voted for us
    (C, VoteResponse): _RC._candidate_vote_response,
    (C, Ack): _DROP,
    # stepLeader
    (L, Heartbeat): _RC._leader_heartbeat,
    (L, SyncRequest): _RC._leader_sync_request,
    (L, SyncResponse): _DROP,  # only a leader sends them, and terms are owned
    (L, Nack): _DROP,
    (L, VoteRequest): _RC._leader_vote,
    (L, VoteResponse): _DROP,  # late answers after winning
    (L, Ack): _RC._leader_ack,
}
"""(role after the term is settled, message type) -> handler: etcd-raft's stepLeader /
stepCandidate / stepFollower as one printable table. Every pair is present; ``_drop``
names an explicit ignore."""

TICK_TABLE: dict[ReplicaRole, Callable[[ReplicationCoordinator], None]] = {
    IDLE: _RC._tick_idle,
    R: _RC._tick_replica,
    C: _RC._tick_candidate,
    L: _RC._tick_leader,
    FAILED: _RC._tick_failed,
}
"""role -> what a timer tick does in it."""


def format_step_table() -> str:
    """:data:`STEP_TABLE` as aligned text, one row per (role, message type)."""
    return "\n".join(
        f"{role.name:<9} {t.__name__:<12} -> {h.__name__}" for (role, t), h in STEP_TABLE.items()
    )


# raw catch-up (issue 15 §5): SyncRecords answers requests; only a replica applies them
STEP_TABLE.update({(role, SyncRecords): _DROP for role in ReplicaRole})
STEP_TABLE[(R, SyncRecords)] = _RC._replica_sync_records

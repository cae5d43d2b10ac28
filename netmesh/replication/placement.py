"""Replica placement: which nodes hold a channel (pure: no IO, no clock).

Upstream net-mesh (later versions, ``replication_placement.rs``) settles the replica
set of a ``Standard`` or ``ColocationStrict`` channel without any coordination: every
node computes it from data every node sees the same way, the nodes' **capability
announcements**. This module is that computation and the announcement format; the
shell that sends, receives and acts on them is ``Redex`` (``netmesh.replication.
registry``).

Announcements
    A node announces the channels it has open with a non-pinned placement (upstream:
    the ``replica-candidate:<channel>`` tag it carries while the channel is open),
    the chains it holds (upstream ``MeshNode::announce_chain``) and free-form
    placement metadata (``str -> str``). Each announcement replaces the sender's
    previous one; ``(incarnation, version)`` orders them (the incarnation is the
    sender's start time, so a restarted node's announcements win over its earlier
    life's). They travel on the MeshNode stream :data:`CAPABILITY_STREAM`; the
    transport authenticates the sender, and :func:`decode` refuses an announcement
    that names another node.

Resolution (:func:`resolve`)
    * ``pinned(ids)``: the list, whatever was announced;
    * ``standard()``: candidates are the nodes that announced the channel; the set
      is the ``factor`` lowest node ids among them (upstream ranks by a placement
      score and breaks ties by the lower node id; with no hints every score is
      equal, so it is the lowest ids);
    * ``colocation_strict(key)``: candidates must also have announced chain ``key``;
      a node without it is never selected, even when fewer than ``factor`` remain.

    The set comes back sorted, so two views compare equal exactly when they name the
    same nodes; the same announcements give the same set on every node.

Joining (:class:`ChannelPlacement`)
    A node that resolves a set holding fewer than ``factor`` nodes may simply not
    have heard the other candidates yet; joining at once would make it the leader of
    a set of one beside another such leader elsewhere. So a short set must stay
    unchanged for a settle window (upstream: two announce windows) before the node
    joins it; a full set is joined at once, and a node that is no longer in the set
    leaves at once (it goes Idle and stores nothing more).

Rate limit (:class:`AnnounceLimiter`)
    A node broadcasts at most one announcement per ``min_announce_interval``
    (``MeshNodeConfig``, default 10 s, upstream's ``with_min_announce_interval``);
    changes inside the window update the local view at once and go out together at
    the window's end (upstream's trailing flush), so the last state is never lost.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import msgpack

from netmesh.config import MAX_REPLICATION_FACTOR
from netmesh.errors import DecodeError, LogCorrupt

if TYPE_CHECKING:
    from netmesh.config import PlacementStrategy

#: MeshNode stream of capability announcements
CAPABILITY_STREAM = "redex-cap"
#: 2: members (the set each channel runs with); 3: ready; 4: steps (leader orders);
#: 5: forms (Paxos votes on a quorum channel's first set)
WIRE_VERSION = 5
MAX_U64 = (1 << 64) - 1
#: the most channels, chains or metadata entries one announcement may carry
MAX_ENTRIES = 65536
#: a short set must stay unchanged this many announce windows before a node joins it
SETTLE_WINDOWS = 2.0


# ------------------------------------------------------------------ announcements


@dataclass(frozen=True)
class Announcement:
    """What one node tells the others about itself.

    node_id: the sender (u64). incarnation: the sender's start stamp (u64, larger
    for a later life). version: grows by one per change within an incarnation.
    channels: names of the channels it has open with standard or colocation_strict
    placement (its candidacy). chains: the chains it holds (colocation keys).
    metadata: free-form placement metadata, sorted ``(key, value)`` pairs.
    members: for each channel the sender runs, the member set it runs it with
        (sorted ``(channel, sorted node ids)`` pairs); quorum channels change their
        sets one node at a time by these (:func:`quorum_change`).
    ready: channels the sender caught up with as a learner and waits to be added to.
    steps: for each quorum channel whose set the sender ordered to change while it led
        it, that order (sorted ``(channel, Step)`` pairs; :func:`quorum_change`).
    versions: for each quorum channel the sender runs, the version of its set (sorted
        ``(channel, version)`` pairs; :func:`quorum_change`).
    forms: for each quorum channel on a node daemon, the sender's :class:`FormVote`
        (sorted ``(channel, vote)`` pairs; :func:`form_vote`).
    """

    node_id: int
    incarnation: int = 0
    version: int = 0
    channels: frozenset[str] = frozenset()
    chains: frozenset[str] = frozenset()
    metadata: tuple[tuple[str, str], ...] = ()
    members: tuple[tuple[str, tuple[int, ...]], ...] = ()
    ready: frozenset[str] = frozenset()
    steps: tuple[tuple[str, Step], ...] = ()
    #: quorum channels: the version of the set the sender runs (absent: 0)
    versions: tuple[tuple[str, int], ...] = ()
    #: quorum channels on node daemons: the sender's part in choosing the first set
    forms: tuple[tuple[str, FormVote], ...] = ()

    def members_of(self, channel: str) -> tuple[int, ...] | None:
        """The member set the sender runs ``channel`` with (None: it runs none)."""
        for name, ids in self.members:
            if name == channel:
                return ids
        return None

    def version_of(self, channel: str) -> int:
        """The version of the set the sender runs ``channel`` with (0: none given)."""
        for name, v in self.versions:
            if name == channel:
                return v
        return 0

    def form_of(self, channel: str) -> FormVote | None:
        """The sender's :class:`FormVote` for ``channel`` (None: none announced)."""
        for name, v in self.forms:
            if name == channel:
                return v
        return None

    def step_of(self, channel: str) -> Step | None:
        """The step the sender ordered for ``channel`` as its leader (None: none)."""
        for name, step in self.steps:
            if name == channel:
                return step
        return None

    @property
    def order(self) -> tuple[int, int]:
        """``(incarnation, version)``: a larger order replaces a smaller one."""
        return (self.incarnation, self.version)

    def newer_than(self, other: Announcement | None) -> bool:
        """True if this announcement replaces ``other`` (None: nothing known)."""
        return other is None or self.order > other.order

    @property
    def empty(self) -> bool:
        """Announces nothing (no candidacy, no chain, no metadata)."""
        return not (
            self.channels
            or self.chains
            or self.metadata
            or self.members
            or self.ready
            or self.steps
            or self.forms
        )

    def metadata_dict(self) -> dict[str, str]:
        return dict(self.metadata)


def sorted_metadata(metadata: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``metadata`` as the canonical sorted pairs an :class:`Announcement` holds."""
    return tuple(sorted((str(k), str(v)) for k, v in metadata.items()))


def sorted_members(members: Mapping[str, Iterable[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``channel -> member ids`` as the canonical pairs an :class:`Announcement` holds."""
    return tuple(sorted((str(k), tuple(sorted(set(v)))) for k, v in members.items()))


def encode(a: Announcement) -> bytes:
    """One msgpack array ``[version, node_id, incarnation, version, channels, chains,
    metadata, members, ready, steps, forms]`` (lists sorted, so equal announcements
    encode equally); a member set is ``[channel, ids, version]``, a step ``[channel,
    source ids, term, member ids, source version]``, a form vote ``[channel,
    [promised, accepted, value, ballot, proposal]]`` (ballots ``[round, node id]``)."""
    body = [
        WIRE_VERSION,
        a.node_id,
        a.incarnation,
        a.version,
        sorted(a.channels),
        sorted(a.chains),
        [list(kv) for kv in a.metadata],
        [[name, list(ids), a.version_of(name)] for name, ids in a.members],
        sorted(a.ready),
        [[name, list(st.source), st.term, list(st.members), st.version] for name, st in a.steps],
        [[name, v.to_wire()] for name, v in a.forms],
    ]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _u64(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_U64:
        raise DecodeError(f"announcement {what} is not a u64")
    return v


def _strings(v: Any, what: str) -> frozenset[str]:
    if not isinstance(v, list) or len(v) > MAX_ENTRIES:
        raise DecodeError(f"announcement {what} is not a list of strings")
    if not all(type(s) is str for s in v):
        raise DecodeError(f"announcement {what} holds a non-string")
    return frozenset(v)


def decode(data: bytes, from_id: int | None = None) -> Announcement:
    """Parse an announcement; ``from_id``: the authenticated sender, which must be
    the node the announcement names.

    Raises:
        DecodeError: garbage, an unknown version, a wrong shape or type, or a node id
            other than ``from_id``.
    """
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack announcement: {type(exc).__name__}") from None
    if not isinstance(body, list) or len(body) != 11:
        raise DecodeError("announcement is not an 11-element array")
    if body[0] != WIRE_VERSION:
        raise DecodeError(f"unknown announcement version {body[0]!r}")
    node_id = _u64(body[1], "node_id")
    if from_id is not None and node_id != from_id:
        raise DecodeError(f"announcement names node {node_id:#x}, sent by {from_id:#x}")
    meta = body[6]
    if not isinstance(meta, list) or len(meta) > MAX_ENTRIES:
        raise DecodeError("announcement metadata is not a list of pairs")
    pairs: list[tuple[str, str]] = []
    for kv in meta:
        if not (isinstance(kv, list) and len(kv) == 2 and all(type(x) is str for x in kv)):
            raise DecodeError("announcement metadata holds a non-(str, str) pair")
        pairs.append((kv[0], kv[1]))
    runs = body[7]
    if not isinstance(runs, list) or len(runs) > MAX_ENTRIES:
        raise DecodeError("announcement members is not a list")
    members: dict[str, tuple[int, ...]] = {}
    versions: dict[str, int] = {}
    for run in runs:
        if not (isinstance(run, list) and len(run) == 3 and type(run[0]) is str):
            raise DecodeError("announcement members holds a non-(str, ids, version) entry")
        members[run[0]] = _ids(run[1])
        if _u64(run[2], "set version"):
            versions[run[0]] = run[2]
    orders = body[9]
    if not isinstance(orders, list) or len(orders) > MAX_ENTRIES:
        raise DecodeError("announcement steps is not a list")
    steps: dict[str, Step] = {}
    for o in orders:
        if not (isinstance(o, list) and len(o) == 5 and type(o[0]) is str):
            raise DecodeError("announcement steps holds a non-(str, ids, term, ids, version)")
        steps[o[0]] = Step(
            _ids(o[1]), _u64(o[2], "step term"), _ids(o[3]), _u64(o[4], "step version")
        )
    votes = body[10]
    if not isinstance(votes, list) or len(votes) > MAX_ENTRIES:
        raise DecodeError("announcement forms is not a list")
    forms: dict[str, FormVote] = {}
    for fv in votes:
        if not (isinstance(fv, list) and len(fv) == 2 and type(fv[0]) is str):
            raise DecodeError("announcement forms holds a non-(str, vote) entry")
        forms[fv[0]] = FormVote.from_wire(fv[1])
    return Announcement(
        node_id=node_id,
        incarnation=_u64(body[2], "incarnation"),
        version=_u64(body[3], "version"),
        channels=_strings(body[4], "channels"),
        chains=_strings(body[5], "chains"),
        metadata=tuple(sorted(dict(pairs).items())),
        members=tuple(sorted(members.items())),
        ready=_strings(body[8], "ready"),
        steps=tuple(sorted(steps.items())),
        versions=tuple(sorted(versions.items())),
        forms=tuple(sorted(forms.items())),
    )


def _ids(ids: Any) -> tuple[int, ...]:
    if not isinstance(ids, list) or len(ids) > MAX_REPLICATION_FACTOR:
        raise DecodeError("announcement member set is not a list of at most 16 ids")
    return tuple(sorted({_u64(i, "member id") for i in ids}))


# ------------------------------------------------------------------ resolution


def eligible(strategy: PlacementStrategy, channel: str, a: Announcement) -> bool:
    """Whether the node that sent ``a`` is a candidate for ``channel``: it announced
    the channel and, for ``colocation_strict(key)``, the chain ``key``."""
    if channel not in a.channels:
        return False
    if strategy.kind == "colocation_strict":
        return strategy.key is not None and strategy.key in a.chains
    return True


def resolve(
    strategy: PlacementStrategy,
    factor: int,
    channel: str,
    announcements: Iterable[Announcement],
) -> tuple[int, ...]:
    """The replica set of ``channel`` (sorted node ids) given every node's latest
    announcement (the local node's own included). See the module docstring.

    ``factor`` is capped to 1..16 (``MAX_REPLICATION_FACTOR``). Pinned placement
    ignores ``factor`` and the announcements.
    """
    if strategy.kind == "pinned":
        return tuple(sorted(set(strategy.nodes)))
    factor = min(max(1, factor), MAX_REPLICATION_FACTOR)
    candidates = sorted({a.node_id for a in announcements if eligible(strategy, channel, a)})
    return tuple(candidates[:factor])


def resolve_ids(
    strategy: PlacementStrategy,
    factor: int,
    opened: Iterable[int],
    chains: Mapping[int, Iterable[str]] | None = None,
) -> tuple[int, ...]:
    """:func:`resolve` from plain sets: ``opened`` the node ids that opened the
    channel, ``chains`` node id -> chains it holds (for ``colocation_strict``)."""
    chains = chains or {}
    anns = [
        Announcement(n, channels=frozenset({"c"}), chains=frozenset(chains.get(n, ())))
        for n in set(opened)
    ]
    return resolve(strategy, factor, "c", anns)


# ------------------------------------------------------------------ joining


@dataclass(frozen=True)
class Change:
    """Apply now: run the channel with ``members`` (None: leave, stay Idle).
    ``version``: quorum channels, the version of that set (:func:`quorum_change`);
    not compared."""

    members: tuple[int, ...] | None
    version: int = field(default=0, compare=False)


@dataclass
class ChannelPlacement:
    """When one node acts on the sets it resolves for one channel.

    ``update(resolved, now)`` returns a :class:`Change` to apply now (and records it
    as applied), a float (re-call ``update`` at that time: a short set is settling)
    or None (nothing to do). Times are seconds on any monotonic clock.

    Args:
        self_id: this node.
        factor: the channel's replication factor.
        settle_window: how long a short set must stay unchanged before this node
            joins it (:data:`SETTLE_WINDOWS` x ``min_announce_interval``).
    """

    self_id: int
    factor: int
    settle_window: float
    #: the members the channel runs with here (None: Idle, not a member)
    applied: tuple[int, ...] | None = None
    #: a set smaller than this is never formed (node daemons: a majority of
    #: ``factor``, so a lone restarted node does not form a set of one)
    min_form: int = 1
    _candidate: tuple[int, ...] | None = field(default=None, repr=False)
    _since: float = field(default=0.0, repr=False)

    def update(self, resolved: tuple[int, ...], now: float) -> Change | float | None:
        if self.self_id not in resolved:
            self._candidate = None
            if self.applied is None:
                return None
            self.applied = None
            return Change(None)
        if resolved == self.applied:
            self._candidate = None
            return None
        out = self.settled(resolved, now)
        return self._apply(out) if isinstance(out, tuple) else out

    def settled(self, resolved: tuple[int, ...], now: float) -> tuple[int, ...] | float | None:
        """:meth:`update` without applying: ``resolved`` once it may be joined (full,
        or short and unchanged for the settle window), the time to ask again (a short
        set settling) or None (this node is not in it, or it is smaller than
        ``min_form``)."""
        if self.self_id not in resolved or len(resolved) < self.min_form:
            self._candidate = None
            return None
        if len(resolved) >= self.factor or self.settle_window <= 0:
            return resolved
        if resolved != self._candidate:
            self._candidate, self._since = resolved, now
        due = self._since + self.settle_window
        return resolved if now >= due else due

    def _apply(self, members: tuple[int, ...]) -> Change:
        self._candidate = None
        self.applied = members
        return Change(members)


def next_step(cur: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The next member set from ``cur`` toward ``target``, one node at a time (Raft's
    single-server changes, thesis §4.1): add the lowest missing id first, then
    remove the highest surplus id; ``cur`` itself when they are equal."""
    have, want = set(cur), set(target)
    add = sorted(want - have)
    if add:
        return tuple(sorted(have | {add[0]}))
    surplus = sorted(have - want)
    if surplus:
        return tuple(sorted(have - {surplus[-1]}))
    return tuple(sorted(have))


#: :func:`quorum_change`: nobody runs the channel yet; form it (ChannelPlacement)
FORM = "form"
#: :func:`quorum_change`: catch up as a learner before being added
LEARN = "learn"


@dataclass(frozen=True)
class Step:
    """A single-server change the leader of ``source`` (of ``version``) ordered in
    ``term``: the members of ``source`` run ``members`` next (``next_step(source,
    target)`` of the leader's target; ``source`` itself to re-version it, see
    :func:`quorum_change`). A leader orders at most one step per term."""

    source: tuple[int, ...]
    term: int
    members: tuple[int, ...]
    #: the version of ``source`` (the step's set is one more)
    version: int = 0


@dataclass(frozen=True)
class Lead:
    """What this node's coordinator of the channel knows now: its current ``term``
    and that term's ``leader`` (None: not known yet)."""

    term: int
    leader: int | None


def quorum_change(
    self_id: int,
    applied: tuple[int, ...] | None,
    target: tuple[int, ...],
    seen: Mapping[int, tuple[int, ...] | None],
    ready: Collection[int] | None = None,
    *,
    lead: Lead | None = None,
    steps: Mapping[int, Step] | None = None,
    version: int = 0,
    versions: Mapping[int, int] | None = None,
) -> Change | Step | str | None:
    """When a quorum channel's member set changes here (issue 13 §3): one node at a
    time, each step ordered by the leader of the current set, so that of the sets in
    use at most one has a majority of its members running it (Raft's single-server
    changes, thesis §4.1, driven by the leader as there; the membership id keeps votes
    within one set).

    Args:
        self_id: this node.
        applied: the set this node runs the channel with (None: it runs nothing).
        target: the set resolved from the announcements (:func:`resolve`); nodes
            may resolve different targets while announcements travel.
        seen: node -> the set it announced it runs the channel with (None or
            absent: it runs nothing); this node's own entry is ignored.
        ready: the nodes that announced they caught up with the channel as
            learners (None: nobody needs to; a newcomer is added at once).
        lead: this node's coordinator of ``applied``: its term and leader (None:
            no coordinator, or nothing known).
        steps: node -> the step it announced it ordered as a leader (this node's own
            entry: the step it ordered itself).
        version: the version of ``applied``; when ``applied`` is None, the version
            of the last set this node ran (0: none; it joins no set older than that).
        versions: node -> the version of the set it announced it runs (absent: 0).

    Returns:
        a :class:`Change` to apply now (with the version of its set); a
        :class:`Step` this node, leading
        ``applied``, orders now (the caller records and announces it, then asks
        again); :data:`FORM` when nobody runs the channel yet (the caller forms the
        first set, :class:`ChannelPlacement`); :data:`LEARN` when this node is the
        next to be added and must first catch up as a learner (then announce it is
        ready); None: nothing now (asked again when an announcement or the
        coordinator's term or leader changes).

    Rules.
      * Only the leader of ``applied`` orders a step, toward its own target, at most
        one per term, once the node it adds is ready (Raft's learners, thesis
        §4.2.1), no member of both sets is known to run a third and a majority of
        ``applied`` is known to run it or the step.
      * A member follows the step its current leader ordered in its current term
        (whatever its own target); the leader follows last, once a majority of
        ``applied`` runs the step, or every member of both sets it hears from runs
        it and the step's set has a majority with it; a node the step removes leaves
        once no other running member's set holds it.
      * Why two majorities cannot be disjoint (the adversary's P1: members that
        resolved different targets took two different steps from one set): a step
        ordered in term t is followed only by members still in term t. Another step
        from the same set needs a leader of a later term, elected by a majority of
        the set, none of which follows the earlier step any more; so the first
        step's set is run by at most a minority of the old set (plus the node it
        adds), never a majority of it, since the two sets differ by one node.
      * A member whose set no majority runs any more (it missed a step) joins a set
        holding it, of a version at least its own, that a majority of that set's
        other members is known to run; a member left on such a set that is not in
        its target leaves once a set without it is known to be run by a majority.
      * A step is void when its leader lost the term before a majority followed it;
        a member that followed it may not go back to the older version, so the leader
        of the source, seeing a member of its set on a newer set no majority runs,
        orders its own set again (one version on: a re-version step) and that member
        joins it.
      * A node that runs nothing joins the set that holds it once the members
        took the step that adds it; with ``ready`` given it first learns, when it
        is the next node to add.
      * Versions: the first set has version 0 (or the version a restarted node ran
        last), each step one more than the set it was ordered from. A node never
        joins a set of a lower version than the one it runs or ran last (Raft: a
        server never goes back to an older configuration in its log). Without it a
        node with a stale view (or a restarted one that has heard only part of the
        cluster) could join an old set next to a member left behind there, a
        majority of that old set, while the current set runs with another majority.
    """
    vers = versions or {}
    running = {n: m for n, m in seen.items() if m is not None and n != self_id}
    sets = {n: (m, vers.get(n, 0)) for n, m in running.items()}
    if applied is None:
        return _newcomer(self_id, target, sets, ready, version)
    steps = steps or {}
    leading = lead is not None and lead.leader == self_id
    step = _in_force(applied, version, lead, steps)
    if step is not None:
        return _follow(self_id, applied, version, step.members, sets, leading)
    if leading and lead is not None:
        if _stranded(self_id, applied, version, sets):
            return Step(applied, lead.term, applied, version)  # re-version: they rejoin
        if applied == target:
            return None
        nxt = next_step(applied, target)
        if not _may_order(self_id, applied, nxt, running, ready):
            return None
        return Step(applied, lead.term, nxt, version)
    behind = _quorate_set(self_id, (applied, version), sets)
    if behind is not None:
        return Change(*behind)
    moved_on = any(self_id not in mv[0] and _quorate(mv, sets) for mv in set(sets.values()))
    if self_id not in target and moved_on and _majority_left(self_id, (applied, version), sets):
        return Change(None)  # the others moved on without this node
    return None


def _stranded(
    self_id: int, applied: tuple[int, ...], version: int, sets: Mapping[int, _Versioned]
) -> bool:
    """A member of ``applied`` runs a newer set that no majority runs: it followed a
    step that was voided (its leader lost the term before the others followed) and
    may not come back to an older version; the leader re-versions its set for it."""
    return any(
        n in applied and mv[1] > version and not _quorate(mv, sets)
        for n, mv in sets.items()
        if n != self_id
    )


def _quorate(mv: _Versioned, sets: Mapping[int, _Versioned]) -> bool:
    """A majority of the members of ``mv`` is known to run it (that version)."""
    return sum(1 for n in mv[0] if sets.get(n) == mv) >= _majority(mv[0])


def _majority(members: Collection[int]) -> int:
    return len(members) // 2 + 1


def _in_force(
    applied: tuple[int, ...], version: int, lead: Lead | None, steps: Mapping[int, Step]
) -> Step | None:
    """The step this node's current leader ordered from ``applied`` (this version) in
    the current term (None: none, or no leader known)."""
    if lead is None or lead.leader is None:
        return None
    st = steps.get(lead.leader)
    if st is None or st.source != applied or st.version != version or st.term != lead.term:
        return None
    return st


#: a member set and its version
_Versioned = tuple[tuple[int, ...], int]


def _newcomer(
    self_id: int,
    target: tuple[int, ...],
    sets: Mapping[int, _Versioned],
    ready: Collection[int] | None,
    floor: int,
) -> Change | str | None:
    if self_id not in target:
        return None
    if not sets:
        return FORM
    holding = {mv for mv in sets.values() if self_id in mv[0] and mv[1] >= floor}
    if holding:  # the members took the step that adds this node
        return Change(*holding.pop()) if len(holding) == 1 else None
    if ready is None:
        return None  # the leader adds it at once; it joins the set that holds it
    cur = sets[min(sets)][0]
    if self_id not in next_step(cur, target):
        return None  # another node is added first
    return LEARN if self_id not in ready else None


def _may_order(
    self_id: int,
    applied: tuple[int, ...],
    nxt: tuple[int, ...],
    running: Mapping[int, tuple[int, ...]],
    ready: Collection[int] | None,
) -> bool:
    # a node to be added counts as caught up once it announced ready, or once it runs a
    # set holding it (it joined after an earlier order, and stopped announcing ready)
    joined = {n for n, m in running.items() if n in m}
    if ready is not None and not set(nxt) - set(applied) <= set(ready) | joined:
        return False  # the node to be added has not caught up yet
    shared = (set(applied) & set(nxt)) - {self_id}
    if not all(running[n] in (applied, nxt) for n in shared if n in running):
        return False
    known = 1 + sum(1 for n in set(applied) - {self_id} if running.get(n) in (applied, nxt))
    return known >= _majority(applied)


def _follow(
    self_id: int,
    applied: tuple[int, ...],
    version: int,
    nxt: tuple[int, ...],
    sets: Mapping[int, _Versioned],
    leading: bool,
) -> Change | None:
    step = (nxt, version + 1)
    if self_id not in nxt:  # the step removes this node
        others = set(applied) - {self_id}
        if all(self_id not in sets[n][0] for n in others if n in sets):
            return Change(None)
        return None
    if not leading:
        return Change(*step)
    # the leader moves last: it keeps leading its set (heartbeats, commits) while the
    # members follow, until its set can no longer elect another leader, or until every
    # member of both sets it hears from followed and the step's set has a majority
    # with it (a member that is down does not hold it back)
    moved = 1 + sum(1 for n in applied if n != self_id and sets.get(n) == step)
    if moved >= _majority(applied):
        return Change(*step)
    shared = (set(applied) & set(nxt)) - {self_id}
    on = 1 + sum(1 for n in nxt if n != self_id and sets.get(n) == step)
    if all(sets[n] == step for n in shared if n in sets) and on >= _majority(nxt):
        return Change(*step)
    return None


def _majority_left(self_id: int, applied: _Versioned, sets: Mapping[int, _Versioned]) -> bool:
    """No majority of ``applied`` (this node included) is known to run it."""
    own = 1 + sum(1 for n in applied[0] if n != self_id and sets.get(n) == applied)
    return own < _majority(applied[0])


def _quorate_set(
    self_id: int, applied: _Versioned, sets: Mapping[int, _Versioned]
) -> _Versioned | None:
    """A set holding this node, of a version at least its own, that a majority of its
    members (other than this node) is known to run, while no majority runs
    ``applied``: the others moved on while this node was behind (it missed an order,
    or its leader moved before it heard it). Joining a set a majority already runs
    creates no new majority; never an older version (the first member to follow a
    step is not pulled back to the set the others still run). None: none."""
    if not _majority_left(self_id, applied, sets):
        return None
    for cand in sorted(set(sets.values())):
        m, v = cand
        if cand == applied or v < applied[1] or self_id not in m:
            continue
        if sum(1 for n in m if n != self_id and sets.get(n) == cand) >= _majority(m):
            return cand
    return None


def encode_version(members: Iterable[int], version: int) -> bytes:
    """The placement record a quorum channel keeps beside its log: msgpack
    ``[1, member ids, version]``: the set this node ran last (empty: it left it)
    and its version."""
    data: bytes = msgpack.packb([1, sorted(set(members)), version], use_bin_type=True)
    return data


def decode_version(data: bytes, where: str = "placement") -> tuple[tuple[int, ...], int]:
    """``(members, version)`` of an :func:`encode_version` record.

    Raises:
        LogCorrupt: not such a record (naming ``where``).
    """
    try:
        body = msgpack.unpackb(data, raw=False)
        if isinstance(body, list) and len(body) == 3 and body[0] == 1:
            return _ids(body[1]), _u64(body[2], "set version")
    except (DecodeError, ValueError, TypeError, msgpack.UnpackException):
        pass
    raise LogCorrupt(where, 0, "not a placement record ([1, member ids, version])")


def may_form(ran: bool, configured: Collection[int], heard: Collection[int], factor: int) -> bool:
    """Whether this node may form a quorum channel's first set once it sees nobody
    run it (:data:`FORM`): only if it never ran the channel (a node that did resumes
    its set: it may have heard only part of the cluster yet), and, on a node daemon
    (``configured``: its configured peers), once fewer of them than a majority of
    ``factor`` are unheard: a set that runs with a majority of its members then
    has a member this node heard running nothing (the adversary's S3: a first view
    of a few nodes proves nothing about the others). In-process Redex (no configured
    peers): upstream's rule."""
    unheard = set(configured) - set(heard)
    return not ran and len(unheard) < _majority(range(max(1, factor)))


# ------------------------------------------------------------------ first set

#: seconds a proposer waits on a live rival's ballot before running a higher one
FORM_YIELD_S = 3.0
#: a Paxos ballot ``(round, proposer node id)``; ``NO_BALLOT``: none
Ballot = tuple[int, int]
NO_BALLOT: Ballot = (0, 0)


@dataclass(frozen=True)
class FormVote:
    """One node's part in choosing a quorum channel's first set on node daemons:
    single-decree Paxos (Lamport, "Paxos Made Simple", 2001) over the configured
    cluster, carried in the announcements (each is the node's whole state, so a lost
    one is made good by the next).

    As an acceptor: ``promised`` (the highest ballot it promised), ``accepted`` and
    ``value`` (the ballot of the set it accepted last and that set; NO_BALLOT and ()
    when none). As a proposer: ``ballot`` (the ballot it runs; NO_BALLOT: none) and
    ``proposal`` (the set it asks the others to accept; (): phase 1, collecting
    promises). Persisted before it is announced (``placement-form`` beside the log)."""

    promised: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    value: tuple[int, ...] = ()
    ballot: Ballot = NO_BALLOT
    proposal: tuple[int, ...] = ()

    def to_wire(self) -> list[Any]:
        return [
            list(self.promised),
            list(self.accepted),
            list(self.value),
            list(self.ballot),
            list(self.proposal),
        ]

    @classmethod
    def from_wire(cls, v: Any) -> FormVote:
        """Raises DecodeError on a wrong shape."""
        if not (isinstance(v, list) and len(v) == 5):
            raise DecodeError("form vote is not a 5-element array")
        return cls(_ballot(v[0]), _ballot(v[1]), _ids(v[2]), _ballot(v[3]), _ids(v[4]))


def _ballot(v: Any) -> Ballot:
    if not (isinstance(v, list) and len(v) == 2):
        raise DecodeError("form ballot is not a (round, node id) pair")
    return (_u64(v[0], "ballot round"), _u64(v[1], "ballot node id"))


def chosen_set(
    electorate: Collection[int], votes: Mapping[int, FormVote]
) -> tuple[int, ...] | None:
    """The first set a majority of ``electorate`` accepted in one ballot (Paxos: chosen;
    at most one set ever is), or None."""
    count: dict[tuple[Ballot, tuple[int, ...]], int] = {}
    for n, v in votes.items():
        if n in electorate and v.accepted != NO_BALLOT:
            key = (v.accepted, v.value)
            count[key] = count.get(key, 0) + 1
    need = _majority(electorate)
    for (_, value), c in sorted(count.items()):
        if c >= need:
            return value
    return None


def form_vote(
    self_id: int,
    electorate: Collection[int],
    own: FormVote,
    others: Mapping[int, FormVote],
    want: tuple[int, ...] | None,
    live: Collection[int],
) -> tuple[FormVote, tuple[int, ...] | None]:
    """This node's next :class:`FormVote` for a channel and the chosen first set.

    Args:
        self_id: this node (a member of ``electorate``).
        electorate: the configured cluster (this node and its configured peers): a set
            is chosen when a majority of it accepted it in one ballot, and any two
            majorities share a node, which accepts at most one set per ballot and
            promises never to accept below a ballot it promised (Paxos P2).
        own: this node's vote so far; others: node -> the vote it announced last.
        want: the set this node would form now (its resolved target once settled;
            None: it does not propose).
        live: the nodes whose ballots this node waits on: a proposer yields to a
            higher ballot run by one of them, and starts its own ballot only when
            none runs. The shell passes the nodes a session is up with whose current
            ballot is younger than :data:`FORM_YIELD_S` (a live proposer cut off from
            a majority must not hold the others back for ever).

    Returns:
        ``(vote, chosen)``: the vote to persist and announce (``own`` itself when
        nothing changed); the chosen set (None: none yet). The caller forms the chosen
        set, at version 0, only if this node is in it.
    """
    votes = {n: v for n, v in others.items() if n in electorate and n != self_id}
    votes[self_id] = own
    chosen = chosen_set(electorate, votes)
    if chosen is not None:
        return own, chosen
    v = own
    for _ in range(6):  # propose, promise and accept may follow from one view
        votes[self_id] = v
        nxt = _acceptor(v, votes)
        nxt = _proposer(self_id, electorate, nxt, votes, want, live)
        if nxt == v:
            break
        v = nxt
    votes[self_id] = v
    return v, chosen_set(electorate, votes)


def _acceptor(v: FormVote, votes: Mapping[int, FormVote]) -> FormVote:
    # promise the highest ballot any proposer runs; accept its set in phase 2 when it
    # is the ballot promised (never one below it)
    top = max((x.ballot for x in votes.values()), default=NO_BALLOT)
    if top > v.promised:
        v = replace(v, promised=top)
    for x in votes.values():
        if x.ballot == v.promised and x.proposal and v.accepted != x.ballot:
            return replace(v, accepted=x.ballot, value=x.proposal)
    return v


def _proposer(
    self_id: int,
    electorate: Collection[int],
    v: FormVote,
    votes: Mapping[int, FormVote],
    want: tuple[int, ...] | None,
    live: Collection[int],
) -> FormVote:
    if want is None:  # not (or no longer) proposing: drop a ballot nobody should wait on
        if v.ballot == NO_BALLOT:
            return v
        return replace(v, ballot=NO_BALLOT, proposal=())
    rival = max(
        (x.ballot for n, x in votes.items() if n != self_id and n in live),
        default=NO_BALLOT,
    )
    if rival > v.ballot:
        return v  # a live node runs a higher ballot: support it
    top = max((x.promised for x in votes.values()), default=NO_BALLOT)
    if v.ballot == NO_BALLOT or top > v.ballot:  # none yet, or preempted by a dead one
        rnd = max([top[0], *(x.ballot[0] for x in votes.values())]) + 1
        return replace(v, ballot=(rnd, self_id), proposal=())
    if v.proposal:
        return v
    promisers = [x for n, x in votes.items() if n in electorate and x.promised == v.ballot]
    if len(promisers) < _majority(electorate):
        return v
    prior = max(promisers, key=lambda x: x.accepted)
    value = prior.value if prior.accepted != NO_BALLOT else want
    return replace(v, proposal=value)


def encode_form(v: FormVote) -> bytes:
    """The ``placement-form`` record: msgpack ``[1, vote]``."""
    data: bytes = msgpack.packb([1, v.to_wire()], use_bin_type=True)
    return data


def decode_form(data: bytes, where: str = "placement-form") -> FormVote:
    """Raises LogCorrupt: not such a record (naming ``where``)."""
    try:
        body = msgpack.unpackb(data, raw=False)
        if isinstance(body, list) and len(body) == 2 and body[0] == 1:
            return FormVote.from_wire(body[1])
    except (DecodeError, ValueError, TypeError, msgpack.UnpackException):
        pass
    raise LogCorrupt(where, 0, "not a form vote record ([1, vote])")


# ------------------------------------------------------------------ rate limit


@dataclass
class AnnounceLimiter:
    """At most one broadcast per ``min_interval`` seconds; changes inside the window
    go out at its end (trailing edge). ``changed(now)`` marks the local state
    changed; ``due_at()`` is when the pending broadcast may go (None: nothing
    pending); ``sent(now)`` records a broadcast."""

    min_interval: float
    last_sent: float = -math.inf
    pending: bool = False

    def changed(self) -> None:
        self.pending = True

    def due_at(self) -> float | None:
        if not self.pending:
            return None
        return self.last_sent + self.min_interval

    def may_send(self, now: float) -> bool:
        due = self.due_at()
        return due is not None and now >= due

    def sent(self, now: float) -> None:
        self.last_sent = now
        self.pending = False


# ------------------------------------------------------------------ membership id


def membership_id(members: Iterable[int]) -> int:
    """A u64 naming a member list (order and duplicates ignored): keyed BLAKE2s of the
    sorted node ids. Every message on a channel's stream starts with it, and a node
    refuses (drops unread, counts) messages whose id is not its own member list's, so
    a node with a different member list gets no vote and gives none (issue 13 §3;
    etcd checks a cluster id in every message header the same way)."""
    ids = sorted(set(members))
    data = b"".join(n.to_bytes(8, "little") for n in ids)
    digest = hashlib.blake2s(data, digest_size=8, key=b"netmesh-members-v1").digest()
    return int.from_bytes(digest, "little")


# ------------------------------------------------------------------ learners

#: MeshNode stream of learner catch-up (a newcomer copies a quorum channel's
#: committed prefix from a member before it is added, :data:`LEARN`)
LEARN_STREAM = "redex-learn"
#: payload bytes per learner chunk
LEARN_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class LearnRequest:
    """A learner asks a member for ``channel``'s events from ``from_seq``."""

    channel: str
    from_seq: int


@dataclass(frozen=True)
class LearnChunk:
    """A member's answer: the events from ``first_seq`` as runs of one term each,
    and ``upto``: the member's commit seq when it answered (the learner is caught
    up once it holds ``upto`` events). ``upto <= first_seq`` with no runs: nothing
    more to copy (or nothing this member can serve: the learner stops learning)."""

    channel: str
    first_seq: int
    upto: int
    runs: tuple[tuple[int, tuple[bytes, ...]], ...] = ()


def encode_learn(m: LearnRequest | LearnChunk) -> bytes:
    """``[1, 0, channel, from_seq]`` or ``[1, 1, channel, first_seq, upto, runs]``."""
    if isinstance(m, LearnRequest):
        body: list[Any] = [1, 0, m.channel, m.from_seq]
    else:
        runs = [[t, list(p)] for t, p in m.runs]
        body = [1, 1, m.channel, m.first_seq, m.upto, runs]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_learn(data: bytes) -> LearnRequest | LearnChunk:
    """Raises DecodeError for anything but one well-formed learner message."""
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack learner message: {type(exc).__name__}") from None
    if not (isinstance(body, list) and len(body) >= 4 and body[0] == 1):
        raise DecodeError("not a learner message")
    if type(body[2]) is not str:
        raise DecodeError("learner message channel is not a string")
    if body[1] == 0 and len(body) == 4:
        return LearnRequest(body[2], _u64(body[3], "from_seq"))
    if body[1] != 1 or len(body) != 6 or not isinstance(body[5], list):
        raise DecodeError("malformed learner message")
    runs: list[tuple[int, tuple[bytes, ...]]] = []
    for run in body[5]:
        ok = isinstance(run, list) and len(run) == 2 and isinstance(run[1], list)
        if not ok or not all(type(p) is bytes for p in run[1]):
            raise DecodeError("learner chunk run is not [term, [bytes...]]")
        runs.append((_u64(run[0], "term"), tuple(run[1])))
    first, upto = _u64(body[3], "first_seq"), _u64(body[4], "upto")
    return LearnChunk(body[2], first, upto, tuple(runs))

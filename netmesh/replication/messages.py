"""Replication messages and their msgpack codec.

Theory of operation
-------------------
Each message is a frozen dataclass. On the wire it is ONE msgpack array:
``[version, tag, field1, field2, ...]`` in declaration order; epoch histories are an
array of ``[term, start_seq]`` pairs. A SyncResponse's events travel as TWO fields,
their count and ONE bin, the body of a log batch record (lengths u32[count], then the
payloads back to back; :class:`~netmesh.log.packed.PackedPayloads`): no msgpack object
per event, one copy of the payloads into the message, and the replica stores the body as
it came. One ``packb``/``unpackb`` call per message.

* No channel name or id inside: the transport's ``send(node_id, channel, bytes)``
  already carries the channel and the sender's authenticated node id, so the shell
  routes by channel and passes ``from_id`` to ``ReplicationCoordinator.step``.
* Every message carries the sender's ``term``: any receiver that sees a higher term
  adopts it (and a leader or candidate steps down).
* Sequence bounds are exclusive "next seq" values (``tail_seq`` = number of events
  held = the next seq to assign), except ``first_seq``/``from_seq``, which name the
  first event of a range.
* ``decode`` raises only :class:`~netmesh.errors.DecodeError`: for truncated bytes,
  garbage, an unknown version or tag, a wrong field count or a field of the wrong
  type or range.
* Bounds: terms are at most :data:`MAX_TERM` and sequence numbers (``*_seq``,
  ``epoch_end``, epoch starts) at most :data:`MAX_SEQ`, both 2**62; ``decode``
  rejects larger values. Honest nodes stay far below them (a term grows by at most
  2**24 per election and starts near 2**58, a seq by one per event), and the headroom
  below 2**64 means ``term + 2**24`` or ``seq + count`` computed from accepted input
  still encodes as a msgpack uint64 (a peer's term near 2**64 used to make the
  next owned term unencodable). The coordinator never campaigns past
  ``MAX_TERM``. Node ids, request ids and ``max_bytes`` are plain uint64.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from netmesh.errors import DecodeError
from netmesh.log.hardstate import MAX_SEQ, MAX_TERM, Epoch
from netmesh.log.packed import PackedPayloads
from netmesh.replication.roles import ReplicaRole

#: 2: Heartbeat lost its unread leader_id; vote kinds (pre-vote); 3: quiesce,
#: SyncRecords; 4: Heartbeat.amnesiac, heartbeat bundle rows carry the membership id,
#: a SyncRequest repeating the outstanding request id credits a raw catch-up stream;
#: 5: SyncResponse payloads are one packed body (count, lengths + payloads), not an
#: array of bin
WIRE_VERSION = 5
MAX_U64 = (1 << 64) - 1


class NackReason(enum.IntEnum):
    """Why a leader refused a SyncRequest (1..3 are the reference codes; the
    reference's 4, CHANNEL_CLOSED, is never sent here: a closed channel stops
    listening instead, and the requester's silence timer takes over)."""

    NOT_LEADER = 1
    """The receiver does not lead this term; the requester waits for a heartbeat."""
    BAD_RANGE = 2
    """``from_seq`` is below the leader's retained head ``epoch_end`` (retention dropped
    it); ``epoch_term`` is the term of event ``epoch_end - 1``. The requester restarts
    its log at that head (counted as a gap), as Redis falls back to a full resync."""
    BACKPRESSURE = 3
    """The leader's replication budget is spent; retry after half a heartbeat."""
    DIVERGED = 5
    """The requester's log diverges; ``epoch_term``/``epoch_end`` say where (see coordinator)."""


@dataclass(frozen=True)
class Heartbeat:
    """Sent every heartbeat by leaders AND replicas to every other member.

    The sender is the leader iff ``role`` is LEADER (so no leader id travels).
    ``epoch_term`` is the term of the sender's newest epoch (the newest leader whose
    history it has adopted); ``last_term`` the term of its last event (0 if empty).
    ``quiesce`` (leaders only): the channel is idle and every follower caught up; this
    is the leader's last per-channel heartbeat until it wakes (CockroachDB's quiesce
    heartbeat; see the coordinator's "Quiescence").
    ``amnesiac``: the sender started without hard state and has not yet learned the
    current state (see the coordinator's "Lost state"): its log says nothing about
    what the channel committed, so its peers do not count it as evidence.
    """

    term: int
    role: ReplicaRole
    tail_seq: int
    commit_seq: int
    epoch_term: int
    last_term: int
    quiesce: bool = False
    amnesiac: bool = False


@dataclass(frozen=True)
class SyncRequest:
    """Replica -> leader: send events from ``from_seq``; my event ``from_seq - 1`` has
    term ``last_term``."""

    term: int
    from_seq: int
    last_term: int
    max_bytes: int
    request_id: int


@dataclass(frozen=True)
class SyncResponse:
    """Leader -> replica: events ``[first_seq, first_seq+len(payloads))``.

    ``request_id`` 0 marks an unsolicited push. ``prev_term`` is the term of event
    ``first_seq-1`` (0 for seq -1); ``epochs`` are the leader's epochs overlapping
    ``[first_seq, end]`` (end inclusive, so an empty newest epoch is included).
    ``payloads``: a tuple of ``bytes`` or a :class:`~netmesh.log.packed.PackedPayloads`
    (what the leader reads and :func:`decode` returns; equal to the tuple of its events).
    """

    term: int
    request_id: int
    first_seq: int
    prev_term: int
    commit_seq: int
    epochs: tuple[Epoch, ...]
    payloads: tuple[bytes, ...] | PackedPayloads


@dataclass(frozen=True)
class Nack:
    """Leader -> replica: a SyncRequest was refused (``reason``)."""

    term: int
    request_id: int
    reason: NackReason
    from_seq: int
    epoch_term: int = 0
    epoch_end: int = 0


class VoteKind(enum.IntEnum):
    """What a VoteRequest asks (see ``ReplicationCoordinator._start_campaign``)."""

    VOTE = 0
    """A real vote in ``term``; refused (ignored) by a voter that knows a live leader."""
    PRE = 1
    """Would you vote for me in ``term``? Changes nothing at the voter (Raft pre-vote)."""
    FORCE = 2
    """A real vote that bypasses leader leases (handoff, challenge, manual transition)."""


@dataclass(frozen=True)
class VoteRequest:
    """Candidate -> member: vote for me in ``term``; my log is (epoch_term, last_term, tail).

    For a pre-vote, ``term`` is the term the candidate would take; it has not taken it.
    """

    term: int
    epoch_term: int
    last_term: int
    tail_seq: int
    kind: VoteKind = VoteKind.VOTE


@dataclass(frozen=True)
class VoteResponse:
    """Member -> candidate. ``pre``: answers a pre-vote (a grant echoes the asked term,
    a refusal carries the voter's own term)."""

    term: int
    granted: bool
    pre: bool = False


@dataclass(frozen=True)
class Ack:
    """Replica -> leader: I hold ``[0, tail_seq)`` identical to yours (quorum commit)."""

    term: int
    tail_seq: int


# Message: the union of the message classes, at the end of the module

# field kinds: u = uint64 (node and request ids, sizes), t = term (<= MAX_TERM),
# s = seq (<= MAX_SEQ), b = bool, r = role, n = nack reason, k = vote kind, e = epochs,
# p = payloads (two wire fields, count and body: _encode/_decode_sync_response)
_SCHEMA: dict[int, tuple[type, str]] = {
    1: (Heartbeat, "trssttbb"),
    2: (SyncRequest, "tstuu"),
    3: (SyncResponse, "tustsep"),
    4: (Nack, "tunsts"),
    5: (VoteRequest, "tttsk"),
    6: (VoteResponse, "tbb"),
    7: (Ack, "ts"),
}
_TAGS: dict[type, int] = {cls: tag for tag, (cls, _) in _SCHEMA.items()}


def _wire(value: Any) -> Any:
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    return value


def encode(msg: Message, prefix: bytes = b"") -> bytes:
    """Serialise ``msg`` (one msgpack call), after ``prefix`` (the caller's routing
    bytes: one buffer, so a large SyncResponse is copied once, not once per layer)."""
    if type(msg) is SyncResponse:
        return _encode_sync_response(msg, prefix)
    body = [WIRE_VERSION, _TAGS[type(msg)], *(_wire(v) for v in vars(msg).values())]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return prefix + data if prefix else data


_BIN8, _BIN16, _BIN32 = struct.Struct(">BB"), struct.Struct(">BH"), struct.Struct(">BI")


def _encode_sync_response(m: SyncResponse, prefix: bytes) -> bytes:
    """``[version, 3, term, request_id, first_seq, prev_term, commit_seq, epochs, count,
    body]``: the events as one packed body (one bin). msgpack packs the small fields
    (with an empty bin, whose 2-byte header is cut off); the bin header and the body's
    buffers follow in ONE join: the payloads are copied once, from the log's stored
    batches into the message, without a msgpack buffer in between (a fresh buffer of a
    chunk's size costs page faults on every push, more than the copy)."""
    packed = PackedPayloads.of(m.payloads)
    head = [
        WIRE_VERSION,
        3,
        m.term,
        m.request_id,
        m.first_seq,
        m.prev_term,
        m.commit_seq,
        [list(e) for e in m.epochs],
        len(packed),
        b"",
    ]
    fields: bytes = msgpack.packb(head, use_bin_type=True)
    n = 4 * len(packed) + packed.size
    if n < 0x100:
        bin_head = _BIN8.pack(0xC4, n)
    elif n < 0x10000:
        bin_head = _BIN16.pack(0xC5, n)
    else:
        bin_head = _BIN32.pack(0xC6, n)
    return b"".join([prefix, fields[:-2], bin_head, *packed.body_parts()])


def _uint(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= MAX_U64:
        raise DecodeError(f"expected uint64, got {v!r:.40}")
    return v


def _term(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= MAX_TERM:
        raise DecodeError(f"expected a term in [0, 2**62], got {v!r:.40}")
    return v


def _seq(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= MAX_SEQ:
        raise DecodeError(f"expected a seq in [0, 2**62], got {v!r:.40}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise DecodeError(f"expected bool, got {v!r:.40}")
    return v


def _enum(cls: type[enum.IntEnum], v: Any) -> Any:
    try:
        return cls(_uint(v))
    except ValueError:
        raise DecodeError(f"bad {cls.__name__} {v!r}") from None


def _epochs(v: Any) -> tuple[Epoch, ...]:
    if type(v) is not list:
        raise DecodeError("epochs must be a list")
    out = []
    for e in v:
        if type(e) is not list or len(e) != 2:
            raise DecodeError("epoch must be [term, start_seq]")
        out.append((_term(e[0]), _seq(e[1])))
    return tuple(out)


_KINDS = {
    "u": _uint,
    "t": _term,
    "s": _seq,
    "b": _bool,
    "r": lambda v: _enum(ReplicaRole, v),
    "n": lambda v: _enum(NackReason, v),
    "k": lambda v: _enum(VoteKind, v),
    "e": _epochs,
}


def decode(data: bytes, start: int = 0) -> Message:
    """Parse the message that fills ``data`` from ``start`` (the caller's routing
    prefix before it is skipped without a copy). A SyncResponse's events stay in
    ``data`` (its PackedPayloads is a view of it): a replica stores the received bytes.

    Raises:
        DecodeError: for anything that is not exactly one well-formed message.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if data[start : start + 3] == _SYNC_HEAD:
        sync = _decode_sync_response_in_place(data, start)
        if sync is not None:
            return sync
    try:
        view = memoryview(data)[start:] if start else data
        body = msgpack.unpackb(view, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack message: {type(exc).__name__}") from None
    if type(body) is not list or len(body) < 2:
        raise DecodeError("message must be an array [version, tag, ...]")
    if body[0] != WIRE_VERSION or type(body[0]) is not int:
        raise DecodeError(f"unsupported wire version {body[0]!r:.20}")
    entry = _SCHEMA.get(body[1]) if type(body[1]) is int else None
    if entry is None:
        raise DecodeError(f"unknown message tag {body[1]!r:.20}")
    cls, kinds = entry
    fields = body[2:]
    if cls is SyncResponse:
        return _decode_sync_response(fields)
    if len(fields) != len(kinds):
        raise DecodeError(f"{cls.__name__} needs {len(kinds)} fields, got {len(fields)}")
    msg: Message = cls(*(_KINDS[k](v) for k, v in zip(kinds, fields, strict=True)))
    return msg


def _decode_sync_response(
    fields: list[Any], buf: bytes | None = None, offset: int = 0
) -> SyncResponse:
    """The fields of a SyncResponse (see :func:`_encode_sync_response`); the body (the
    last field, or ``buf`` from ``offset``) must hold exactly ``count`` lengths and the
    payload bytes they add up to."""
    if buf is None:
        if len(fields) != 8:
            raise DecodeError(f"SyncResponse needs 8 fields, got {len(fields)}")
        buf = fields.pop()
        if type(buf) is not bytes:
            raise DecodeError("SyncResponse payloads must be one bin")
    term, rid, first, prev, commit, epochs, count = fields
    count = _uint(count)  # from_body bounds it by the body's size
    return SyncResponse(
        _term(term),
        _uint(rid),
        _seq(first),
        _term(prev),
        _seq(commit),
        _epochs(epochs),
        PackedPayloads.from_body(count, buf, offset),
    )


#: fixarray(10), the wire version, tag 3: a SyncResponse (decoded in place)
_SYNC_HEAD = bytes([0x9A, WIRE_VERSION, 3])
#: a SyncResponse's fields before its body fit this many bytes unless it carries an
#: unusually long epoch list (then the general path decodes it)
_SYNC_FIELDS_MAX = 1024
_BIN_HEADS = {0xC4: _BIN8, 0xC5: _BIN16, 0xC6: _BIN32}


def _decode_sync_response_in_place(data: bytes, start: int) -> SyncResponse | None:
    """Decode a SyncResponse without copying its body: msgpack reads the fields from a
    short prefix (``Unpacker.tell`` says where they end), then the bin header must
    announce exactly the bytes that remain. None: the fields do not fit the prefix
    (the caller decodes the whole message)."""
    up = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=True)
    up.feed(memoryview(data)[start : start + _SYNC_FIELDS_MAX])
    try:
        up.read_array_header()
        fields = [up.unpack() for _ in range(9)]
    except msgpack.OutOfData:
        if len(data) - start > _SYNC_FIELDS_MAX:
            return None
        raise DecodeError("truncated SyncResponse") from None
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack message: {type(exc).__name__}") from None
    pos = start + up.tell()
    head = _BIN_HEADS.get(data[pos]) if pos < len(data) else None
    if head is None or pos + head.size > len(data):
        raise DecodeError("SyncResponse payloads must be one bin")
    n = head.unpack_from(data, pos)[1]
    if pos + head.size + n != len(data):
        raise DecodeError("SyncResponse body does not end the message")
    return _decode_sync_response(fields[2:], data, pos + head.size)


# ------------------------------------------------------------------ heartbeat bundles

#: Tag of a heartbeat bundle (not a Message: it travels on its own stream).
BUNDLE_TAG = 64
_ROLES = tuple(ReplicaRole)
_ROLE_OF = {int(r): r for r in ReplicaRole}


def encode_heartbeats(beats: list[tuple[str, int, Heartbeat]]) -> bytes:
    """One msgpack call for the heartbeats of many channels to one peer:
    ``[version, 64, [[channel, membership_id, term, role, tail, commit, epoch_term,
    last_term, quiesce, amnesiac], ...]]`` (CockroachDB coalesces the heartbeats of
    all ranges between two nodes the same way). ``beats``: ``(channel, membership id
    (u64, ``placement.membership_id``), heartbeat)``; the receiver drops a row whose
    membership id is not its own, as it drops any message of another member list
    (issue 13 §3). About 30 bytes per channel plus its name."""
    rows = [
        [
            name,
            mid,
            h.term,
            int(h.role),
            h.tail_seq,
            h.commit_seq,
            h.epoch_term,
            h.last_term,
            h.quiesce,
            h.amnesiac,
        ]
        for name, mid, h in beats
    ]
    data: bytes = msgpack.packb([WIRE_VERSION, BUNDLE_TAG, rows], use_bin_type=True)
    return data


assert MAX_SEQ == MAX_TERM


def decode_heartbeats(data: bytes) -> list[tuple[str, int, Heartbeat]]:
    """Parse a bundle from :func:`encode_heartbeats`.

    Raises:
        DecodeError: anything but a well-formed bundle (each row checked as
            :func:`decode` checks a Heartbeat; one bad row refuses the bundle).
    """
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack bundle: {type(exc).__name__}") from None
    if (
        type(body) is not list
        or len(body) != 3
        or body[0] != WIRE_VERSION
        or body[1] != BUNDLE_TAG
        or type(body[2]) is not list
    ):
        raise DecodeError("a heartbeat bundle is [version, 64, [rows]]")
    out: list[tuple[str, int, Heartbeat]] = []
    role_of = _ROLE_OF
    for row in body[2]:
        if type(row) is not list or len(row) != 10 or type(row[0]) is not str:
            raise DecodeError(
                "a bundle row is [channel, membership, term, role, tail, commit, et, lt, q, a]"
            )
        name, mid, term, role, tail, commit, et, lt, quiesce, amnesiac = row
        if type(quiesce) is not bool or type(amnesiac) is not bool:
            raise DecodeError(f"bad quiesce or amnesiac flag {quiesce!r:.20} {amnesiac!r:.20}")
        if type(mid) is not int or not 0 <= mid <= MAX_U64:
            raise DecodeError(f"bad membership id {mid!r:.30}")
        # MAX_SEQ == MAX_TERM: one bound for the five numbers
        if not (
            type(term) is type(tail) is type(commit) is type(et) is type(lt) is int
            and min(term, tail, commit, et, lt) >= 0
            and max(term, tail, commit, et, lt) <= MAX_TERM
        ):
            raise DecodeError(f"bundle row out of range: {row!r:.60}")
        r = role_of.get(role) if type(role) is int else None
        if r is None:
            raise DecodeError(f"bad ReplicaRole {role!r:.20}")
        out.append((name, mid, Heartbeat(term, r, tail, commit, et, lt, quiesce, amnesiac)))
    return out


# ------------------------------------------------------------------ liveness beats

#: Tag of a liveness beat (not a Message: it travels on its own stream, one per peer).
LIVENESS_TAG = 65


@dataclass(frozen=True)
class LivenessBeat:
    """Node -> peer, once per heartbeat interval: "I am alive, and I lead these
    channels quiescently" (CockroachDB's node liveness standing in for the heartbeats
    of quiesced ranges).

    ``incarnation`` is random per process start (a restarted node's set starts over);
    ``generation`` counts changes of the set. ``keys`` is the set itself, the
    :func:`quiet_key` of each ``(channel, term)`` (:func:`pack_keys`), or None when
    unchanged for a while (a receiver that holds ``(incarnation, generation)``
    already knows it).
    """

    incarnation: int
    generation: int
    keys: bytes | None


def quiet_key(channel: str, term: int) -> int:
    """The u64 a liveness beat lists for ``channel`` led quiescently in ``term``: the
    first 8 bytes (little-endian) of BLAKE2b over ``"<term>:<channel>"``. The term is
    in the key, so a listing in another term does not keep a follower quiet (the term
    check); a collision between two of a node's 10,000 channels (p ~ 3e-12) could only
    keep a follower quiet longer (liveness), never affect safety."""
    digest = hashlib.blake2b(f"{term}:{channel}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def pack_keys(keys: set[int] | frozenset[int]) -> bytes:
    """Keys as a beat carries them (sorted, 8 bytes little-endian each)."""
    return b"".join(k.to_bytes(8, "little") for k in sorted(keys))


def unpack_keys(data: bytes) -> frozenset[int]:
    """Inverse of :func:`pack_keys`."""
    return frozenset(int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8))


def encode_liveness(beat: LivenessBeat) -> bytes:
    """``[version, 65, incarnation, generation, keys or nil]`` (one msgpack call)."""
    body = [WIRE_VERSION, LIVENESS_TAG, beat.incarnation, beat.generation, beat.keys]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_liveness(data: bytes) -> LivenessBeat:
    """Parse a beat from :func:`encode_liveness`.

    Raises:
        DecodeError: anything but a well-formed beat (``keys`` must be a whole number
            of 8-byte keys).
    """
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not a msgpack beat: {type(exc).__name__}") from None
    if type(body) is not list or len(body) != 5 or body[:2] != [WIRE_VERSION, LIVENESS_TAG]:
        raise DecodeError("a liveness beat is [version, 65, incarnation, generation, keys]")
    keys = body[4]
    if keys is not None and (type(keys) is not bytes or len(keys) % 8):
        raise DecodeError("beat keys must be nil or bin of 8-byte keys")
    return LivenessBeat(_uint(body[2]), _uint(body[3]), keys)


# ------------------------------------------------------------- raw catch-up (issue 15)


@dataclass(frozen=True)
class SyncRecords:
    """Leader -> replica, answering a SyncRequest from the log on disk: ``count``
    events from ``first_seq`` as the leader's own batch records
    (:mod:`netmesh.log.record` format: header and body CRC per record, each record
    stamped with its term), sent as stored, so neither side builds a Python object per
    event (issue 15 §5). The replica checks every record (CRCs, seqs, terms against
    ``epochs``) and appends the bytes as they are, or refuses the whole chunk. Other
    fields as :class:`SyncResponse`; only requests are answered so (``request_id`` is
    never 0), pushes stay SyncResponses.

    ``more`` (last on the wire; default False): the leader answers a request far behind
    its tail with a *burst* of consecutive chunks, each self-contained and starting
    where the previous one ended; every chunk but the last says ``more=True``, so the
    replica keeps its request outstanding instead of asking again (one round trip per
    burst, not per chunk; issue 15 §5). A lost chunk is a gap the replica ignores; its
    retry timer asks again from its tail."""

    term: int
    request_id: int
    first_seq: int
    prev_term: int
    commit_seq: int
    epochs: tuple[Epoch, ...]
    count: int
    records: bytes
    more: bool = False


def _records(v: Any) -> bytes:
    if type(v) is not bytes:
        raise DecodeError("records must be bin")
    return v


_KINDS["B"] = _records
_SCHEMA[8] = (SyncRecords, "tustseuBb")
_TAGS[SyncRecords] = 8

Message = (
    Heartbeat | SyncRequest | SyncResponse | Nack | VoteRequest | VoteResponse | Ack | SyncRecords
)

"""Codec: every message round-trips; garbage and every prefix raise DecodeError only."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.config import PlacementStrategy, ReplicationConfig
from netmesh.errors import DecodeError
from netmesh.log.packed import PackedPayloads
from netmesh.replication.coordinator import ReplicationCoordinator, Send
from netmesh.replication.messages import (
    MAX_SEQ,
    MAX_TERM,
    MAX_U64,
    WIRE_VERSION,
    Ack,
    Heartbeat,
    Nack,
    NackReason,
    SyncRequest,
    SyncResponse,
    VoteRequest,
    VoteResponse,
    decode,
    encode,
)
from netmesh.replication.roles import ReplicaRole

V = WIRE_VERSION
u64 = st.integers(0, MAX_U64)  # node ids, request ids, max_bytes
terms = st.integers(0, MAX_TERM)
seqs = st.integers(0, MAX_SEQ)
small = st.integers(0, 1 << 20)
epochs = st.lists(st.tuples(small, small), max_size=5).map(tuple)
payloads = st.lists(st.binary(max_size=64), max_size=8).map(tuple)

messages = st.one_of(
    st.builds(Heartbeat, terms, st.sampled_from(ReplicaRole), seqs, seqs, terms, terms),
    st.builds(SyncRequest, terms, seqs, terms, u64, u64),
    st.builds(SyncResponse, terms, u64, seqs, terms, seqs, epochs, payloads),
    st.builds(Nack, terms, u64, st.sampled_from(NackReason), seqs, terms, seqs),
    st.builds(VoteRequest, terms, terms, terms, seqs),
    st.builds(VoteResponse, terms, st.booleans()),
    st.builds(Ack, terms, seqs),
)

SAMPLE = SyncResponse(7, 42, 10, 3, 9, ((3, 0), (7, 10)), (b"a", b"", b"\x00" * 100))


@given(messages)
def test_round_trip(msg: object) -> None:
    data = encode(msg)  # type: ignore[arg-type]
    assert decode(data) == msg
    assert type(decode(data)) is type(msg)


def test_roles_and_reasons_decode_as_enums() -> None:
    hb = decode(encode(Heartbeat(1, ReplicaRole.LEADER, 3, 4, 5, 6)))
    assert isinstance(hb, Heartbeat) and hb.role is ReplicaRole.LEADER
    nack = decode(encode(Nack(1, 2, NackReason.BACKPRESSURE, 3)))
    assert isinstance(nack, Nack) and nack.reason is NackReason.BACKPRESSURE


def test_every_strict_prefix_is_a_decode_error() -> None:
    data = encode(SAMPLE)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:cut])


def test_trailing_bytes_are_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(encode(SAMPLE) + b"\x00")


@pytest.mark.parametrize(
    "body",
    [
        [],
        [V],
        [V + 1, 1, 0, 1, 0, 0, 0, 0],
        [V - 1, 7, 3, 100],  # the previous wire version
        [V, 99, 0],
        [V, "x", 0],
        [V, 7, 1],
        [V, 7, 1, 2, 3],
        [V, 7, -1, 2],
        [V, 7, 1, -(1 << 63)],
        [V, 7, 1.5, 2],
        [V, 6, 1, 1],
        [V, 1, 1, 9, 3, 4, 5, 6],
        [V, 4, 1, 2, 42, 3, 0, 0],
        [V, 4, 1, 2, 4, 3, 0, 0],  # CHANNEL_CLOSED is not a reason we use
        [V, 3, 1, 2, 3, 4, 5, [[1]], []],
        [V, 3, 1, 2, 3, 4, 5, [], ["text"]],
        [V, 3, 1, 2, 3, 4, 5, [], b"notalist"],
        {"a": 1},
        "str",
        None,
    ],
)
def test_wrong_shapes_are_decode_errors(body: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(body, use_bin_type=True))


def test_sync_response_events_travel_as_one_packed_body() -> None:
    """Wire version 5: ``[..., epochs, count, body]``, the body a batch record's body
    (lengths u32, then the payloads); decoded as one PackedPayloads over the body."""
    data = encode(SAMPLE)
    body = struct.pack("<3I", 1, 0, 100) + b"a" + b"\x00" * 100
    assert msgpack.unpackb(data) == [V, 3, 7, 42, 10, 3, 9, [[3, 0], [7, 10]], 3, body]
    got = decode(data)
    assert isinstance(got, SyncResponse) and isinstance(got.payloads, PackedPayloads)
    assert got.payloads.body() == body and got == SAMPLE


def test_a_sync_response_is_decoded_in_place_after_a_prefix() -> None:
    """The runtime's routing prefix is skipped, not sliced off, and the events stay in
    the received buffer (the replica stores that buffer)."""
    raw = encode(SAMPLE, b"ROUTING!")
    assert raw[:8] == b"ROUTING!" and raw[8:] == encode(SAMPLE)
    got = decode(raw, 8)
    assert got == SAMPLE and isinstance(got, SyncResponse)
    assert isinstance(got.payloads, PackedPayloads) and got.payloads.data is raw
    assert decode(encode(Ack(3, 4), b"ROUTING!"), 8) == Ack(3, 4)
    for cut in range(8, len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:cut], 8)


def test_a_sync_response_with_a_long_epoch_list_takes_the_general_path() -> None:
    epochs = tuple((t, t * 1000) for t in range(1, 200))  # fields > 1024 bytes
    msg = SyncResponse(300, 1, 199_500, 199, 0, epochs, (b"a" * 70_000, b"b"))
    raw = encode(msg, b"12345678")
    assert decode(raw, 8) == msg
    with pytest.raises(DecodeError):
        decode(raw[:-1], 8)


@pytest.mark.parametrize(
    "tail",
    [
        [3, struct.pack("<3I", 1, 0, 100) + b"a" + b"\x00" * 99],  # a byte short
        [3, struct.pack("<3I", 1, 0, 100) + b"a" + b"\x00" * 101],  # a byte over
        [4, struct.pack("<3I", 1, 0, 100) + b"a" + b"\x00" * 100],  # count too high
        [2, struct.pack("<3I", 1, 0, 100) + b"a" + b"\x00" * 100],  # count too low
        [1 << 40, b""],  # a count no body holds
        [-1, b""],
        [1, "text"],
        [1, [b"a"]],  # version 4's array of bin
        [b"a"],  # version 4's field count
    ],
)
def test_malformed_sync_response_bodies_are_decode_errors(tail: list[object]) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb([V, 3, 1, 0, 0, 0, 0, [], *tail], use_bin_type=True))


def test_a_version_4_sync_response_is_refused() -> None:
    old = msgpack.packb([4, 3, 1, 0, 0, 0, 0, [], [b"a", b"b"]], use_bin_type=True)
    with pytest.raises(DecodeError, match="wire version"):
        decode(old)


@given(st.binary(max_size=200))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(messages, st.integers(0, 10_000), st.integers(0, 255))
def test_bit_flips_raise_only_decode_error(msg: object, pos: int, byte: int) -> None:
    data = bytearray(encode(msg))  # type: ignore[arg-type]
    data[pos % len(data)] ^= byte or 1
    with contextlib.suppress(DecodeError):
        decode(bytes(data))


def test_one_msgpack_array_and_compact() -> None:
    data = encode(Ack(3, 100))
    assert msgpack.unpackb(data) == [V, 7, 3, 100]
    assert len(data) <= 8


# ------------------------------------------------------------------ term and seq bounds


def _hb(**kw: int) -> Heartbeat:
    base = dict(term=1, tail_seq=2, commit_seq=1, epoch_term=1, last_term=1)
    base.update(kw)
    return Heartbeat(role=ReplicaRole.REPLICA, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "msg",
    [
        _hb(term=MAX_TERM + 1),
        _hb(term=MAX_U64),
        _hb(epoch_term=MAX_TERM + 1),
        _hb(last_term=MAX_U64),
        _hb(tail_seq=MAX_SEQ + 1),
        _hb(commit_seq=MAX_U64),
        SyncRequest(MAX_TERM + 1, 0, 0, 1, 1),
        SyncRequest(1, MAX_SEQ + 1, 0, 1, 1),
        SyncRequest(1, 0, MAX_U64, 1, 1),
        SyncResponse(1, 1, MAX_SEQ + 1, 0, 0, (), ()),
        SyncResponse(1, 1, 0, MAX_TERM + 1, 0, (), ()),
        SyncResponse(1, 1, 0, 0, MAX_SEQ + 1, (), ()),
        SyncResponse(1, 1, 0, 0, 0, ((MAX_TERM + 1, 0),), ()),
        SyncResponse(1, 1, 0, 0, 0, ((1, MAX_SEQ + 1),), ()),
        Nack(MAX_U64, 1, NackReason.DIVERGED, 0),
        Nack(1, 1, NackReason.DIVERGED, MAX_SEQ + 1),
        Nack(1, 1, NackReason.DIVERGED, 0, MAX_TERM + 1, 0),
        Nack(1, 1, NackReason.DIVERGED, 0, 1, MAX_SEQ + 1),
        VoteRequest(MAX_TERM + 1, 0, 0, 0),
        VoteRequest(1, 1, 1, MAX_SEQ + 1),
        VoteResponse(MAX_U64, True),
        Ack(MAX_TERM + 1, 0),
        Ack(1, MAX_SEQ + 1),
    ],
)
def test_terms_and_seqs_above_the_bound_are_decode_errors(msg: object) -> None:
    data = encode(msg)  # type: ignore[arg-type]   # encodes: still a msgpack uint64
    with pytest.raises(DecodeError):
        decode(data)


@given(st.integers(MAX_TERM + 1, MAX_U64), st.integers(0, 6))
def test_any_out_of_bound_term_is_rejected_in_any_term_field(term: int, which: int) -> None:
    msg = [
        _hb(term=term),
        _hb(epoch_term=term),
        _hb(last_term=term),
        SyncRequest(1, 0, term, 0, 0),
        VoteRequest(1, term, 1, 0),
        VoteResponse(term, False),
        Ack(term, 0),
    ][which]
    with pytest.raises(DecodeError):
        decode(encode(msg))  # type: ignore[arg-type]


def test_values_at_the_bound_and_full_u64_ids_are_accepted() -> None:
    for msg in (
        _hb(
            term=MAX_TERM,
            epoch_term=MAX_TERM,
            last_term=MAX_TERM,
            tail_seq=MAX_SEQ,
            commit_seq=MAX_SEQ,
        ),
        SyncRequest(MAX_TERM, MAX_SEQ, MAX_TERM, MAX_U64, MAX_U64),
        SyncResponse(MAX_TERM, MAX_U64, MAX_SEQ, MAX_TERM, MAX_SEQ, ((MAX_TERM, MAX_SEQ),), ()),
        Nack(MAX_TERM, MAX_U64, NackReason.DIVERGED, MAX_SEQ, MAX_TERM, MAX_SEQ),
    ):
        assert decode(encode(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize("ack", ["leader", "quorum"])
def test_coordinator_fed_the_largest_term_only_emits_decodable_messages(ack: str) -> None:
    """A member at MAX_TERM must not push our next owned term out of range: every
    message the coordinator emits (heartbeats, vote requests, ...) must still decode."""
    a, b, c = 10, 20, 30  # MAX_TERM == 0 (mod 2**24) and b owns 20: b's next is > bound
    config = ReplicationConfig(
        factor=3,
        heartbeat_ms=100,
        ack=ack,  # type: ignore[arg-type]
        placement=PlacementStrategy.pinned([b, a, c]),
    )
    coord = ReplicationCoordinator(b, config, [a, b, c])
    out = coord.tick(0.0)
    hostile = decode(encode(Heartbeat(MAX_TERM, ReplicaRole.LEADER, 0, 0, MAX_TERM, 0)))
    out += coord.step(a, hostile, 0.0)
    assert coord.term == MAX_TERM
    now = 0.0
    for _ in range(100):  # long silence from the "leader": b would campaign every window
        now += 0.1
        out += coord.tick(now)
        out += coord.step(c, Heartbeat(MAX_TERM, ReplicaRole.REPLICA, 0, 0, 0, 0), now)
    sent = [o.msg for o in out if isinstance(o, Send)]
    assert sent, "the coordinator went quiet"
    for m in sent:
        assert decode(encode(m)) == m
    assert coord.term <= MAX_TERM
    assert coord.role is not ReplicaRole.LEADER

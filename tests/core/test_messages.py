"""Codec: every message round-trips; garbage and every prefix raise DecodeError only."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.core.messages import (
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
from netmesh.core.roles import ReplicaRole
from netmesh.errors import DecodeError

u64 = st.integers(0, (1 << 64) - 1)
small = st.integers(0, 1 << 20)
epochs = st.lists(st.tuples(small, small), max_size=5).map(tuple)
payloads = st.lists(st.binary(max_size=64), max_size=8).map(tuple)

messages = st.one_of(
    st.builds(Heartbeat, u64, u64, st.sampled_from(ReplicaRole), u64, u64, u64, u64),
    st.builds(SyncRequest, u64, u64, u64, u64, u64),
    st.builds(SyncResponse, u64, u64, u64, u64, u64, epochs, payloads),
    st.builds(Nack, u64, u64, st.sampled_from(NackReason), u64, u64, u64),
    st.builds(VoteRequest, u64, u64, u64, u64),
    st.builds(VoteResponse, u64, st.booleans()),
    st.builds(Ack, u64, u64),
)

SAMPLE = SyncResponse(7, 42, 10, 3, 9, ((3, 0), (7, 10)), (b"a", b"", b"\x00" * 100))


@given(messages)
def test_round_trip(msg: object) -> None:
    data = encode(msg)  # type: ignore[arg-type]
    assert decode(data) == msg
    assert type(decode(data)) is type(msg)


def test_roles_and_reasons_decode_as_enums() -> None:
    hb = decode(encode(Heartbeat(1, 2, ReplicaRole.LEADER, 3, 4, 5, 6)))
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


@pytest.mark.parametrize("body", [
    [], [1], [2, 1, 0, 0, 1, 0, 0, 0, 0], [1, 99, 0], [1, "x", 0], [1, 7, 1],
    [1, 7, 1, 2, 3], [1, 7, -1, 2], [1, 7, 1, -(1 << 63)], [1, 7, 1.5, 2], [1, 6, 1, 1],
    [1, 1, 1, 2, 9, 3, 4, 5, 6], [1, 4, 1, 2, 42, 3, 0, 0],
    [1, 3, 1, 2, 3, 4, 5, [[1]], []], [1, 3, 1, 2, 3, 4, 5, [], ["text"]],
    [1, 3, 1, 2, 3, 4, 5, [], b"notalist"], {"a": 1}, "str", None,
])
def test_wrong_shapes_are_decode_errors(body: object) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(body, use_bin_type=True))


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
    assert msgpack.unpackb(data) == [1, 7, 3, 100]
    assert len(data) <= 8

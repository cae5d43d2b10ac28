"""Hard state file format: round trip; every prefix, flip and garbage is DecodeError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.errors import DecodeError
from netmesh.log import hardstate
from netmesh.log.hardstate import HardState

u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 2**62)
states = st.builds(HardState, small, st.none() | u64, st.lists(st.tuples(small, small)).map(tuple))


@given(states)
def test_round_trip(state: HardState) -> None:
    assert hardstate.decode(hardstate.encode(state)) == state


def test_every_prefix_and_bit_flip_is_rejected() -> None:
    data = hardstate.encode(HardState(7, 3, ((1, 0), (7, 12))))
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            hardstate.decode(data[:cut])
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(DecodeError):
            hardstate.decode(bytes(bad))


@given(st.binary(max_size=64))
def test_garbage_raises_only_decode_error(junk: bytes) -> None:
    with pytest.raises(DecodeError):
        hardstate.decode(junk)


def test_terms_beyond_the_wire_bound_are_rejected() -> None:
    with pytest.raises(DecodeError):
        hardstate.decode(hardstate.encode(HardState(2**63, None, ())))

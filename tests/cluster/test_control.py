"""Control protocol framing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh.cluster import control
from netmesh.errors import DecodeError

values = st.one_of(st.integers(-5, 2**40), st.binary(max_size=20))
args = st.dictionaries(st.text(max_size=5), values)


@given(req_id=st.integers(0, 2**31), op=st.text(max_size=10), a=args, cut=st.integers(0, 50))
def test_round_trip_in_any_chunking(req_id: int, op: str, a: dict, cut: int) -> None:
    wire = control.request(req_id, op, a) + control.response(req_id, True, [1, b"x"])
    dec = control.FrameDecoder()
    got = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
    assert got == [[control.REQUEST, req_id, op, a], [control.RESPONSE, req_id, True, [1, b"x"]]]


@given(junk=st.binary(min_size=5, max_size=64))
def test_garbage_raises_decode_error_only(junk: bytes) -> None:
    dec = control.FrameDecoder()
    with contextlib.suppress(DecodeError):
        dec.feed(len(junk).to_bytes(4, "little") + junk)


def test_oversized_length_rejected() -> None:
    with pytest.raises(DecodeError):
        control.FrameDecoder().feed((control.MAX_FRAME + 1).to_bytes(4, "little"))

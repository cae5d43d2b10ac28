"""Control protocol framing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmesh import errors
from netmesh.cluster import control
from netmesh.errors import DecodeError, NodeError, NotLeader

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


def test_a_netmesh_error_comes_back_as_its_own_class_with_its_attributes() -> None:
    wire = control.response(7, False, control.error_value(NotLeader("orders", 0x2A)))
    (msg,) = control.FrameDecoder().feed(wire)
    err = control.error_from_value(msg[3], "node 1 append")
    assert type(err) is NotLeader
    assert err.channel == "orders" and err.leader == 0x2A
    assert str(err).startswith("node 1 append: this node is not the leader of 'orders'")


def test_every_public_error_class_survives_the_round_trip() -> None:
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.NetmeshError):
            exc = cls.__new__(cls)
            Exception.__init__(exc, "boom")
            err = control.error_from_value(control.error_value(exc), "node 0 op")
            assert type(err) is cls and str(err) == "node 0 op: boom"


def test_a_foreign_error_becomes_a_node_error_naming_its_type() -> None:
    value = control.error_value(PermissionError(13, "Permission denied"))
    err = control.error_from_value(value, "node 2 open_channel")
    assert type(err) is NodeError
    assert str(err) == "node 2 open_channel: PermissionError: [Errno 13] Permission denied"


def test_only_requests_and_responses_are_accepted() -> None:
    with pytest.raises(DecodeError, match="shape"):
        control.FrameDecoder().feed(control.encode([2, 0, "hello", None]))

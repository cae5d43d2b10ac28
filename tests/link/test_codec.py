"""Datagram framing and message bodies: round trips, prefixes, garbage, packing."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.errors import DecodeError
from netmesh.link import codec
from netmesh.link.codec import (
    FRAGMENT_PART_OVERHEAD,
    MIN_FRAGMENT_CHUNK,
    Reassembler,
    fragment_chunk_size,
    pack_bodies,
    unpack_body,
)
from netmesh.link.handshake import INITIATION_LEN, MAC_LEN, RESPONSE_LEN, mac1_key, mac1_ok

MAC_KEY = mac1_key(b"p" * 32, b"r" * 32)
INIT = codec.encode_initiation(7, bytes(range(INITIATION_LEN)), MAC_KEY)
RESP = codec.encode_response(8, 9, bytes(RESPONSE_LEN), MAC_KEY)
DATA = codec.encode_data_header(10, 2**40) + b"\x01" * 30
COOKIE = codec.encode_cookie_reply(11, bytes(range(12)), bytes(range(32)))


def test_round_trips() -> None:
    assert codec.decode(INIT) == codec.Initiation(7, bytes(range(INITIATION_LEN)))
    assert codec.decode(RESP) == codec.Response(8, 9, bytes(RESPONSE_LEN))
    assert codec.decode(DATA) == codec.DataHeader(10, 2**40)
    assert len(codec.encode_data_header(1, 2)) == codec.DATA_HEADER_LEN == 16
    assert len(INIT) == codec.INITIATION_SIZE == 8 + INITIATION_LEN + 2 * MAC_LEN
    assert len(RESP) == codec.RESPONSE_SIZE == 12 + RESPONSE_LEN + MAC_LEN
    assert codec.decode(COOKIE) == codec.CookieReply(11, bytes(range(12)), bytes(range(32)))
    assert len(COOKIE) == codec.COOKIE_SIZE == 8 + 12 + 32
    assert INIT.endswith(bytes(MAC_LEN))  # no cookie: all-zero mac2
    assert (
        codec.mac1_of(INIT) == INIT[-2 * MAC_LEN : -MAC_LEN] and codec.mac1_of(RESP) == RESP[-16:]
    )


@pytest.mark.parametrize("datagram", [INIT, RESP], ids=["init", "resp"])
def test_mac1_covers_the_whole_handshake_datagram(datagram: bytes) -> None:
    part = codec.mac1_part(datagram)  # everything up to and with mac1 (not mac2)
    assert mac1_ok(MAC_KEY, part)
    other = mac1_key(b"q" * 32, b"r" * 32)  # another PSK
    assert not mac1_ok(other, part)
    assert not mac1_ok(mac1_key(b"p" * 32, b"s" * 32), part)  # another receiver
    for i in range(len(part)):  # header (indices), noise message and mac itself
        bad = bytearray(datagram)
        bad[i] ^= 1
        assert not mac1_ok(MAC_KEY, codec.mac1_part(bytes(bad))), i
    assert not mac1_ok(MAC_KEY, part[:-1]) and not mac1_ok(MAC_KEY, b"")
    unkeyed = codec.encode_initiation(7, bytes(range(INITIATION_LEN)))
    assert unkeyed.endswith(bytes(2 * MAC_LEN))
    assert not mac1_ok(MAC_KEY, codec.mac1_part(unkeyed))


@pytest.mark.parametrize(
    "datagram", [INIT, RESP, COOKIE, DATA], ids=["init", "resp", "cookie", "data"]
)
def test_every_prefix_raises_decode_error(datagram: bytes) -> None:
    minimum = codec.DATA_OVERHEAD if datagram is DATA else len(datagram)
    for n in range(minimum):
        with pytest.raises(DecodeError):
            codec.decode(datagram[:n])
    with pytest.raises(codec.Truncated):
        codec.decode(datagram[: minimum - 1])


@pytest.mark.parametrize("datagram", [INIT, RESP, COOKIE], ids=["init", "resp", "cookie"])
def test_trailing_garbage_on_fixed_messages_raises(datagram: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(datagram + b"\x00")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"\x01" + d[1:],  # version 1 (no mac2, no cookies) is not spoken
        lambda d: d[:1] + b"\x09" + d[2:],
        lambda d: d[:2] + b"\x01\x00" + d[4:],
    ],
    ids=["version", "type", "reserved"],
)
def test_bad_header_fields(mutate) -> None:
    for d in (INIT, RESP, COOKIE, DATA):
        with pytest.raises(DecodeError):
            codec.decode(mutate(d))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_only_decode_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        codec.decode(data)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.binary()
            | st.text()
            | st.floats(allow_nan=False),
            lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=20,
        ).map(msgpack.packb),
    )
)
def test_fuzz_unpack_body_only_decode_error_escapes(data: bytes) -> None:
    try:
        entries = unpack_body(data)
    except DecodeError:
        return
    for e in entries:
        assert e[0] in (0, 1)


def body_prefix_cases() -> list[bytes]:
    body, _ = pack_bodies([("ch", [b"a" * 10, b"b" * 300])], 1400, 0)
    return body


def test_body_prefixes_and_trailing_garbage() -> None:
    (body,) = body_prefix_cases()
    assert unpack_body(body) == [[0, "ch", [b"a" * 10, b"b" * 300]]]
    for n in range(len(body)):
        with pytest.raises(DecodeError):
            unpack_body(body[:n])
    with pytest.raises(DecodeError):
        unpack_body(body + b"\x00")


@pytest.mark.parametrize(
    "bad",
    [
        [[2, "c", []]],
        [[0, "c"]],
        [[0, 5, []]],
        [[0, "c", ["str"]]],
        [[True, "c", []]],
        [[1, "c", 0, 2, 2, b"x"]],
        [[1, "c", -1, 0, 1, b"x"]],
        [[1, "c", 0, 0, 1, "x"]],
        [[]],
        [5],
        {"a": 1},
    ],
)
def test_structurally_bad_bodies(bad: object) -> None:
    with pytest.raises(DecodeError):
        unpack_body(msgpack.packb(bad))


def _unpack_all(bodies: list[bytes]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    r = Reassembler(max_message=1 << 24, max_bytes=1 << 25, min_part=1)
    for b in bodies:
        for e in unpack_body(b):
            if e[0] == 0:
                out.extend((e[1], m) for m in e[2])
            else:
                whole = r.add(*e[1:])
                if whole is not None:
                    out.append((e[1], whole))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "chan/b", "é" * 40]),
            st.lists(st.binary(max_size=5000), max_size=20),
        ),
        max_size=6,
    ),
    st.integers(200, 9000),
)
def test_pack_bodies_respects_budget_and_order(groups, budget: int) -> None:
    bodies, next_id = pack_bodies(groups, budget, 5)
    assert all(len(b) <= budget for b in bodies)
    expected = [(ch, m) for ch, msgs in groups for m in msgs]
    assert _unpack_all(bodies) == expected
    assert next_id >= 5


def test_small_messages_are_packed_densely() -> None:
    msgs = [bytes(64)] * 1000
    bodies, _ = pack_bodies([("c", msgs)], 1368, 0)
    per_body = 1000 / len(bodies)
    assert per_body >= 19  # 66 bytes per message on the wire
    assert all(len(b) <= 1368 for b in bodies)


def test_large_message_is_fragmented() -> None:
    big = bytes(range(256)) * 40
    bodies, nid = pack_bodies([("c", [b"before", big, b"after"])], 1000, 3)
    assert nid == 4
    assert len(bodies) >= len(big) // 1000
    assert _unpack_all(bodies) == [("c", b"before"), ("c", big), ("c", b"after")]


def test_reassembler_bounds_memory_and_ignores_duplicates() -> None:
    over = FRAGMENT_PART_OVERHEAD
    r = Reassembler(max_message=4000, max_bytes=5000, max_pending=2, min_chunk=1000)
    assert r.add("c", 1, 0, 3, b"x" * 1000) is None
    assert r.add("c", 1, 0, 3, b"x" * 1000) is None  # duplicate
    assert r.buffered == 1000 + over
    assert r.add("c", 2, 0, 2, b"y" * 1000) is None
    assert r.add("c", 3, 0, 2, b"z" * 1000) is None  # third pending: oldest evicted
    assert r.evicted == 1 and r.pending == 2
    assert r.add("c", 1, 1, 3, b"x" * 300) is None  # id 1 restarted: evicts id 2
    assert r.evicted == 2
    assert r.add("c", 3, 1, 2, b"z" * 10) == b"z" * 1010
    assert r.pending == 1 and r.buffered == 300 + over
    with pytest.raises(DecodeError):
        r.add("c", 9, 0, 5, b"")  # count above max_message / min_chunk
    with pytest.raises(DecodeError):
        r.add("c", 1, 0, 4, b"x" * 300)  # count changed
    assert r.buffered <= 5000


def test_reassembler_refuses_short_non_final_chunks() -> None:
    r = Reassembler(max_message=1 << 20, max_bytes=1 << 21, min_chunk=1000)
    for short in (b"", b"x" * (MIN_FRAGMENT_CHUNK - 1)):
        with pytest.raises(DecodeError):
            r.add("c", 1, 0, 3, short)
    assert r.pending == 0 and r.buffered == 0
    assert r.add("c", 1, 0, 2, b"x" * MIN_FRAGMENT_CHUNK) is None
    assert r.add("c", 1, 1, 2, b"") == b"x" * MIN_FRAGMENT_CHUNK  # the last may be short
    # every sender config (max_datagram >= 576, channel <= 255 bytes) is accepted
    assert fragment_chunk_size(576 - codec.DATA_OVERHEAD, "c" * 255) >= MIN_FRAGMENT_CHUNK


def test_reassembler_charges_per_part_overhead() -> None:
    # the reviewer's attack: many pending messages each missing one small part
    limit = 1 << 20
    r = Reassembler(max_message=16 << 20, max_bytes=limit, min_chunk=1079)
    chunk = b"x" * MIN_FRAGMENT_CHUNK
    for fid in range(64):
        for i in range(200):
            r.add("c", fid, i, r.max_count, chunk)
            assert r.buffered <= limit
    real = sum(
        len(p) + FRAGMENT_PART_OVERHEAD for _, parts in r._pending.values() for p in parts.values()
    )
    assert real == r.buffered and r.evicted > 0


def test_reassembler_streams_never_splice() -> None:
    # a lost middle fragment of an old sender incarnation, then the same frag id on
    # a new session: nothing is delivered spliced
    r = Reassembler(16 << 20, 32 << 20, min_chunk=256)
    old = [bytes([0xAA]) * 300] * 3
    new = [bytes([0xBB]) * 300] * 3
    r.add("c", 0, 0, 3, old[0], session=111)
    r.add("c", 0, 2, 3, old[2], session=111)
    out = [r.add("c", 0, i, 3, new[i], session=222) for i in range(3)]
    assert out[:2] == [None, None] and out[2] == b"".join(new)
    assert r.pending == 1
    r.drop_session(111)
    assert r.pending == 0 and r.buffered == 0 and r.evicted == 0

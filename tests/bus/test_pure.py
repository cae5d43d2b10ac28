"""The bus's pure parts: filter language, cursor format, shard hash, dedup ids, config."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmesh.bus import BatchConfig, compile_filter
from netmesh.bus.cursor import Cursor, decode
from netmesh.bus.dedup import load_identity, split_dedup_id
from netmesh.bus.shard import key_bytes, shard_for
from netmesh.bus.types import Batch
from netmesh.errors import BadCursor, ConfigError, FilterError

DOC = {"type": "order", "n": 1, "ok": True, "user": {"id": 7, "tags": ["a", "b"]}, "z": None}


def m(spec: object, doc: object = DOC) -> bool:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return compile_filter(spec)(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"path": "type", "value": "order"}, True),
        ({"path": "type", "value": "refund"}, False),
        ({"$eq": {"path": "user.id", "value": 7}}, True),
        ({"path": "user.id", "value": 7.0}, True),  # numbers by value
        ({"path": "n", "value": True}, False),  # true is not 1
        ({"path": "ok", "value": 1}, False),
        ({"path": "ok", "value": True}, True),
        ({"path": "z", "value": None}, True),
        ({"path": "missing", "value": None}, False),  # unresolved never equals
        ({"path": "user.tags.1", "value": "b"}, True),
        ({"path": "user.tags.2", "value": "b"}, False),
        ({"path": "type.x", "value": "o"}, False),
        ({"path": "user.tags", "value": ["a", "b"]}, True),
        ({"path": "user", "value": {"tags": ["a", "b"], "id": 7}}, True),
        ({"$and": [{"path": "type", "value": "order"}, {"path": "n", "value": 1}]}, True),
        ({"$and": [{"path": "type", "value": "order"}, {"path": "n", "value": 2}]}, False),
        ({"$or": [{"path": "type", "value": "x"}, {"path": "n", "value": 1}]}, True),
        ({"$or": []}, False),
        ({"$and": []}, True),
        ({"$not": {"path": "type", "value": "order"}}, False),
        ({"$not": {"path": "missing", "value": 1}}, True),
        ('{"path": "type", "value": "order"}', True),  # JSON text form
    ],
)
def test_filter_semantics(spec: object, expected: bool) -> None:
    assert m(spec) is expected


def test_filter_on_non_json_payload_matches_no_equality() -> None:
    assert m({"path": "a", "value": 1}, b"\xff not json") is False
    assert m({"$not": {"path": "a", "value": 1}}, b"plain") is True


@pytest.mark.parametrize(
    "spec",
    [
        [],
        {"path": "a"},
        {"path": "", "value": 1},
        {"path": "a..b", "value": 1},
        {"path": 3, "value": 1},
        {"$and": {"path": "a", "value": 1}},
        {"$xor": []},
        {"$and": [], "$or": []},
        {"$eq": [1, 2]},
        "{not json",
        {"$not": [1]},
    ],
)
def test_bad_filters_raise_filter_error(spec: object) -> None:
    with pytest.raises(FilterError):
        compile_filter(spec)  # type: ignore[arg-type]


@settings(deadline=None)  # a loaded machine must not turn a slow example into a failure
@given(st.dictionaries(st.integers(0, 1000), st.text(max_size=30), max_size=20), st.integers(0, 99))
def test_cursor_round_trip(positions: dict[int, str], start: int) -> None:
    c = decode(Cursor(positions, start).encode())
    assert c.positions == positions and c.start == start


@pytest.mark.parametrize("bad", ["!!!", "e30", "eyJ2IjoyfQ", "eyJ2IjoxLCJwIjp7ImEiOiIxIn19", "a"])
def test_bad_cursor(bad: str) -> None:
    with pytest.raises(BadCursor):
        decode(bad)


def test_empty_cursor_is_the_beginning() -> None:
    assert decode(None) == Cursor() and decode("") == Cursor()


def test_shard_hash_is_stable_and_spread() -> None:
    # golden values: CRC-32C (RFC 3720) of b"123456789" is 0xE3069283
    assert shard_for(b"123456789", 1 << 32) == 0xE3069283
    assert shard_for(b"order-1", 8) == shard_for(key_bytes("order-1"), 8)
    assert key_bytes(42) == b"42"
    counts = [0] * 4
    for i in range(4000):
        counts[shard_for(key_bytes(i), 4)] += 1
    assert min(counts) > 800, counts
    with pytest.raises(TypeError):
        key_bytes(True)


def test_batch_dedup_ids() -> None:
    b = Batch(3, 1 << 32, "00ff00ff00ff00ff", [b"a", b"b"], [1, 2])
    assert b.dedup_id(1) == "00ff00ff00ff00ff:3:4294967296:1"
    assert split_dedup_id(b.dedup_id(1)) == ("00ff00ff00ff00ff", 3, 1 << 32, 1)


def test_nonce_file_keeps_the_nonce_and_bumps_the_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "nonce"
    a, b = load_identity(path), load_identity(path)
    assert a.nonce == b.nonce and len(a.nonce) == 16
    assert (a.session, b.session) == (0, 1) and b.first_seq == 1 << 32
    assert load_identity(None).nonce != load_identity(None).nonce
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="nonce"):
        load_identity(path)


@pytest.mark.parametrize("args", [(0, 10, 0.01), (10, 5, 0.01), (1, 10, 0), (1, 2_000_000, 0.01)])
def test_batch_config_checks(args: tuple[int, int, float]) -> None:
    with pytest.raises(ConfigError):
        BatchConfig(*args)

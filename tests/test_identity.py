"""EntityKeypair: generation, node id derivation, persistence."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from netmesh.errors import ConfigError
from netmesh.identity import EntityKeypair, node_id_of


def test_generate_gives_distinct_keys_and_derived_id() -> None:
    a, b = EntityKeypair.generate(), EntityKeypair.generate()
    assert a.public_key != b.public_key
    assert len(a.public_key) == 32 and len(a.private_key) == 32
    digest = hashlib.blake2s(a.public_key, key=b"net-node-id-v1").digest()
    assert a.node_id == int.from_bytes(digest[:8], "little") == node_id_of(a.public_key)
    assert 0 <= a.node_id < 1 << 64
    assert "private_key" not in repr(a)


def test_save_load_round_trip_with_mode_0600(tmp_path) -> None:
    kp = EntityKeypair.generate()
    path = tmp_path / "node.key"
    kp.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert EntityKeypair.load(path) == kp
    kp2 = EntityKeypair.generate()
    kp2.save(path)  # replaces atomically
    assert EntityKeypair.load(path) == kp2
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_load_rejects_malformed_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        EntityKeypair.load(path)

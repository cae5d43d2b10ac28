"""EntityKeypair: generation, node id derivation, persistence."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from netmesh.errors import ConfigError
from netmesh.identity import (
    EntityKeypair,
    HandshakeClock,
    clock_file_of,
    next_timestamp,
    node_id_of,
)


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
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        EntityKeypair.load(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_load_refuses_key_files_others_can_access(tmp_path, mode: int) -> None:
    kp = EntityKeypair.generate()
    path = tmp_path / "node.key"
    kp.save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        EntityKeypair.load(path)
    path.chmod(0o400)
    assert EntityKeypair.load(path) == kp


def test_load_refuses_non_regular_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="regular"):
        EntityKeypair.load(tmp_path)  # a directory


def test_save_never_writes_through_a_planted_temp_name(tmp_path) -> None:
    # the old fixed name "<path>.tmp<pid>" could be pre-created as a symlink
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    path = tmp_path / "node.key"
    (tmp_path / f"node.key.tmp{os.getpid()}").symlink_to(victim)
    kp = EntityKeypair.generate()
    kp.save(path)
    assert victim.read_bytes() == b"untouched"
    assert not path.is_symlink() and EntityKeypair.load(path) == kp
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        EntityKeypair.generate().save(tmp_path / "node.key")
    assert list(tmp_path.iterdir()) == []


def test_load_and_save_bind_the_keypair_to_its_file(tmp_path) -> None:
    path = tmp_path / "node.key"
    kp = EntityKeypair.generate()
    assert kp.key_file is None
    bound = kp.save(path)
    assert bound == kp and bound.key_file == str(path)
    assert EntityKeypair.load(path).key_file == str(path)
    assert clock_file_of(path) == str(path) + ".hsclock"


def test_handshake_clock_never_goes_backwards_across_restarts(tmp_path) -> None:
    path = tmp_path / "node.key.hsclock"
    wall = [1_000 * 10**9]
    c = HandshakeClock(path, lambda: wall[0], reserve_ns=10**9)
    t1 = c.next_ns()
    assert t1 == wall[0] and c.writes == 1
    assert int.from_bytes(path.read_bytes(), "big") == t1 + 10**9  # a ceiling above t1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    wall[0] -= 5 * 10**9  # the clock steps back: still strictly increasing
    t2 = c.next_ns()
    assert t2 == t1 + 1 and c.writes == 1  # below the ceiling: no write
    # a restart with the clock still 5 s behind starts above everything issued
    c2 = HandshakeClock(path, lambda: wall[0], reserve_ns=10**9)
    t3 = c2.next_ns()
    assert t3 > t2 and t3 == t1 + 10**9 + 1 and c2.writes == 1
    # the file is rewritten at most once per reserve of clock progress
    wall[0] = t3
    for _ in range(100):  # 2.5 s of progress with a 1 s reserve: two more writes
        wall[0] += 25 * 10**6
        c2.next_ns()
    assert c2.writes == 1 + 2
    assert next_timestamp(5, 9) == 10 and next_timestamp(11, 9) == 11


def test_handshake_clock_in_memory_and_corrupt_sidecar(tmp_path) -> None:
    c = HandshakeClock(None, lambda: 7)
    assert [c.next_ns(), c.next_ns()] == [7, 8] and c.writes == 0
    bad = tmp_path / "k.hsclock"
    bad.write_bytes(b"123")
    with pytest.raises(ConfigError, match="8 bytes"):
        HandshakeClock(bad)


def test_handshake_clock_write_failure_is_counted_and_stays_monotonic(tmp_path) -> None:
    path = tmp_path / "missing-dir" / "k.hsclock"  # cannot be created
    c = HandshakeClock(path, lambda: 100)
    assert [c.next_ns(), c.next_ns()] == [100, 101]
    assert c.write_errors == 2 and c.writes == 0

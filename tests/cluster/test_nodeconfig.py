"""Node daemon configuration files: good files load into frozen dataclasses, every bad
key or value is one ConfigError line naming the key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from netmesh.cluster import nodeconfig
from netmesh.errors import ConfigError
from netmesh.identity import EntityKeypair

KP = [EntityKeypair.generate() for _ in range(3)]

GOOD = f"""
[node]
bind = "127.0.0.2:7411"
key_file = "keys/node.key"
psk_file = "/etc/netmesh/cluster.psk"
data_dir = "data"
name = "n2"
metrics = "127.0.0.2:9411"

[[peers]]
address = "127.0.0.1:7411"
public_key = "{KP[1].public_key.hex()}"

[[peers]]
address = "[::1]:7412"
public_key = "{KP[2].public_key.hex()}"

[[channels]]
name = "orders"
factor = 3
ack = "quorum"
heartbeat_ms = 150
retention_max_events = 1000000
max_payload = 65536

[[channels]]
name = "audit/log"
placement = ["{KP[0].public_key.hex()}", {KP[1].node_id}]
leader_pinned = {KP[0].node_id}

[[channels]]
name = "scratch"
replicated = false
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    cfg = nodeconfig.load(write(tmp_path, GOOD))
    assert cfg.path == str(tmp_path / "node.toml")
    n = cfg.node
    assert n.bind == ("127.0.0.2", 7411) and n.metrics == ("127.0.0.2", 9411)
    assert n.key_file == str(tmp_path / "keys" / "node.key")
    assert n.psk_file == "/etc/netmesh/cluster.psk"  # absolute stays
    assert n.data_dir == str(tmp_path / "data") and n.name == "n2"
    assert [p.node_id for p in cfg.peers] == [KP[1].node_id, KP[2].node_id]
    assert cfg.peers[1].address == ("::1", 7412)
    orders, audit, scratch = cfg.channels
    assert orders.replication is not None and orders.replication.ack == "quorum"
    assert orders.replication.heartbeat_ms == 150
    assert orders.options_dict() == {"retention_max_events": 1000000, "max_payload": 65536}
    assert audit.replication is not None
    assert audit.replication.placement.nodes == (KP[0].node_id, KP[1].node_id)
    assert audit.replication.leader_pinned == KP[0].node_id
    assert scratch.replication is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.name = "x"  # type: ignore[misc]


def test_standard_placement_stays_standard_for_the_daemon_to_resolve(tmp_path: Path) -> None:
    """A daemon opens a standard channel with PlacementStrategy.standard() (the set is
    resolved from announcements at run time), not a list fixed from the file."""
    text = GOOD.replace("factor = 3", "factor = 2")
    cfg = nodeconfig.load(write(tmp_path, text))
    me = KP[0].node_id
    repl = cfg.resolve(cfg.channels[0], me)
    assert repl is not None and repl.placement.kind == "standard"
    assert repl.factor == 2 and repl.ack == "quorum" and repl.heartbeat_ms == 150
    pinned = cfg.resolve(cfg.channels[1], me)
    assert pinned is not None and pinned.placement.kind == "pinned"
    assert cfg.resolve(cfg.channels[2], me) is None
    assert cfg.node.announce_interval_ms == nodeconfig.DEFAULT_ANNOUNCE_INTERVAL_MS
    fast = nodeconfig.load(
        write(tmp_path, text.replace("[node]", "[node]\nannounce_interval_ms = 200"))
    )
    assert fast.node.announce_interval_ms == 200


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[node]", "[node]\nport = 1"), "node.port: unknown key"),
        (("[node]", "[node]\nannounce_interval_ms = 5"), "node.announce_interval_ms: must be"),
        (("[[peers]]", "[[peer]]"), "peer: unknown key"),
        (('name = "n2"', 'name = "-bad"'), "node.name:"),
        (('bind = "127.0.0.2:7411"', 'bind = "127.0.0.2"'), "node.bind: must be 'host:port'"),
        (('bind = "127.0.0.2:7411"', "bind = 7411"), "node.bind: must be a non-empty string"),
        (('metrics = "127.0.0.2:9411"', 'metrics = "x:0"'), "node.metrics: port must be"),
        (('data_dir = "data"\n', ""), "node.data_dir: missing"),
        ((f'"{KP[2].public_key.hex()}"', '"abc"'), "peers[1].public_key: must be 64 hex digits"),
        (('address = "127.0.0.1:7411"', 'address = "[::1]:7412"'), "peers[1].address: same"),
        (('address = "127.0.0.1:7411"', 'adress = "127.0.0.1:7411"'), "peers[0].adress: unknown"),
        (("factor = 3", "factor = 4"), "channels[0].factor: 4 holders, but only 3 nodes"),
        (("factor = 3", "factor = true"), "channels[0].factor: must be an integer"),
        (('ack = "quorum"', 'ack = "all"'), "channels[0].ack: must be one of"),
        (("heartbeat_ms = 150", "heartbeat_ms = 10"), "channels[0].heartbeat_ms: must be 50.."),
        (("max_payload = 65536", "max_payload = 0"), "channels[0].max_payload: must be >= 1"),
        (('name = "orders"', 'name = "bad name!"'), "channels[0].name:"),
        (('name = "scratch"', 'name = "orders"'), "channels[2].name: 'orders' is also"),
        (("leader_pinned = ", "leader_pinned = 5 #"), "channels[1].leader_pinned: must be one of"),
        (("replicated = false", "replicated = false\nfactor = 2"), "channels[2].factor: means"),
        (("retention_max_events = 1000000", 'fsync = "never"'), "channels[0].fsync:"),
        (("[[channels]]", "[[channels]]\nretention = 3"), "channels[0].retention: unknown key"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        nodeconfig.load(write(tmp_path, GOOD.replace(old, new, 1)))
    text = str(err.value)
    assert message in text
    assert "\n" not in text and text.startswith(str(tmp_path / "node.toml"))


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        nodeconfig.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        nodeconfig.load(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="node: missing"):
        nodeconfig.load(write(tmp_path, ""))


def test_secrets_are_refused_when_others_may_read_them(tmp_path: Path) -> None:
    cfg = nodeconfig.load(write(tmp_path, GOOD.replace("/etc/netmesh/", "")))
    with pytest.raises(ConfigError, match=r"node.key_file: .* does not exist .*keygen"):
        nodeconfig.load_secrets(cfg)
    (tmp_path / "keys").mkdir()
    KP[0].save(tmp_path / "keys" / "node.key")
    with pytest.raises(ConfigError, match=r"node.psk_file: .* does not exist"):
        nodeconfig.load_secrets(cfg)
    psk = tmp_path / "cluster.psk"
    psk.write_text(os.urandom(32).hex() + "\n")
    os.chmod(psk, 0o640)
    with pytest.raises(ConfigError, match=r"node.psk_file: .* mode 0640 .*chmod 600"):
        nodeconfig.load_secrets(cfg)
    os.chmod(psk, 0o600)
    kp, key = nodeconfig.load_secrets(cfg)
    assert kp.node_id == KP[0].node_id and len(key) == 32
    psk.write_bytes(b"short")
    with pytest.raises(ConfigError, match="must hold 32 bytes"):
        nodeconfig.load_secrets(cfg)
    psk.write_bytes(os.urandom(32))  # raw bytes work too
    assert len(nodeconfig.load_secrets(cfg)[1]) == 32
    os.chmod(tmp_path / "keys" / "node.key", 0o644)
    with pytest.raises(ConfigError, match=r"node.key_file: .*chmod 600"):
        nodeconfig.load_secrets(cfg)
    # a peer with this node's own key
    os.chmod(tmp_path / "keys" / "node.key", 0o600)
    mine = GOOD.replace("/etc/netmesh/", "").replace(KP[1].public_key.hex(), KP[0].public_key.hex())
    mine = mine.replace(f", {KP[1].node_id}]", "]")
    cfg = nodeconfig.load(write(tmp_path, mine))
    with pytest.raises(ConfigError, match=r"peers\[0\].public_key: is this node's own key"):
        nodeconfig.load_secrets(cfg)


def test_the_deploy_example_loads(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "deploy" / "node.toml.example"
    text = example.read_text()
    for kp in KP[1:]:
        start = text.index('"<64 hex digits')
        text = text[:start] + f'"{kp.public_key.hex()}"' + text[text.index(">", start) + 2 :]
    cfg = nodeconfig.load(write(tmp_path, text))
    assert cfg.node.bind == ("10.0.0.2", 7411) and cfg.node.data_dir == "/var/lib/netmesh"
    assert cfg.node.key_file == str(tmp_path / "node.key")
    assert [c.name for c in cfg.channels] == ["orders", "local/scratch"]
    assert len(cfg.peers) == 2

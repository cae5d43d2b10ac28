"""Cluster arguments are checked where they enter (issue 16 §2), before any process
is asked: ConfigError naming the argument. No node process is started here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import netmesh
from netmesh import ChannelNameError, ChannelNotOpen, ConfigError, ReplicationConfig
from netmesh.cluster.cluster import Cluster
from netmesh.config import PlacementStrategy


@pytest.fixture
def idle() -> Iterator[Cluster]:
    """A two-node cluster whose processes are never started."""
    c = Cluster(nodes=2, start=False)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"nodes": "3"}, "nodes"),
        ({"psk": "x" * 32}, "psk"),
        ({"psk": b"short"}, "psk"),
        ({"heartbeat_ms": 0}, "heartbeat_ms"),
        ({"ring_bytes": 1000}, "ring_bytes"),
        ({"max_datagram": 100}, "max_datagram"),
        ({"mesh_heartbeat": 3.0}, "session_timeout"),
        ({"restart_policy": "always"}, "restart_policy"),
    ],
)
def test_bad_constructor_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Cluster(start=False, **kwargs)


def test_a_str_psk_says_bytes_not_str() -> None:
    with pytest.raises(ConfigError, match="got a str: pass bytes"):
        Cluster(psk="0123456789abcdef0123456789abcdef", start=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["file", "/sys/netmesh-test", "/proc/netmesh-test"])
def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path, where: str) -> None:
    if where == "file":
        (tmp_path / "f").write_text("not a directory")
        where = str(tmp_path / "f" / "sub")
    with pytest.raises(ConfigError, match="data_dir"):
        Cluster(data_dir=where, start=False)


def test_a_data_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        Cluster(data_dir=str(tmp_path / "f"), start=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_data_dir_is_a_config_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        Cluster(data_dir=str(ro), start=False)


def test_node_indexes_out_of_range_are_config_errors(idle: Cluster) -> None:
    for call in (
        lambda: idle.kill(9),
        lambda: idle.stop(-1),
        lambda: idle.restart(2),
        lambda: idle.next_seq(9, "x"),
        lambda: idle.role(True, "x"),  # type: ignore[arg-type]
        lambda: idle.producer(5, "x"),
    ):
        with pytest.raises(ConfigError, match=r"node must be a node index in 0\.\.1"):
            call()


def test_partition_groups_must_be_disjoint_node_indexes(idle: Cluster) -> None:
    with pytest.raises(ConfigError, match="node 0 is in two partition groups"):
        idle.partition([0], [0, 1])
    with pytest.raises(ConfigError, match="node index"):
        idle.partition([0], [7])
    assert idle.blocked == {0: set(), 1: set()}


def test_factor_larger_than_the_cluster_is_refused(idle: Cluster) -> None:
    with pytest.raises(ConfigError, match="factor 3 is larger than the cluster"):
        idle.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
    with pytest.raises(ConfigError, match="not nodes of this cluster"):
        idle.open_channel("orders", ReplicationConfig(placement=PlacementStrategy.pinned([1, 2])))
    assert idle.channels == {}


def test_channel_option_typos_and_bad_names_are_refused_up_front(idle: Cluster) -> None:
    with pytest.raises(ConfigError, match=r"option\(s\) \['max_paylod'\]; valid: .*max_payload"):
        idle.open_channel("orders", max_paylod=10)
    with pytest.raises(ConfigError, match="max_payload"):
        idle.open_channel("orders", max_payload=0)
    with pytest.raises(ChannelNameError):
        idle.open_channel("a b")
    assert idle.channels == {} and idle.channel_options == {}


def test_unknown_channels_and_bad_ranges(idle: Cluster) -> None:
    with pytest.raises(ChannelNotOpen, match="'nope' was not opened on this cluster"):
        idle.role(0, "nope")
    with pytest.raises(ChannelNotOpen):
        idle.producer(0, "nope")
    with pytest.raises(ConfigError, match="start=-5"):
        idle.read_range(0, "nope", -5, 2)
    with pytest.raises(ConfigError, match="start <= end"):
        idle.read_range(0, "nope", 5, 2)


def test_cluster_heartbeat_is_the_channels_default_and_an_explicit_one_wins(
    idle: Cluster,
) -> None:
    idle.heartbeat_ms = 120
    idle.open_channel("a", ReplicationConfig(factor=2))
    idle.open_channel("b", ReplicationConfig(factor=2, heartbeat_ms=500))
    a, b = idle.channels["a"], idle.channels["b"]
    assert a is not None and a.heartbeat_ms == 120
    assert b is not None and b.heartbeat_ms == 500
    assert a.placement.nodes == tuple(idle.node_ids)


def test_every_public_exception_is_importable_from_netmesh() -> None:
    import inspect

    from netmesh import errors

    public = {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, Exception)}
    assert public <= set(netmesh.__all__)
    assert all(getattr(netmesh, n) is getattr(errors, n) for n in public)
    from netmesh import Lagged, NodeError  # noqa: F401  (the README names them)

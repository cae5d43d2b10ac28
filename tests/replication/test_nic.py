"""The "auto" NIC peak of the replication budget (issue 17 §2): the rules of
netmesh.replication.nic on fake interface tables and a fake /sys/class/net."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netmesh.config import DEFAULT_NIC_PEAK_BYTES_PER_S, ReplicationConfig
from netmesh.errors import ConfigError
from netmesh.replication.budget import UnlimitedBudget, budget_rate, replication_budget
from netmesh.replication.nic import choose_nic_peak, resolve_config, resolve_nic_peak

ADDRS = {"lo": ["127.0.0.1", "::1"], "eth0": ["192.0.2.2", "fe80::1%eth0"], "eth1": ["10.0.0.5"]}
SPEEDS = {"eth0": 10_000, "eth1": -1}


def choose(host: str, default_route: str | None = "eth0") -> int | None:
    return choose_nic_peak(host, ADDRS, lambda i: i == "lo", lambda i: SPEEDS.get(i), default_route)


def test_loopback_is_unlimited() -> None:
    assert choose("127.0.0.1") is None
    assert choose("127.0.0.9") is None  # all of 127/8
    assert choose("::1") is None


def test_the_bound_interface_speed_in_bytes_per_second() -> None:
    assert choose("192.0.2.2") == 10_000 * 125_000  # 10 Gbit/s = 1.25 GB/s
    assert choose("fe80::1") == 10_000 * 125_000  # zone ids do not hide the address


def test_unknown_speed_or_interface_falls_back_to_the_documented_default() -> None:
    assert choose("10.0.0.5") == DEFAULT_NIC_PEAK_BYTES_PER_S  # speed -1
    assert choose("203.0.113.7") == DEFAULT_NIC_PEAK_BYTES_PER_S  # no interface has it
    assert choose("not-an-address") == DEFAULT_NIC_PEAK_BYTES_PER_S


def test_wildcard_bind_uses_the_default_route_interface() -> None:
    assert choose("0.0.0.0") == 10_000 * 125_000
    assert choose("::") == 10_000 * 125_000
    assert choose("0.0.0.0", default_route="eth1") == DEFAULT_NIC_PEAK_BYTES_PER_S
    assert choose("0.0.0.0", default_route=None) == DEFAULT_NIC_PEAK_BYTES_PER_S


def fake_sysfs(root: Path, ifaces: dict[str, tuple[str, str | None]]) -> str:
    """/sys/class/net lookalike: name -> (flags hex text, speed text or None: absent)."""
    for name, (flags, speed) in ifaces.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "flags").write_text(flags + "\n")
        if speed is not None:
            (d / "speed").write_text(speed + "\n")
    return str(root)


def test_resolve_reads_speed_and_flags_from_sysfs(tmp_path: Path) -> None:
    sysfs = fake_sysfs(
        tmp_path / "net",
        {"lo0": ("0x9", None), "eth0": ("0x1003", "25000"), "veth0": ("0x1003", "-1")},
    )
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "veth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"
    )
    addrs = {"lo0": ["10.1.1.1"], "eth0": ["192.0.2.2"], "veth0": ["198.51.100.1"]}

    def resolve(host: str) -> int | None:
        return resolve_nic_peak(host, sysfs, str(route), addresses=addrs)

    assert resolve("192.0.2.2") == 25_000 * 125_000
    assert resolve("10.1.1.1") is None  # IFF_LOOPBACK in its flags, whatever its name
    assert resolve("198.51.100.1") == DEFAULT_NIC_PEAK_BYTES_PER_S  # speed -1
    assert resolve("0.0.0.0") == DEFAULT_NIC_PEAK_BYTES_PER_S  # default route: veth0
    assert resolve_nic_peak("0.0.0.0", sysfs, str(tmp_path / "none"), addrs) == (
        DEFAULT_NIC_PEAK_BYTES_PER_S
    )


@pytest.mark.skipif(not os.path.isdir("/sys/class/net"), reason="Linux sysfs only")
def test_this_machines_loopback_resolves_unlimited() -> None:
    assert resolve_nic_peak("127.0.0.1") is None
    assert resolve_nic_peak("localhost") is None


def test_resolve_config_only_touches_auto() -> None:
    auto = ReplicationConfig(factor=2)
    assert auto.nic_peak_bytes_per_s == "auto"
    assert resolve_config(auto, "127.0.0.1").nic_peak_bytes_per_s is None
    fixed = ReplicationConfig(factor=2, nic_peak_bytes_per_s=1000)
    assert resolve_config(fixed, "127.0.0.1") is fixed


def test_budget_for_each_kind_of_peak() -> None:
    unlimited = replication_budget(0.5, None, now=0.0)
    assert isinstance(unlimited, UnlimitedBudget)
    assert unlimited.try_consume(1 << 40, 0.0) and unlimited.try_consume(1 << 40, 0.0)
    assert budget_rate(0.5, None) is None
    assert budget_rate(0.5, "auto") == 0.5 * DEFAULT_NIC_PEAK_BYTES_PER_S  # unresolved
    fixed = replication_budget(0.5, 1000, now=0.0)
    assert fixed.rate == 500 and fixed.capacity == 500  # burst: one second of budget
    assert fixed.try_consume(500, 0.0) and not fixed.try_consume(1, 0.0)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "fast", True])
def test_validate_rejects_other_peaks(bad: object) -> None:
    with pytest.raises(ConfigError, match="nic_peak_bytes_per_s"):
        ReplicationConfig(nic_peak_bytes_per_s=bad).validate()  # type: ignore[arg-type]
    for ok in ("auto", None, 1):
        ReplicationConfig(nic_peak_bytes_per_s=ok).validate()  # type: ignore[arg-type]

"""The NIC peak a replication budget uses when configured ``"auto"`` (shell).

Issue 17 §2: the budget throttles catch-up, not steady state on fast links, so the
default NIC peak is what the OS reports for the interface the node is bound to, not a
fixed placeholder. :func:`choose_nic_peak` decides from plain facts (pure, tested with
fakes); :func:`resolve_nic_peak` gathers them from the OS (``psutil.net_if_addrs``,
``/sys/class/net``, ``/proc/net/route``). The rules, in order:

1. bound to a loopback address (127.0.0.0/8, ::1), or the interface holding the
   address is flagged loopback (``IFF_LOOPBACK`` in ``/sys/class/net/<if>/flags``):
   ``None``, **unlimited** (a loopback link is memory bandwidth: a budget there would
   only slow catch-up down);
2. the interface holding the bound address (bound to the wildcard 0.0.0.0 or ``::``:
   the interface of the IPv4 default route) reports a speed in
   ``/sys/class/net/<if>/speed`` (Mbit/s, as ethtool): ``speed x 125,000`` bytes/s;
3. otherwise (no such interface, speed ``-1`` or unreadable, as for many virtual
   devices): ``DEFAULT_NIC_PEAK_BYTES_PER_S``, 125 MB/s (1 Gbit/s, the reference's
   placeholder).

The budget is then ``replication_budget_fraction`` of that peak with a burst of one
second of budget (:mod:`netmesh.replication.budget`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping

from netmesh.config import DEFAULT_NIC_PEAK_BYTES_PER_S, ReplicationConfig

IFF_LOOPBACK = 0x8  # <linux/if.h>
BYTES_PER_MBIT = 125_000  # 10^6 bits / 8


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def choose_nic_peak(
    host: str,
    addresses: Mapping[str, Iterable[str]],
    loopback: Callable[[str], bool],
    speed_mbit: Callable[[str], int | None],
    default_route: str | None,
) -> int | None:
    """The NIC peak in bytes/s for a node bound to ``host`` (None: unlimited).

    ``addresses``: interface name -> its IP addresses (text, as psutil gives them);
    ``loopback(iface)``: whether the interface is a loopback; ``speed_mbit(iface)``:
    its link speed in Mbit/s, or None/-1/0 when unknown; ``default_route``: the
    interface of the default route, if any. The rules are in the module doc.
    """
    ip = _ip(host)
    if ip is None:  # not an address (resolve_nic_peak resolves host names first)
        return DEFAULT_NIC_PEAK_BYTES_PER_S
    if ip.is_loopback:
        return None
    iface: str | None = None
    if ip.is_unspecified:
        iface = default_route
    else:
        for name, addrs in addresses.items():
            if any(_ip(a) == ip for a in addrs):
                iface = name
                break
    if iface is None:
        return DEFAULT_NIC_PEAK_BYTES_PER_S
    if loopback(iface):
        return None
    speed = speed_mbit(iface)
    if speed is None or speed <= 0:
        return DEFAULT_NIC_PEAK_BYTES_PER_S
    return speed * BYTES_PER_MBIT


def _read_int(path: str, base: int = 10) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip(), base)
    except (OSError, ValueError):  # absent, or EINVAL for devices without a speed
        return None


def default_route_iface(proc_route: str = "/proc/net/route") -> str | None:
    """The interface of the IPv4 default route (destination 0, flag RTF_UP), or None."""
    try:
        with open(proc_route) as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) >= 4 and cols[1] == "00000000" and int(cols[3], 16) & 0x1:
            return cols[0]
    return None


def interface_addresses() -> dict[str, list[str]]:
    """Interface name -> its IPv4/IPv6 addresses (psutil)."""
    import psutil

    families = (socket.AF_INET, socket.AF_INET6)
    return {
        name: [a.address for a in addrs if a.family in families]
        for name, addrs in psutil.net_if_addrs().items()
    }


def resolve_nic_peak(
    host: str,
    sys_class_net: str = "/sys/class/net",
    proc_route: str = "/proc/net/route",
    addresses: Mapping[str, Iterable[str]] | None = None,
) -> int | None:
    """:func:`choose_nic_peak` with the facts of this machine (``addresses``: instead of
    psutil's table, for tests); a host name is resolved to the address it binds to.
    Never raises for missing facts: they mean rule 3."""
    if _ip(host) is None:  # a host name: the address it binds to
        try:
            host = str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])
        except (OSError, IndexError):
            return DEFAULT_NIC_PEAK_BYTES_PER_S
    if addresses is None:
        try:
            addresses = interface_addresses()
        except Exception:  # no psutil support on this platform: only the rules 1 and 3
            addresses = {}

    def loopback(iface: str) -> bool:
        flags = _read_int(os.path.join(sys_class_net, iface, "flags"), 16)
        return iface == "lo" if flags is None else bool(flags & IFF_LOOPBACK)

    def speed(iface: str) -> int | None:
        return _read_int(os.path.join(sys_class_net, iface, "speed"))

    return choose_nic_peak(host, addresses, loopback, speed, default_route_iface(proc_route))


def resolve_config(config: ReplicationConfig, host: str) -> ReplicationConfig:
    """``config`` with an ``"auto"`` NIC peak resolved for a node bound to ``host``
    (``None`` when unlimited); other configs unchanged."""
    if config.nic_peak_bytes_per_s != "auto":
        return config
    return dataclasses.replace(config, nic_peak_bytes_per_s=resolve_nic_peak(host))

"""Three node daemons in three network namespaces joined by veth pairs (three "hosts").

Each namespace gets one address, 10.213.0.N/32 on its loopback, and a veth pair to
each other namespace with a host route to that namespace's address, so the daemons
reach each other only through the veths (no shared loopback). Needs root and a
working ``ip netns``; skipped with the reason otherwise. Every namespace (and with it
every veth) is deleted afterwards; only addresses in these namespaces are created.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.test_daemon import Daemons, scenario

pytestmark = pytest.mark.system

SUBNET = "10.213.0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"nmprobe{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"`ip netns add` does not work here: {err.decode().strip() or exc}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    token = secrets.token_hex(2)
    names = [f"nm{token}{c}" for c in "abc"]
    made: list[str] = []
    try:
        for i, ns in enumerate(names):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/32", "dev", "lo")
        for i in range(3):
            for j in range(i + 1, 3):
                a, b = f"nm{token}{i}{j}", f"nm{token}{j}{i}"
                ip("link", "add", a, "type", "veth", "peer", "name", b)
                ip("link", "set", a, "netns", names[i])
                ip("link", "set", b, "netns", names[j])
                for ns, dev, dst in ((names[i], a, j), (names[j], b, i)):
                    ip("-n", ns, "link", "set", dev, "up")
                    ip("-n", ns, "route", "add", f"{SUBNET}.{dst + 1}/32", "dev", dev)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_three_daemons_in_network_namespaces(
    namespaces: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = [f"{SUBNET}.{i + 1}" for i in range(3)]
    d = Daemons(
        tmp_path,
        hosts,
        metrics=False,  # its address lives inside a namespace
        prefix=lambda i: ["ip", "netns", "exec", namespaces[i]],
        ports=[7411, 7411, 7411],  # one per namespace: the same port everywhere
    )
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        figures = scenario(d, n_before=5_000, n_during=20_000)
        print(f"\nNETNS DAEMON FIGURES {json.dumps(figures)}")
        assert figures["failover_s"] < 10
        for i in d.alive():
            assert d.terminate(i) == 0, d.log(i)
        assert d.leftovers() == []
        # the daemons really talked through the veths: none of them listens on loopback
        assert all("127.0.0.1" not in d.log(i) for i in range(3))
    finally:
        d.close()
    for ns in namespaces:  # the fixture deletes them; nothing of ours may outlive it
        assert subprocess.run(["ip", "netns", "pids", ns], capture_output=True).stdout == b""

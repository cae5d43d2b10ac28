"""Placement between node daemons (issue 13 §4, the scenarios a daemon settles itself).

* standard placement with factor f < nodes (``PlacementStrategy.standard()``, resolved
  from the daemons' announcements): the f lowest node ids hold the channel, the same
  set on every daemon, exactly one leader; the other daemon opens it, stays Idle and
  stores nothing;
* a pinned pair without a pinned leader converges on exactly one leader within 5 s and
  does not flap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.errors import NotLeader
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, Daemons, publish

pytestmark = pytest.mark.system

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


@pytest.fixture
def make() -> Iterator[list[Daemons]]:
    made: list[Daemons] = []
    yield made
    for d in made:
        d.close()


def daemons(root: Path, made: list[Daemons], hosts: list[str], channels: str) -> Daemons:
    d = Daemons(root, hosts, channels_toml=channels, metrics=False)
    made.append(d)
    return d


def test_standard_placement_picks_the_lowest_ids_on_every_daemon(
    tmp_path: Path, make: list[Daemons], monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = f'[[channels]]\nname = "{CHANNEL}"\nfactor = 2\nheartbeat_ms = 150\n'
    d = daemons(tmp_path, make, HOSTS, channels)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    d.start_all()
    ids = [k["node_id"] for k in d.keys]
    holders = sorted(range(3), key=lambda i: ids[i])[:2]
    outsider = next(i for i in range(3) if i not in holders)
    members = [f"{ids[i]:#018x}" for i in sorted(holders, key=lambda i: ids[i])]
    for i in holders:  # placement ran the channel with the two lowest ids
        wait_until(lambda i=i: f"replica set {members}" in d.log(i), timeout=10)

    def one_leader() -> tuple[int] | None:
        rows = [d.row(i) for i in holders]
        leaders = [i for i, r in zip(holders, rows, strict=True) if r and r.leader == 0]
        known = all(r is not None and r.leader is not None for r in rows)
        return (leaders[0],) if len(leaders) == 1 and known else None

    (lead,) = wait_until(one_leader, timeout=10, message="one leader among the holders")
    assert publish(d.clients[lead], 100) == 99
    wait_until(lambda: all(d.row(i).next_seq == 100 for i in holders), timeout=10)
    idle = d.row(outsider)  # open (a candidate), Idle: no leader known, nothing stored
    assert idle is not None and idle.leader is None and idle.next_seq == 0
    assert idle.factor == 2
    with pytest.raises(NotLeader), d.clients[outsider].producer(CHANNEL) as p:
        p.append(b"x")
        p.flush()
    assert d.row(outsider).next_seq == 0
    for i in range(3):
        assert d.terminate(i) == 0
    assert d.leftovers() == []


def test_pinned_pair_without_pinned_leader_converges_and_does_not_flap(
    tmp_path: Path, make: list[Daemons], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemons(tmp_path, make, HOSTS[:2], "")
    pair = ", ".join(f'"{k["public_key"]}"' for k in d.keys)
    channels = f'[[channels]]\nname = "{CHANNEL}"\nplacement = [{pair}]\nheartbeat_ms = 150\n'
    for i in range(2):
        d.write_config(i, [1 - i], channels)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    t0 = time.monotonic()
    d.start_all()
    lead = d.wait_leader(timeout=5.0)
    converged = time.monotonic() - t0
    assert converged < 5.0
    # no flapping: over 3 s (20 heartbeats) the same leader, every time we look
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        assert d.leader() == lead
    assert d.row(lead).factor == 2
    for i in range(2):
        assert d.terminate(i) == 0
    assert d.leftovers() == []

"""The adversary's V1 against real daemons (issue 13 §3): six ``netmesh node`` daemons
(127.0.0.1-6, own configs, keys and data dirs), a quorum channel with standard
placement and factor 3, the daemon with the lowest node id started last, just as the
others decide. Before the fix, daemons that had not heard it formed the three lowest
of the other five while one that had formed a set with it: two sets, each run by a
majority of its members, two leaders. Now the first set is chosen by Paxos over the six
configured nodes (``placement.form_vote``): every daemon that logs a chosen first set
names the same one, the cluster converges on one set (the three lowest ids) with one
leader, and an acknowledged batch is on every member.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import netmesh
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, Daemons, payload

pytestmark = pytest.mark.system

HOSTS = [f"127.0.0.{i}" for i in range(1, 7)]


@pytest.fixture
def daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    d = Daemons(tmp_path, HOSTS, metrics=False, announce_ms=200)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        yield d
    finally:
        d.close()


def chosen_sets(log: str) -> list[tuple[int, ...]]:
    out = []
    for line in log.splitlines():
        if f"{CHANNEL}: first set [" in line:
            text = line.split("first set ", 1)[1].rsplit(" chosen", 1)[0]
            out.append(tuple(sorted(int(x, 16) for x in ast.literal_eval(text))))
    return out


def test_the_lowest_id_starting_last_does_not_make_two_first_sets(daemons: Daemons) -> None:
    d = daemons
    ids = [int(k["node_id"]) for k in d.keys]
    low = min(range(len(HOSTS)), key=lambda i: ids[i])
    target = tuple(sorted(ids)[:3])
    for i in range(len(HOSTS)):
        if i != low:
            d.start(i)
    for i in range(len(HOSTS)):
        if i != low:
            d.ready(i)
    d.start(low)  # as the others settle on a set without it
    d.ready(low)

    def members() -> list[int] | None:
        rows = {i: d.row(i) for i in range(len(HOSTS))}
        running = sorted(i for i, r in rows.items() if r is not None and r.leader is not None)
        if tuple(sorted(ids[i] for i in running)) != target:
            return None
        return running

    running = wait_until(members, timeout=60, message="one set of the three lowest ids")
    # one leader, named by every member (each by its own peer list)
    leaders = set()
    for i in running:
        r = d.row(i)
        assert r is not None and r.leader is not None
        others = [j for j in range(len(HOSTS)) if j != i]
        leaders.add(i if r.leader == 0 else others[r.leader - 1])
    assert len(leaders) == 1
    lead = leaders.pop()
    # every chosen first set any daemon logged is the same one
    chosen = {s for i in range(len(HOSTS)) for s in chosen_sets(d.log(i))}
    assert len(chosen) == 1, chosen
    # the placement vote is persisted beside the log on every daemon that voted
    voted = [i for i in range(len(HOSTS)) if (d.root / f"data-n{i}" / CHANNEL).is_dir()]
    assert any(os.path.exists(d.root / f"data-n{i}" / CHANNEL / "placement-form") for i in voted)
    # an acknowledged batch is on every member, byte-equal, where flush said
    batch = [payload(i) for i in range(200)]
    with netmesh.connect(d.names[lead]) as client, client.producer(CHANNEL) as p:
        p.append_batch(batch)
        last = p.flush(timeout=20.0)
    wait_until(
        lambda: all(d.row(i).commit > last and d.row(i).next_seq > last for i in running),
        timeout=30,
        message="every member holds the batch",
    )
    for i in running:
        log = [ev.payload for ev in d.clients[i].read_range(CHANNEL, 0, last + 1)]
        assert log[last - len(batch) + 1 :] == batch
    for i in range(len(HOSTS)):
        assert d.terminate(i) == 0, d.log(i)
    assert d.leftovers() == []

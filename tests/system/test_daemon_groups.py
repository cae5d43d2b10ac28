"""Consumer groups on node daemons (issue 12 trial §4).

A group runs only on the daemon that leads ``<channel>.consumers`` (where it writes its
state), so it has one dispatcher in the cluster: a durable subscribe on another daemon
fails at once with one NotLeader naming the daemon that leads it and its address; a
dispatcher whose daemon loses that lead stops its members with the same kind of error
(not a traceback in the daemon's log), and the group resumes on the new leader's
daemon after what was acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmesh.cluster.nodeconfig import format_node_id
from netmesh.errors import ConfigError, NetmeshError, NotLeader
from netmesh.testing.wait import wait_until
from tests.system.test_daemon import CHANNEL, CHANNELS_TOML, Daemons, publish

pytestmark = pytest.mark.system

STATE = f"{CHANNEL}.consumers"
GROUP_CHANNELS = CHANNELS_TOML + "".join(
    f'\n[[channels]]\nname = "{name}"\nfactor = 3\nack = "quorum"\nheartbeat_ms = 150\n'
    for name in (STATE, f"{CHANNEL}.dlq")
)


@pytest.fixture
def daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemons]:
    d = Daemons(tmp_path, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], channels_toml=GROUP_CHANNELS)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        yield d
    finally:
        for p in d.procs.values():  # a SIGSTOPped daemon must be killable
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        d.close()


def _leader_seen_by(d: Daemons, i: int, channel: str) -> int | None:
    r = d.row(i, channel)
    if r is None or r.leader is None:
        return None
    others = [j for j in range(len(d.hosts)) if j != i]
    return i if r.leader == 0 else others[r.leader - 1]


def test_a_group_runs_only_on_the_daemon_leading_its_state_channel(daemons: Daemons) -> None:
    d = daemons
    d.start_all()
    d.wait_leader()
    found = wait_until(
        lambda: None if (x := d.leader(STATE)) is None else (x,),
        timeout=20,
        message="state channel leader",
    )
    lead = found[0]  # (a tuple: daemon 0 is falsy)
    assert publish(d.clients[d.wait_leader()], 300) == 299
    other = next(i for i in d.alive() if i != lead)
    named = f"{format_node_id(d.keys[lead]['node_id'])} ({d.hosts[lead]}:{d.ports[lead]})"

    # on a daemon that does not lead orders.consumers: refused at once, naming the leader
    t0 = time.monotonic()
    with pytest.raises(NotLeader) as info:
        d.clients[other].subscribe(CHANNEL, durable="billing")
    assert time.monotonic() - t0 < 5
    assert getattr(info.value, "final", False)
    assert info.value.leader == d.keys[lead]["node_id"]
    msg = str(info.value)
    assert f"its leader is {named}: subscribe with durable= through the node daemon" in msg, msg
    assert d.clients[other].consumers(CHANNEL) == []  # no dispatcher started there

    # on the leader's daemon: every event once
    cl = d.clients[lead]
    sub = cl.subscribe(CHANNEL, durable="billing", ack_wait=5.0)
    seen = []
    while len(seen) < 300:
        evs = sub.poll(timeout=10.0)
        assert evs, f"stalled after {len(seen)}"
        for ev in evs:
            sub.ack(ev)
            seen.append(ev.entry.seq)
    assert seen == list(range(300))
    wait_until(
        lambda: cl.consumers(CHANNEL)[0]["acknowledged_through"] == 300,
        timeout=10,
        message="300 acknowledged",
    )

    def stored_floor() -> int:  # in the newest state record (committed)
        end = d.row(lead, STATE).commit
        d_ = json.loads(cl.read_range(STATE, end - 1, end)[0].payload)
        return int(d_["snapshot"]["billing"]["floor"] if "snapshot" in d_ else d_["floor"])

    wait_until(lambda: stored_floor() == 300, timeout=10, message="the state stored")

    # the leader's daemon loses the lead (frozen while the others elect): its member
    # gets a NotLeader naming the new leader instead of silence, and its log no traceback
    os.kill(d.procs[lead].pid, signal.SIGSTOP)
    try:
        rest = [i for i in d.alive() if i != lead]

        def moved() -> tuple[int] | None:
            seen_by = {_leader_seen_by(d, i, STATE) for i in rest}
            x = seen_by.pop() if len(seen_by) == 1 else None
            return (x,) if x is not None and x != lead else None

        new = wait_until(moved, timeout=30, message="a new leader of the state channel")[0]
    finally:
        os.kill(d.procs[lead].pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    with pytest.raises(NotLeader) as lost:
        while time.monotonic() < deadline:
            sub.poll(timeout=0.5)
    assert f"its leader is {format_node_id(d.keys[new]['node_id'])}" in str(lost.value)
    sub.close()
    assert "Traceback" not in d.log(lead), d.log(lead)[-3000:]
    assert cl.consumers(CHANNEL) == []  # not "acknowledged through ..." from a stopped group

    # the group resumes on the new leader's daemon after what was acknowledged
    assert publish(d.clients[d.wait_leader()], 10, start=300) == 309
    with d.clients[new].subscribe(CHANNEL, durable="billing") as sub2:
        got = []
        while len(got) < 10:
            evs = sub2.poll(timeout=10.0)
            assert evs, f"stalled after {got}"
            for ev in evs:
                sub2.ack(ev)
                got.append((ev.entry.seq, ev.delivery_count))
    assert got == [(s, 1) for s in range(300, 310)]
    for i in list(d.alive()):
        assert d.terminate(i) == 0  # cleanly: nothing left in /dev/shm


def test_a_durable_subscribe_without_the_state_channel_names_what_to_add(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    only = f'[[channels]]\nname = "{CHANNEL}"\nreplicated = false\n'  # no .consumers
    d = Daemons(tmp_path, ["127.0.0.1"], channels_toml=only)
    monkeypatch.setenv("NETMESH_RUN_DIR", str(d.run_dir))
    try:
        d.start_all()
        with pytest.raises(ConfigError) as info:
            d.clients[0].subscribe(CHANNEL, durable="g")
        msg = str(info.value)
        assert f"'{STATE}'" in msg and f"'{CHANNEL}.dlq'" in msg and "[[channels]]" in msg, msg
        assert d.terminate(0) == 0
    finally:
        d.close()
    assert not isinstance(info.value, NotLeader) and isinstance(info.value, NetmeshError)

"""Issue 12: durable consumers and consumer groups, with real member processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import netmesh
from netmesh import Cluster, ReplicationConfig
from netmesh.client.client import DeliveredEvent
from netmesh.testing.wait import wait_until

pytestmark = pytest.mark.system

MEMBER = """
import sys, json, netmesh
name, channel, group, ack_wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
done = []
with netmesh.connect(name) as cl:
    sub = cl.subscribe(channel, durable=group, ack_wait=ack_wait, max_deliver=5)
    print(json.dumps({"ready": True}), flush=True)
    for ev in sub:
        print(json.dumps({"delivered": ev.entry.seq, "count": ev.delivery_count}), flush=True)
        if ev.payload == b"poison":
            continue  # never acknowledged
        sub.ack(ev)
        done.append(ev.entry.seq)
        if len(done) >= 50:
            print(json.dumps({"acking": done}), flush=True)
            sub.flush_acks()  # a kill between the two lines leaves this batch ambiguous
            print(json.dumps({"flushed": True}), flush=True)
            done = []
        if ev.payload == b"stop":
            break
    print(json.dumps({"acking": done}), flush=True)
    sub.flush_acks()
    print(json.dumps({"flushed": True}), flush=True)
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path / "run"


class Member:
    """A member process writing its log to a file (a pipe nobody reads would stall it)."""

    def __init__(self, name: str, group: str = "billing", ack_wait: float = 30.0) -> None:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="nm-member-")
        os.close(fd)
        self.log = Path(path)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", MEMBER, name, "orders", group, str(ack_wait)],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
        wait_until(lambda: self.log.read_text().startswith('{"ready"'), timeout=30, message="ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def finish(self, timeout: float = 120) -> str:
        _, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode in (0, -signal.SIGKILL), err
        out = self.log.read_text()
        self.log.unlink()
        return out


def _member(name: str, group: str = "billing", ack_wait: float = 30.0) -> Member:
    return Member(name, group, ack_wait)


def _lines(out: str) -> tuple[list[dict[str, int]], list[int], list[int]]:
    """(deliveries, acknowledged for sure, maybe acknowledged: a batch cut by a kill)."""
    delivered: list[dict[str, int]] = []
    acked: list[int] = []
    maybe: list[int] = []
    for line in out.splitlines():
        if not line.endswith("}"):
            continue  # the last line of a member killed mid-write
        d = json.loads(line)
        if "delivered" in d:
            delivered.append(d)
        elif "acking" in d:
            maybe = d["acking"]
        elif "flushed" in d:
            acked += maybe
            maybe = []
    return delivered, acked, maybe


def _publish(cl: netmesh.Client, payloads: list[bytes]) -> None:
    with cl.producer("orders") as p:
        for i in range(0, len(payloads), 500):
            p.append_batch(payloads[i : i + 500])
        p.flush()


def test_a_group_of_three_shares_the_channel_and_survives_a_member_kill(run_dir: Path) -> None:
    n = 20_000
    with Cluster(nodes=3, heartbeat_ms=100, name="grp") as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        c.wait_for_leader("orders")
        members = [_member("grp") for _ in range(3)]
        with netmesh.connect("grp") as cl:
            wait_until(lambda: cl.consumers("orders")[0]["members"] == 3, timeout=10, message="3")
            _publish(cl, [b"ev-%d" % i for i in range(n)])
            wait_until(
                lambda: cl.consumers("orders")[0]["acknowledged_through"] > n // 3,
                timeout=60,
                message="a third acknowledged",
            )
            members[0].kill()  # mid-stream
            victim_out = members[0].finish()
            wait_until(
                lambda: cl.consumers("orders")[0]["acknowledged_through"] == n,
                timeout=120,
                message="every event acknowledged",
            )
            _publish(cl, [b"stop", b"stop"])  # one for each survivor
            info = cl.consumers("orders")[0]
        outs = [victim_out] + [m.finish() for m in members[1:]]
    results = [_lines(o) for o in outs]
    acked = Counter(s for _, a, _ in results for s in a)
    # events the victim read but had not confirmed acknowledging (its acks also travel
    # when it waits for more): acknowledged by it, or redelivered, never both
    victim_read = {d["delivered"] for d in results[0][0]}
    ambiguous = (victim_read - set(results[0][1])) | set(results[0][2])
    assert all(acked[s] == 1 for s in range(n) if s not in ambiguous)
    assert all(acked[s] <= 1 for s in ambiguous)
    # redeliveries only for what the dead member held unacknowledged (read or still in
    # its ring): never an event a survivor got first, never one the victim acknowledged
    victim_acked = set(results[0][1])
    redelivered = {d["delivered"] for ds, _, _ in results[1:] for d in ds if d["count"] > 1}
    first_to_survivors = {d["delivered"] for ds, _, _ in results[1:] for d in ds if d["count"] == 1}
    assert redelivered and not redelivered & victim_acked
    assert not redelivered & first_to_survivors
    assert info["redelivered"] == len(redelivered) and info["dead_lettered"] == 0
    assert all(len(r[1]) > 1000 for r in results[1:])  # the survivors shared the work


def test_a_durable_consumer_resumes_after_its_ack_across_kills(
    run_dir: Path, tmp_path: Path
) -> None:
    with Cluster(nodes=3, heartbeat_ms=100, name="dur", data_dir=str(tmp_path / "d")) as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        c.wait_for_leader("orders")
        with netmesh.connect("dur") as cl:
            _publish(cl, [b"a-%d" % i for i in range(3000)])
            first = _member("dur")
            wait_until(
                lambda: cl.consumers("orders")[0]["acknowledged_through"] >= 1000,
                timeout=60,
                message="1000 acknowledged",
            )
            first.kill()
            out1 = first.finish()
            floor = cl.consumers("orders")[0]["acknowledged_through"]
            second = _member("dur")
            c.kill(c.wait_for_leader("orders"))  # and the leader, during the same run
            _publish(cl, [b"b-%d" % i for i in range(1000)] + [b"stop"])
            out2 = second.finish()
    d1, _, _ = _lines(out1)
    d2, _, _ = _lines(out2)
    seen2 = [d["delivered"] for d in d2]
    assert min(seen2) >= floor  # nothing at or before what was acknowledged comes back
    assert set(d["delivered"] for d in d1) | set(seen2) >= set(range(4001))  # none skipped


def test_an_event_that_fails_five_times_is_dead_lettered(run_dir: Path) -> None:
    with Cluster(nodes=1, name="dlq") as c:
        c.open_channel("orders")
        with netmesh.connect("dlq") as cl:
            _publish(cl, [b"ok-1", b"poison", b"ok-2"])
            m = _member("dlq", ack_wait=0.2)
            wait_until(
                lambda: cl.consumers("orders")[0]["dead_lettered"] == 1,
                timeout=30,
                message="dead-lettered",
            )
            _publish(cl, [b"stop"])
            out = m.finish()
            assert [e.payload for e in cl.read_range("orders.dlq", 0, 10)] == [b"poison"]
            info = cl.consumers("orders")[0]
            listed = next(ch for ch in cl.channels() if ch.name == "orders")
            assert listed.groups[0]["dead_lettered"] == 1  # in channels() too
    delivered, acked, _ = _lines(out)
    assert [d["count"] for d in delivered if d["delivered"] == 1] == [1, 2, 3, 4, 5]
    assert sorted(acked) == [0, 2, 3] and info["acknowledged_through"] == 4


def test_a_group_position_survives_a_full_restart_with_data_dir(
    run_dir: Path, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    cfg = ReplicationConfig(factor=3, ack="quorum")
    with Cluster(nodes=3, heartbeat_ms=100, name="full", data_dir=data) as c:
        c.open_channel("orders", cfg)
        c.wait_for_leader("orders")
        with netmesh.connect("full") as cl:
            _publish(cl, [b"e-%d" % i for i in range(1000)])
            with cl.subscribe("orders", durable="audit") as sub:
                for ev in sub:
                    sub.ack(ev)
                    if ev.entry.seq == 599:
                        break
            wait_until(
                lambda: cl.consumers("orders")[0]["acknowledged_through"] == 600,
                timeout=10,
                message="600 acknowledged",
            )
    with Cluster(nodes=3, heartbeat_ms=100, name="full", data_dir=data) as c:  # all new
        c.open_channel("orders", cfg)
        c.wait_for_leader("orders")
        with netmesh.connect("full") as cl, cl.subscribe("orders", durable="audit") as sub:
            first = next(sub)
            assert 600 - 256 <= first.entry.seq <= 600  # at most the last unsent acks again
            assert first.payload == b"e-%d" % first.entry.seq


READ_TWO = """
import sys, json, netmesh
name, close_sub = sys.argv[1], sys.argv[2] == "1"
with netmesh.connect(name) as cl:
    sub = cl.subscribe("orders", durable="g", ack_wait=2.0, max_deliver=3)
    got = []
    for ev in sub:
        sub.ack(ev)
        got.append([ev.entry.seq, ev.delivery_count])
        if len(got) == 2:
            break
    if close_sub:
        sub.close()
    # otherwise the client's own close must send the acks and release the rest
print(json.dumps(got))
"""


def _read_two(name: str, close_sub: bool) -> list[list[int]]:
    out = subprocess.run(
        [sys.executable, "-P", "-c", READ_TWO, name, "1" if close_sub else "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("close_sub", [True, False])
def test_events_prefetched_but_never_handed_over_do_not_count_as_deliveries(
    run_dir: Path, close_sub: bool
) -> None:
    """A member that takes 2 of 20 events, acks them and exits cleanly, three times in
    a row: the runs get 0-1, 2-3, 4-5, each on its first delivery, and nothing is
    dead-lettered (before: the prefetched rest counted as delivered on every run, so
    the third run saw delivery_count 3 and events 6..19 went to the dead-letter
    channel unseen). Without ``sub.close()`` the client's close sends the acks
    (before: they were lost and the next run got seqs 0 and 1 again)."""
    with Cluster(nodes=1, name="pref") as c:
        c.open_channel("orders")
        with netmesh.connect("pref") as cl:
            _publish(cl, [b"ev%d" % i for i in range(20)])
            runs = [_read_two("pref", close_sub) for _ in range(3)]
            assert runs == [[[0, 1], [1, 1]], [[2, 1], [3, 1]], [[4, 1], [5, 1]]]
            info = cl.consumers("orders")[0]
            assert info["dead_lettered"] == 0 and info["acknowledged_through"] == 6
            assert (
                "orders.dlq" not in [ch.name for ch in cl.channels()]
                or cl.read_range("orders.dlq", 0, 1) == []
            )


def test_a_slow_member_that_acks_within_ack_wait_gets_each_event_once(run_dir: Path) -> None:
    """Issue 12 trial §1: one member taking 10 ms per event with ack_wait=2 s and
    max_deliver=3 acknowledges all 600 events, each delivered exactly once, nothing
    dead-lettered. Before: 512 events were pushed into the member at once with their
    ack_wait clocks running, and its acks were held until 256 piled up: most events
    were delivered again and many dead-lettered although every one was acknowledged."""
    n = 600
    with Cluster(nodes=3, heartbeat_ms=100, name="slow") as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"))
        c.wait_for_leader("orders")
        with netmesh.connect("slow") as cl:
            _publish(cl, [b"ev-%d" % i for i in range(n)])
            seen: list[tuple[int, int]] = []
            with cl.subscribe("orders", durable="slow", ack_wait=2.0, max_deliver=3) as sub:
                for ev in sub:
                    time.sleep(0.01)  # the application's work, not synchronisation
                    sub.ack(ev)
                    assert isinstance(ev, DeliveredEvent)
                    seen.append((ev.entry.seq, ev.delivery_count))
                    if len(seen) == n:
                        break
                    info = cl.consumers("orders")[0] if len(seen) % 100 == 0 else None
                    if info is not None and info["dead_lettered"]:
                        break  # before the fix: no point waiting for events gone to the DLQ
                wait_until(
                    lambda: cl.consumers("orders")[0]["acknowledged_through"] == len(seen),
                    timeout=10,
                    message="every ack sent without a close",
                )
            info = cl.consumers("orders")[0]
    assert sorted(s for s, _ in seen) == list(range(n))
    assert all(count == 1 for _, count in seen)
    assert info["redelivered"] == 0 and info["dead_lettered"] == 0
    assert info["delivered"] == n and info["acknowledged_through"] == n


def test_max_ack_pending_bounds_what_a_member_holds(run_dir: Path) -> None:
    """A member that reads without acknowledging is sent max_ack_pending events, no
    more, until it acknowledges (credit comes back with acks, not with receipt)."""
    with Cluster(nodes=1, name="map") as c:
        c.open_channel("orders")
        with netmesh.connect("map") as cl:
            _publish(cl, [b"ev-%d" % i for i in range(100)])
            with pytest.raises(netmesh.ConfigError):
                cl.subscribe("orders", durable="g", max_ack_pending=0)
            with cl.subscribe("orders", durable="g", max_ack_pending=8) as sub:
                got = []
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:  # a second of reading: 8, never more
                    got += sub.poll(timeout=0.1)
                assert [ev.entry.seq for ev in got] == list(range(8))
                assert cl.consumers("orders")[0]["pending"] == 8
                for ev in got[:3]:
                    sub.ack(ev)
                wait_until(
                    lambda: len(got) == 11 or bool(got.extend(sub.poll(timeout=0.05))),
                    timeout=10,
                    message="three more after three acks",
                )
                assert [ev.entry.seq for ev in got] == list(range(11))


def test_tail_durable_without_ack_is_refused(run_dir: Path) -> None:
    """Issue 12 trial §2: ``netmesh tail CH --durable G`` without ``--ack`` exits 2 with
    one line and joins no group. Before: it printed max-in-flight events, stalled, was
    sent them again every ack_wait and finally dead-lettered the channel."""
    with Cluster(nodes=1, name="tl") as c:
        c.open_channel("orders")
        with netmesh.connect("tl") as cl:
            _publish(cl, [b"ev-%d" % i for i in range(10)])
            argv = ["netmesh.cli", "tail", "orders", "--durable", "g", "--name", "tl"]
            out = subprocess.run(
                [sys.executable, "-P", "-m", *argv],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 2, out
            assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
            assert "--ack" in out.stderr
            assert cl.consumers("orders") == []


def test_the_state_channel_is_bounded_and_a_start_reads_only_live_state(run_dir: Path) -> None:
    """Issue 12 trial §3: 1500 state records of group "busy" after one of group "idle".
    The state channel keeps at most STATE_RETENTION_EVENTS (plus a segment) yet still
    has idle's state; a start reads at most 2 * SNAPSHOT_EVERY records, not all 1501,
    and finds both groups' latest state. Before: no retention, and every group start
    read the whole channel."""
    from netmesh.cluster.groups import (
        SNAPSHOT_EVERY,
        STATE_RETENTION_EVENTS,
        GroupState,
        StateStore,
    )

    with Cluster(nodes=1, name="st") as c:
        c.open_channel("orders")
        with netmesh.connect("st") as cl:
            _publish(cl, [b"x"])
            with cl.subscribe("orders", durable="idle") as sub:
                sub.ack(next(sub))
            wait_until(
                lambda: cl.consumers("orders")[0]["acknowledged_through"] == 1,
                timeout=10,
                message="idle acked",
            )
            server = c.client_server
            assert server is not None
            store = server._stores["orders"]
            for i in range(1500):
                store.write("busy", GroupState(floor=i).to_json("busy"))

            def held() -> netmesh.ChannelInfo:
                return next(ch for ch in cl.channels() if ch.name == "orders.consumers")

            wait_until(lambda: held().next_seq > 1500, timeout=10, message="1501 records")
            end = held().next_seq
            with pytest.raises(netmesh.Lagged):  # retention dropped the oldest records
                cl.read_range("orders.consumers", 0, end)
            kept = cl.read_range("orders.consumers", end - STATE_RETENTION_EVENTS, end)
            assert len(kept) == STATE_RETENTION_EVENTS
            again = StateStore(server.backend, "orders", server._new_ring, server._drop)
            try:
                assert again.records_read <= 2 * SNAPSHOT_EVERY
                assert again.get("busy").floor == 1499
                assert again.get("idle").floor == 1  # never dropped by retention
            finally:
                again.close()

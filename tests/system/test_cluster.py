"""The reference scenarios across real processes: one OS process per node, shm rings,
encrypted UDP on loopback, SIGKILL, restarts and partitions."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from netmesh.cluster.cluster import Cluster
from netmesh.config import ReplicationConfig
from netmesh.errors import (
    ChannelNotOpen,
    Closed,
    ConfigError,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
    PayloadTooLarge,
)
from netmesh.replication.roles import ReplicaRole
from tests.conftest import wait_until

pytestmark = pytest.mark.system
HB = 150


def some(value: int | None) -> list[int] | None:
    """Wrap an index so that node 0 counts as found in wait_until."""
    return None if value is None else [value]


def leader_of(c: Cluster, channel: str, timeout: float = 5.0) -> int:
    try:
        return c.wait_for_leader(channel, timeout)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def history(c: Cluster, node: int, channel: str) -> list[bytes]:
    return c.read_range(node, channel, 0, c.next_seq(node, channel))


@pytest.mark.parametrize("factor", [2, 3])
def test_replicates_to_every_member(factor: int) -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("orders", ReplicationConfig(factor=factor, heartbeat_ms=HB))
        lead = leader_of(c, "orders")
        events = [b"order-%d" % i for i in range(20_000)]
        with c.producer(lead, "orders") as p:
            assert p.flush() == -1  # nothing acknowledged yet (0 would be a real seq)
            for i in range(0, len(events), 500):
                p.append_batch(events[i : i + 500])
            assert p.flush() == len(events) - 1
        members = range(factor)
        wait_until(
            lambda: all(c.next_seq(i, "orders") == len(events) for i in members),
            timeout=10,
            message="replicas catch up",
        )
        for i in members:
            assert history(c, i, "orders") == events
        if factor == 2:
            with pytest.raises(ChannelNotOpen, match=r"node 2 next_seq: .*not open"):
                c.next_seq(2, "orders")  # not a member: does not hold the channel
        m = c.metrics(fresh=True)  # the pages may be up to 100 ms old
        assert m["totals"]["alive"] == 3
        assert m["nodes"][lead]["channels"]["orders"]["role"] is ReplicaRole.LEADER


def test_producer_on_a_replica_is_refused() -> None:
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("x", ReplicationConfig(factor=2, heartbeat_ms=HB))
        lead = leader_of(c, "x")
        follower = 1 - lead
        wait_until(  # a leader heartbeat reached the follower: it knows who leads
            lambda: (
                c.metrics(fresh=True)["nodes"][follower]["channels"]["x"]["replica_lag_seconds"]
                is not None
            ),
            timeout=5,
        )
        with pytest.raises(NotLeader, match=f"node {follower} attach_ring") as info:
            c.producer(follower, "x")
        assert info.value.leader == c.node_ids[lead]
        assert c.producers == {} and c.next_seq(follower, "x") == 0


def test_kill_leader_mid_stream_then_continue_and_restart_catches_up(tmp_path: Path) -> None:
    with Cluster(nodes=3, heartbeat_ms=HB, data_dir=str(tmp_path)) as c:
        c.open_channel("s", ReplicationConfig(factor=3, heartbeat_ms=HB))
        old = leader_of(c, "s")
        acked: list[bytes] = []
        with c.producer(old, "s") as p:
            for i in range(20):
                batch = [b"a-%d-%d" % (i, j) for j in range(100)]
                p.append_batch(batch)
                p.flush()
                acked += batch
        survivors = [i for i in range(3) if i != old]
        wait_until(lambda: all(c.next_seq(i, "s") >= len(acked) for i in survivors), timeout=5)
        assert c.kill(old) == -signal.SIGKILL
        assert c.metrics()["nodes"][old]["alive"] is False
        new = leader_of(c, "s")
        assert new != old
        more = [b"b-%d" % i for i in range(1000)]
        with c.producer(new, "s") as p:
            p.append_batch(more)
            p.flush()
        final = history(c, new, "s")
        assert final[: len(acked)] == acked and final[len(acked) :] == more
        c.restart(old)
        wait_until(lambda: c.next_seq(old, "s") == len(final), timeout=10, message="catch-up")
        assert history(c, old, "s") == final
        assert c.role(old, "s") is ReplicaRole.REPLICA


def test_partitioned_minority_leader_is_fenced_and_converges_after_heal() -> None:
    with Cluster(nodes=3, heartbeat_ms=HB) as c:
        c.open_channel("p", ReplicationConfig(factor=3, heartbeat_ms=HB, ack="quorum"))
        old = leader_of(c, "p")
        first = [b"before-%d" % i for i in range(50)]
        with c.producer(old, "p") as p:
            p.append_batch(first)
            p.flush()
        rest = [i for i in range(3) if i != old]
        c.partition([old], rest)
        wait_until(
            lambda: c.role(old, "p") != ReplicaRole.LEADER, timeout=5, message="old leader fenced"
        )
        new = wait_until(
            lambda: some(next((i for i in rest if c.role(i, "p") is ReplicaRole.LEADER), None)),
            timeout=5,
            message="majority elects",
        )[0]
        with c.producer(new, "p") as p:
            p.append_batch([b"during-%d" % i for i in range(50)])
            p.flush()
        c.heal()
        final = wait_until(lambda: (h := history(c, new, "p")) and len(h) == 100 and h, timeout=5)
        wait_until(lambda: history(c, old, "p") == final, timeout=10, message="convergence")
        assert c.leader("p") == new


def test_quorum_acks_survive_ten_random_leader_kills(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    acked: list[bytes] = []
    with Cluster(nodes=3, heartbeat_ms=HB, data_dir=str(tmp_path)) as c:
        c.open_channel("q", ReplicationConfig(factor=3, heartbeat_ms=HB, ack="quorum"))
        for round_no in range(10):
            lead = leader_of(c, "q", timeout=10)
            with c.producer(lead, "q") as p:
                for k in range(rng.randint(1, 5)):
                    batch = [b"r%d-%d-%d" % (round_no, k, j) for j in range(rng.randint(1, 200))]
                    p.append_batch(batch)
                    p.flush()
                    acked += batch
                p.append_batch([b"unacked-%d" % round_no] * 10)  # in flight at the kill
                c.kill(lead)
            c.restart(lead)
        lead = leader_of(c, "q", timeout=10)
        final = history(c, lead, "q")
        held = set(final)
        lost = [e for e in acked if e not in held]
        assert not lost, f"{len(lost)} quorum-acknowledged events lost, first {lost[:3]}"
        ordered = [e for e in final if not e.startswith(b"unacked")]
        assert ordered == acked  # acknowledged events in acknowledgement order
        for i in range(3):
            wait_until(lambda i=i: history(c, i, "q") == final, timeout=10)


def test_node_that_stops_answering_is_reported() -> None:
    with Cluster(nodes=1) as c:
        pid = c.info[0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(NodeUnresponsive):
                c.sup.call(0, "metrics", timeout=0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert c.sup.call(0, "metrics", timeout=5)["node"] == 0


SUPERVISOR_SCRIPT = textwrap.dedent("""
    import sys, time
    from netmesh.cluster.cluster import Cluster
    from netmesh.config import ReplicationConfig
    c = Cluster(nodes=3, heartbeat_ms=150)
    c.open_channel("z", ReplicationConfig(factor=3, heartbeat_ms=150))
    lead = c.wait_until(lambda: c.leader("z") is not None, timeout=5) and c.leader("z")
    p = c.producer(lead, "z")
    p.append_batch([b"x"] * 100)
    p.flush()
    print(c.sup.prefix, *[c.info[i]["pid"] for i in range(3)], flush=True)
    time.sleep(600)
""")


def test_sigkilled_supervisor_leaves_nothing_behind() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert len(line) == 4, line
        prefix, pids = line[0], [int(x) for x in line[1:]]
        assert any(prefix in n for n in os.listdir("/dev/shm"))
        proc.kill()
        proc.wait(10)
        wait_until(
            lambda: (
                not any(
                    psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                    for p in pids
                )
            ),
            timeout=1.0,
            message="workers end within a second",
        )
        wait_until(
            lambda: not any(prefix in n for n in os.listdir("/dev/shm")),
            timeout=2.0,
            message="shm names unlinked",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_producer_refusals_carry_their_reason() -> None:
    with Cluster(nodes=1) as c:
        c.open_channel("plain")
        p = c.producer(0, "plain")
        with pytest.raises(PayloadTooLarge):
            p.append(b"x" * ((1 << 20) + 1))  # checked before it enters the ring
        p.append_batch([b"ok"] * 10)
        assert p.flush() == 9
        c.sup.call(0, "close_channel", name="plain")
        p.append(b"lost")
        with pytest.raises(NetmeshError, match="could not store"):
            p.flush()
        assert p.refused_total == 1
        assert c.metrics(fresh=True)["nodes"][0]["counters"]["ring_rejected_events"] == 1
        c.kill(0)
        with pytest.raises(Closed):
            p.append(b"after the node died")


def test_quorum_restart_without_data_dir_is_refused() -> None:
    with Cluster(nodes=2, heartbeat_ms=HB) as c:
        c.open_channel("q", ReplicationConfig(factor=2, heartbeat_ms=HB, ack="quorum"))
        c.kill(1)
        with pytest.raises(ConfigError, match="data_dir"):
            c.restart(1)


def test_kill_leader_while_a_producer_streams_loses_no_quorum_ack(tmp_path: Path) -> None:
    with Cluster(nodes=3, heartbeat_ms=HB, data_dir=str(tmp_path)) as c:
        c.open_channel("m", ReplicationConfig(factor=3, heartbeat_ms=HB, ack="quorum"))
        old = leader_of(c, "m")
        acked: list[bytes] = []
        sent: list[bytes] = []
        errors: list[BaseException] = []
        p = c.producer(old, "m")

        def stream() -> None:
            i = 0
            try:
                while True:
                    batch = [b"m-%d" % (i + j) for j in range(50)]
                    p.append_batch(batch, timeout=2)
                    sent.extend(batch)
                    p.flush(timeout=2)
                    acked.extend(batch)
                    i += 50
            except NetmeshError as exc:  # the node died under us: stop streaming
                errors.append(exc)

        t = threading.Thread(target=stream)
        t.start()
        wait_until(lambda: len(acked) >= 2000, timeout=10, message="streaming")
        c.kill(old)  # mid-stream: the producer is appending right now
        t.join(10)
        assert not t.is_alive() and errors
        new = leader_of(c, "m")
        assert new != old
        final = history(c, new, "m")
        assert final[: len(acked)] == acked  # every acknowledged event, in order
        assert final == sent[: len(final)]  # nothing else but what was sent, in order
        with c.producer(new, "m") as p2:  # producers continue on the new leader
            p2.append_batch([b"after"] * 10)
            p2.flush()
        assert c.next_seq(new, "m") == len(final) + 10


def test_channel_options_reach_the_node_files() -> None:
    with Cluster(nodes=1) as c:
        c.open_channel("r", retention_max_events=100, max_payload=16)
        with c.producer(0, "r") as p:
            with pytest.raises(PayloadTooLarge):
                p.append(b"x" * 17)
            p.append_batch([b"%d" % i for i in range(1000)])
            assert p.flush() == 999
        assert c.read_range(0, "r", 0, 1000) == [b"%d" % i for i in range(900, 1000)]
        with pytest.raises(ConfigError):
            c.open_channel("bad", retention_max_events=0)


def test_producer_processes_append_concurrently_to_two_nodes() -> None:
    with Cluster(nodes=2) as c:
        c.open_channel("a")
        jobs = [c.spawn_producer(i, "a", events=50_000, batch=64, size=32) for i in range(2)]
        results = [j.wait(timeout=60) for j in jobs]
        for i, r in enumerate(results):
            assert r["events"] == 50_000 and r["last_seq"] == 49_999 and r["events_per_s"] > 0
            assert c.next_seq(i, "a") == 50_000
            assert c.read_range(i, "a", 49_999, 50_000) == [b"x" * 32]
        pids = [j.proc.pid for j in jobs]
        assert len(set(pids)) == 2 and os.getpid() not in pids


def test_producer_process_reports_refusal() -> None:
    with Cluster(nodes=1) as c:
        c.open_channel("x", max_payload=100)  # the producer process does not know it
        job = c.spawn_producer(0, "x", events=10, size=200)
        with pytest.raises(NetmeshError, match="PayloadTooLarge"):
            job.wait(timeout=30)


@pytest.mark.parametrize("policy", ["never", "on-failure"])
def test_a_crashed_node_is_reported_and_restarted_only_per_policy(policy: str) -> None:
    with Cluster(nodes=2, heartbeat_ms=HB, restart_policy=policy) as c:  # type: ignore[arg-type]
        c.open_channel("c", ReplicationConfig(factor=2, heartbeat_ms=HB))
        pid = c.info[1]["pid"]
        os.kill(pid, signal.SIGKILL)  # a crash: not asked through the cluster
        reported = wait_until(lambda: c.check_nodes(), timeout=5, message="crash report")
        assert reported == [(1, -signal.SIGKILL)]
        assert c.crashes[0][:2] == (1, -signal.SIGKILL)
        assert c.check_nodes() == []  # reported once
        if policy == "never":
            assert c.running() == [0] and c.metrics()["nodes"][1]["exit_code"] == -9
        else:
            assert c.running() == [0, 1] and c.info[1]["pid"] != pid
            assert c.role(1, "c") in (
                ReplicaRole.REPLICA,
                ReplicaRole.LEADER,
                ReplicaRole.CANDIDATE,
            )
        c.kill(0)  # asked: not a crash
        assert c.check_nodes() == []

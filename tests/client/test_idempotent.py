"""Issue 12 §3: an idempotent producer stores every event exactly once across leader
SIGKILLs (the de-duplication state lives in the log)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import netmesh
from netmesh import Cluster, ReplicationConfig
from netmesh.config import RedexFileConfig
from netmesh.errors import ConfigError
from netmesh.log.file import RedexFile

pytestmark = pytest.mark.system

PUBLISHER = """
import sys, netmesh
name, n = sys.argv[1], int(sys.argv[2])
with netmesh.connect(name) as cl, cl.producer("orders", idempotent=True) as p:
    for i in range(0, n, 100):
        p.append_batch([b"ev-%06d" % j for j in range(i, i + 100)])
        if (i // 100) % 5 == 4:  # every 500 events: let the test kill the leader
            p.flush(timeout=60)
            print(i + 100, p.resent_batches, p.retargets, flush=True)
            sys.stdin.readline()
    p.flush(timeout=60)
    print(n, p.resent_batches, p.retargets, flush=True)
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("NETMESH_RUN_DIR", str(tmp_path / "run"))
    yield tmp_path / "run"


def test_an_idempotent_producer_stores_each_event_once_across_ten_leader_kills(
    run_dir: Path, tmp_path: Path
) -> None:
    n = 6000
    with Cluster(nodes=3, heartbeat_ms=100, name="idem", data_dir=str(tmp_path / "d")) as c:
        c.open_channel("orders", ReplicationConfig(factor=3, ack="quorum"), idempotence=True)
        c.wait_for_leader("orders")
        pub = subprocess.Popen(
            [sys.executable, "-P", "-c", PUBLISHER, "idem", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert pub.stdout is not None and pub.stdin is not None
        kills = 0
        while True:
            line = pub.stdout.readline()  # it paused after a flush (or finished)
            assert line, pub.stderr.read() if pub.stderr else ""
            if int(line.split()[0]) >= n:
                break
            if kills < 10:  # ten leader kills, spread over the run
                lead = c.wait_for_leader("orders", timeout=30)
                c.kill(lead)
                c.wait_for_leader("orders", timeout=30)
                c.restart(lead)
                kills += 1
            pub.stdin.write("go\n")
            pub.stdin.flush()
        _, err = pub.communicate(timeout=300)
        assert pub.returncode == 0, err
        retargets = int(line.split()[2])
        lead = c.wait_for_leader("orders", timeout=30)
        c.wait_until(lambda: c.next_seq(lead, "orders") >= n, timeout=30, message="all")
        log = c.read_range(lead, "orders", 0, c.next_seq(lead, "orders"))
    assert kills == 10
    assert log == [b"ev-%06d" % i for i in range(n)]  # each once, in the producer's order
    assert retargets > 0  # the kills really moved it (and any resent batch was refused)


def test_idempotence_is_a_file_option_and_refuses_repeats(tmp_path: Path) -> None:
    f = RedexFile("i", RedexFileConfig(path=str(tmp_path / "i"), idempotence=True))
    assert f.append_idempotent([b"a", b"b"], producer=7, batch_seq=0) == (1, False)
    assert f.append_idempotent([b"a", b"b"], producer=7, batch_seq=0) == (1, True)
    f.append(b"plain")
    assert f.append_idempotent([b"c"], producer=7, batch_seq=1) == (3, False)
    f.close()
    g = RedexFile("i", RedexFileConfig(path=str(tmp_path / "i"), idempotence=True))
    assert g.append_idempotent([b"c"], producer=7, batch_seq=1) == (3, True)  # from the log
    assert [e.payload for e in g.read_range(0, 9)] == [b"a", b"b", b"plain", b"c"]
    g.close()
    with pytest.raises(ConfigError, match="idempotence"):
        RedexFile("p").append_idempotent([b"x"], producer=1, batch_seq=0)


def test_an_idempotent_producer_needs_an_idempotent_channel(run_dir: Path) -> None:
    with Cluster(nodes=1, name="plain") as c:
        c.open_channel("orders")
        with netmesh.connect("plain") as cl:
            with pytest.raises(ConfigError, match="idempotence=True"):
                cl.producer("orders", idempotent=True)
            assert c.next_seq(0, "orders") == 0

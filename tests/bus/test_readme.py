"""README "Event bus": the one program runs unchanged on every adapter, changing only
the adapter line (against real servers), and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

from netmesh.testing.servers import NatsCluster, NatsServer, RedisServer

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def program() -> str:
    text = README.read_text()
    section = text[text.index("## Event bus") :]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in README's Event bus section"
    return m.group(1)


def run(adapter_line: str) -> str:
    src = program()
    lines = [ln for ln in src.splitlines() if ln.startswith("adapter = ")]
    assert lines == ["adapter = MemoryAdapter()"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(src.replace(lines[0], adapter_line), "README.md", "exec"), {})
    return out.getvalue()


def check(output: str) -> None:
    first, *rest = output.splitlines()
    assert first == "[{'kind': 'order', 'user': 'ann', 'n': 1}]"
    assert rest[0] == "later: {'kind': 'order', 'user': 'cy', 'n': 3}"
    assert rest[1].startswith("BusStats(ingested=3, stored=3, dropped=0")


@pytest.mark.parametrize("backend", ["memory", "redis", "jetstream_r1", "jetstream_r3", "netmesh"])
def test_readme_program_runs_on_every_adapter(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "memory":
        line = "adapter = MemoryAdapter()"
    elif backend == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        line = f'adapter = RedisStreamsAdapter("{srv.url}")'
    elif backend == "jetstream_r1":
        nats: NatsServer = request.getfixturevalue("nats_server")
        line = f'adapter = JetStreamAdapter("{nats.url}")'
    elif backend == "netmesh":
        name: str = request.getfixturevalue("netmesh_cluster")
        line = f'adapter = NetmeshAdapter("{name}")'
    else:
        cluster: NatsCluster = request.getfixturevalue("nats_cluster")
        line = f'adapter = JetStreamAdapter("{cluster.urls}", replicas=3)'
    check(run(line))

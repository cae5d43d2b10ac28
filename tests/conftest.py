"""Shared fixtures: the leak check that ends every test, and a polling helper."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import psutil
import pytest

from netmesh.testing.wait import wait_until as poll

T = TypeVar("T")
SHM_DIR = "/dev/shm"


_PID_IN_NAME = re.compile(r"netmesh-(?:[a-z]+-)?(\d+)-")


def _shm_objects() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if "netmesh" in n}
    except FileNotFoundError:
        return set()


def _leaked_names(before: set[str]) -> set[str]:
    """New netmesh names made by this process or by a process that has ended (a
    subprocess of the test that did not clean up). Names of other live runs on the
    machine are not ours to judge."""
    leaked = set()
    for name in _shm_objects() - before:
        m = _PID_IN_NAME.search(name)
        pid = int(m.group(1)) if m else None
        if pid is None or pid == os.getpid() or not psutil.pid_exists(pid):
            leaked.add(name)
    return leaked


def _orphan_workers() -> list[psutil.Process]:
    """Node workers whose supervisor (--parent-pid) is gone."""
    orphans = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "netmesh.cluster.node_worker" in cmd and "--parent-pid" in cmd:
            parent = int(cmd[cmd.index("--parent-pid") + 1])
            try:
                if not psutil.pid_exists(parent) and p.status() != psutil.STATUS_ZOMBIE:
                    orphans.append(p)
            except psutil.NoSuchProcess:
                pass  # it ended while we looked
    return orphans


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test at the deadline."""
    try:
        return poll(predicate, timeout, interval, message)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no child process, no orphaned node worker (its own or a
    subprocess's) and no netmesh shm object or semaphore behind."""
    before = _shm_objects()
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    while True:
        children = [
            c
            for c in me.children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
        ]
        orphans = _orphan_workers()
        leaked = _leaked_names(before)
        if not children and not orphans and not leaked:
            return
        if time.monotonic() > deadline:
            for c in children + orphans:
                c.kill()
            pytest.fail(
                f"leaked children={[c.pid for c in children]} "
                f"orphans={[o.pid for o in orphans]} shm={sorted(leaked)}"
            )
        time.sleep(0.01)

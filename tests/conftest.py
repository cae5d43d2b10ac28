"""Shared fixtures: the leak check that ends every test, and a polling helper."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import psutil
import pytest

from netmesh.testing.wait import wait_until as poll

T = TypeVar("T")
SHM_DIR = "/dev/shm"


def _shm_objects() -> set[str]:
    """netmesh shm objects and semaphores of this test process (names carry its pid),
    so concurrent runs on the same machine do not trip each other's leak check."""
    mine = f"-{os.getpid()}-"
    try:
        return {n for n in os.listdir(SHM_DIR) if "netmesh" in n and mine in n}
    except FileNotFoundError:
        return set()


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.005,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail the test at the deadline."""
    try:
        return poll(predicate, timeout, interval, message)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test must leave no child process and no netmesh shm/semaphore behind."""
    before = _shm_objects()
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    while True:
        children = [c for c in me.children(recursive=True) if c.is_running()
                    and c.status() != psutil.STATUS_ZOMBIE]
        leaked = _shm_objects() - before
        if not children and not leaked:
            return
        if time.monotonic() > deadline:
            for c in children:
                c.kill()
            pytest.fail(f"leaked children={[c.pid for c in children]} shm={sorted(leaked)}")
        time.sleep(0.01)
